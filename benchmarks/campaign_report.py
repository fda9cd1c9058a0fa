"""The GPU campaign's results (``gpu_campaign.py``'s JSON) as markdown tables."""

from __future__ import annotations

from train_throughput import throughput_table

from vitdeploy.tables import format_table

ANCHORS = ("Published anchors: STAR 1.84× for DeiT-S at 1.77× fewer FLOPs (A100, fp32); NViT-B 1.86× at 2.57× "
           "fewer FLOPs (V100); torchao about 1.1× end to end for 2:4 on ViT-scale models.")
TENSORRT = ("TensorRT: not executed. It cannot be installed in this environment, so no TensorRT figure exists; "
            "the backend is checked against a strict fake only (tests/backends/test_tensorrt.py).")


def campaign_markdown(results: dict) -> str:
    stages = results["stages"]
    sections = [
        f"# vitdeploy GPU campaign on {results['device']}" + (" (smoke run)" if results["smoke"] else ""),
        f"`{results['command']}`: {results.get('elapsed_s', 0):.0f} s; {environment_line(results['environment'])}",
        format_table(["stage", "status", "seconds"],
                     [[name, stage["status"], _number(stage.get("seconds"), ".0f")] for name, stage in stages.items()]),
    ]
    renderers = {"matmul_peak": peak_section, "fmnist": fmnist_section, "tests": tests_section,
                 "speed": speed_section, "train_throughput": train_throughput_section,
                 "torchrun_smoke": torchrun_smoke_section, "latency_table": latency_table_section}
    for name, stage in stages.items():
        if stage["status"] == "error" and "error" in stage:
            sections.append(f"## {name}: error\n\n```\n{stage['error'].strip()}\n```")
        elif stage["status"] != "skipped":
            sections.append(renderers[name](stage))
    sections.append(TENSORRT)
    return "\n\n".join(sections) + "\n"


def environment_line(env: dict) -> str:
    gpu = env.get("gpu") or {}
    parts = [f"torch {env.get('torch')}", f"CUDA {gpu.get('cuda_runtime')}" if gpu else None,
             f"driver {gpu.get('driver')}" if gpu else None, f"CPU {env.get('cpu')} ({env.get('cpu_count')} cores)"]
    return ", ".join(p for p in parts if p)


def peak_section(stage: dict) -> str:
    rows = [[precision, _number(peak["median_ms"], ".3f"), _number(peak["tflops"], ".1f")]
            for precision, peak in stage["peaks"].items()]
    return (f"## Matmul peak ({stage['size']}³, the MFU denominator)\n\n"
            + format_table(["precision", "median ms", "TFLOP/s"], rows))


def fmnist_section(stage: dict) -> str:
    rows = [[r["device"], r["precision"], _number(r["top1"], ".4f"), _number(r["agreement"], ".4f"),
             _number(r["max_abs_logit_diff"], ".3g")] for r in stage["rows"]]
    return (f"## fmnist_vit on {stage['images']} Fashion-MNIST test images (against {stage['reference']})\n\n"
            + format_table(["device", "precision", "top-1", "agreement", "max |Δ logit|"], rows))


def tests_section(stage: dict) -> str:
    rows = [[" ".join(r["args"]), "timed out" if r["timed_out"] else r["returncode"], r.get("passed"),
             r.get("failed"), r.get("errors"), r.get("skipped")] for r in stage["runs"]]
    return (f"## Tests (pytest output in {stage['log']})\n\n"
            + format_table(["pytest", "exit", "passed", "failed", "errors", "skipped"], rows))


def speed_section(stage: dict) -> str:
    parts = ["## Speed (torch backend, fused SDPA; speedup = throughput ÷ the baseline's, timed interleaved)"]
    for group in stage["groups"]:
        if "error" in group:
            parts.append(f"### {group['model']} {group['precision']}: error\n\n```\n{group['error'].strip()}\n```")
            continue
        rows = [[r["batch"], r["variant"], r["mode"], "yes" if r["sparse_kernels"] else "no",
                 _number(r["flops_reduction"], ".2f") + "×", _number(r["median_ms"], ".3f"),
                 _number(r["p99_ms"], ".3f"), _number(r["throughput"], ".0f"), _number(r["speedup"], ".2f") + "×",
                 _number(r["mfu"], ".1%")]
                for r in sorted(group["rows"], key=lambda r: (r["batch"], r["mode"]))]
        parts.append(f"### {group['model']} {group['precision']}\n\n" + format_table(
            ["batch", "variant", "mode", "2:4 kernels", "FLOPs reduction", "p50 ms", "p99 ms", "img/s", "speedup",
             "MFU"], rows))
        parts += [f"- {name} failed: {error}" for name, error in group["failed"].items()]
    if stage.get("skipped"):
        parts.append(f"Not measured ({stage['skip_reason']}): {', '.join(stage['skipped'])}")
    parts.append("MFU counts the dense FLOPs, also for the 2:4 variants. " + ANCHORS)
    return "\n\n".join(parts)


def train_throughput_section(stage: dict) -> str:
    plan, goals, meets = stage["plan"], stage["goals"], stage["meets_goals"]
    return (f"## Training throughput ({stage['model']}, distilled fine-tune step with DeiT's augmentation, "
            f"{stage['precision']}, {plan['steps']} timed steps after {plan['warmup']} warm-up steps)\n\n"
            + throughput_table([stage["engine"]])
            + f"\n\nAnchor: a plain loop on a batch already on the device ({stage['anchor']['implementation']} "
            f"model). At least {goals['anchor_ratio']:.2f}× the anchor: {_yes(meets['anchor_ratio'])}; "
            f"waiting for data under {goals['data_wait_fraction']:.0%} of the time: {_yes(meets['data_wait'])}.")


def torchrun_smoke_section(stage: dict) -> str:
    outcome = "timed out" if stage["timed_out"] else f"exit status {stage['returncode']}"
    tail = "\n".join(stage.get("output_tail", []))
    return f"## torchrun smoke: {outcome}\n\n`{stage['command']}`" + (f"\n\n```\n{tail}\n```" if tail else "")


def latency_table_section(stage: dict) -> str:
    rows = [[m["name"], _number(m["predicted_ms"], ".3f"), _number(m["measured_ms"], ".3f"),
             _number(m["error_pct"], "+.1f")] for m in stage["models"]]
    return (f"## Latency table {stage['file']} (grid {stage['grid']}, batch {stage['batch']}, built in "
            f"{stage['build_seconds']:.0f} s): MAPE {stage['mape_pct']:.1f}% over {len(rows)} held-out pruned specs\n\n"
            + format_table(["model", "predicted ms", "measured ms", "error %"], rows))


def _yes(value: bool) -> str:
    return "yes" if value else "no"


def _number(value: float | None, spec: str) -> str:
    return "" if value is None else format(value, spec)
