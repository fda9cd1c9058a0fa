"""optimize.md and the printed summary: every candidate through the race, the chosen one against
the single-method runs it beat, and the final model against the unpruned one, measured."""

from __future__ import annotations

from pathlib import Path

from vitdeploy.optimize.candidates import SINGLE_METHODS


def summary_table(result: dict) -> str:
    from vitdeploy.tables import format_table

    final, latency = result["final"], result["final"]["latency"]
    top1, precision = final["top1"], final.get("precision", "fp32")
    unpruned = "unpruned" if precision == "fp32" else f"unpruned ({precision} latency, fp32 top-1)"
    models = [[unpruned, f"{latency['unpruned_measured_ms']:.2f}", f"{latency['unpruned_measured_ms']:.2f}", "1.000",
               f"{top1['unpruned']:.4f}"],
              [f"optimized ({result['chosen']})", f"{latency['predicted_ms']:.2f}", f"{latency['measured_ms']:.2f}",
               f"{latency['measured_ratio']:.3f}", f"{top1['optimized']:.4f}"]]
    lines = [_candidates_table(result), "", *_beaten(result), ""]
    if len(final["attempts"]) > 1:
        lines += [format_table(["final attempt", "measured × unpruned", "vs budget", "within budget"],
                               [_attempt_row(a) for a in final["attempts"]]), ""]
    table = result["table"]
    lines += [
        format_table(["model", "predicted ms", "measured ms", "× unpruned", "test top-1"], models), "",
        f"batch {table['batch']}, {table['backend']}, {table['threads']} thread(s); measured interleaved in one run, "
        f"predictions rescaled to this run's unpruned latency: off by {latency['prediction_error_pct']:.1f} %; "
        f"this run measured {result['savings_scale']:.2f}× the savings the table predicts",
        _budget_line(result, precision),
        f"fine-tuned {final['fine_tune_steps']} steps from its weights before the race, distilled from the unpruned "
        "model, token plan active; " + _check_text(final),
        *_ranking_lines(result.get("ranking_check")),
        "seconds: " + ", ".join(f"{stage} {s:g}" for stage, s in result["seconds"].items()),
    ]
    return "\n".join(lines)


def _budget_line(result: dict, precision: str) -> str:
    final, latency = result["final"], result["final"]["latency"]
    drift = result.get("drifts", {}).get(precision, result["drift"])
    unpruned = "the unpruned latency" if precision == "fp32" else f"the unpruned model's {precision} latency"
    return (f"budget {latency['target_ms']:.2f} ms = {latency['target_ratio']:.3f}× {unpruned} measured at the start "
            f"({drift['measured_ms']:.2f} ms; the table predicted {drift['predicted_ms']:.2f} ms): reached "
            f"{latency['measured_ratio']:.3f}× ({latency['target_error_pct']:+.1f} %), "
            f"{latency['speedup']:.2f}× faster" + ("" if final["within_budget"] else " — OVER BUDGET"))


def _check_text(final: dict) -> str:
    """The export's parity, or for an INT8 model the accuracy check that stands in for it."""
    int8 = final.get("int8")
    if int8 is None:
        return f"export parity {final['export']['parity_max_abs_diff']:.1e}"
    accuracy = int8["accuracy"]
    return (f"INT8 Q/DQ ({int8['config']['target']}): top-1 {100 * accuracy['float_top1']:.2f} % float → "
            f"{100 * accuracy['int8_top1']:.2f} % INT8 on {accuracy['images']} test images "
            f"({-accuracy['drop_points']:+.2f} points, at most -{int8['config']['max_drop']:g} allowed)")


def _attempt_row(attempt: dict) -> list[str]:
    if "refused" in attempt:
        return [attempt["candidate"], "-", "-", "refused: " + attempt["refused"]]
    return [attempt["candidate"], f"{attempt['measured_ratio']:.3f}", f"{attempt['target_error_pct']:+.1f} %",
            "yes" if attempt["within_budget"] else "no"]


def _candidates_table(result: dict) -> str:
    from vitdeploy.tables import format_table

    rounds = result["rounds"]
    checked = result.get("ranking_check") is not None
    header = ["candidate", "kind", "structure", "keep per block", "predicted ×", "measured ×", "× budget",
              *[f"proxy @{r['steps']}" for r in rounds], *(["test top-1"] if checked else [])]
    rows = []
    for c in result["candidates"]:
        last = c["measurements"][-1]
        proxies = [f"{r['proxy'][c['name']]:.4f}" if c["name"] in r["proxy"] else "-" for r in rounds]
        rows.append([("* " if c["name"] == result["chosen"] else "  ") + c["name"], c["kind"],
                     f"{c['structure_ratio']:.2f}", _keep_text(c["tokens"]), f"{last['predicted_ratio']:.3f}",
                     f"{last['measured_ratio']:.3f}", f"{c['budget_share']:.3f}", *proxies,
                     *([f"{c['test_top1']:.4f}"] if checked else [])])
    dropped = [f"  dropped {d['name']}: {d['reason']}" for d in result["dropped"]]
    return "\n".join([format_table(header, rows), *dropped])


def _beaten(result: dict) -> list[str]:
    """One line: the chosen candidate's last proxy against each single-method run's, at equal steps."""
    chosen = next(c for c in result["candidates"] if c["name"] == result["chosen"])
    steps = result["rounds"][len(chosen["proxies"]) - 1]["steps"]
    others = [c for c in result["candidates"] if c["kind"] in SINGLE_METHODS and c["name"] != chosen["name"]
              and len(c["proxies"]) == len(chosen["proxies"])]
    if not others:
        return [f"chosen: {chosen['name']} ({chosen['kind']})"]
    against = ", ".join(f"{c['name']} {c['proxies'][-1]:.4f}" for c in others)
    return [f"chosen: {chosen['name']} ({chosen['kind']}), proxy top-1 {chosen['proxies'][-1]:.4f} after {steps} "
            f"fine-tuning steps, against the single-method runs at the same steps: {against}"]


def _ranking_lines(check: dict | None) -> list[str]:
    if check is None:
        return []
    parts = []
    for c in check["correlations"]:
        when = "before fine-tuning" if c["steps"] == 0 else f"after {c['steps']} steps"
        rho = "n/a" if c["spearman"] is None else f"{c['spearman']:+.2f}"
        parts.append(f"{when} {rho} ({c['candidates']} candidates)")
    return ["proxy's rank correlation with test top-1 after the full fine-tune (Spearman): " + ", ".join(parts)
            + f"; best by test: {check['best_by_test']}"]


def _keep_text(tokens: dict | None) -> str:
    if not tokens:
        return "-"
    return " ".join("-" if keep is None else str(keep) for keep in tokens["keep"])


def write_reports(result: dict, work: Path) -> None:
    from vitdeploy.io import write_bytes_atomic, write_json_atomic

    write_json_atomic(work / "optimize.json", result)
    write_bytes_atomic(work / "optimize.md", (summary_table(result) + "\n").encode())
