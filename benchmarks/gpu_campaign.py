"""GPU campaign: every GPU figure vitdeploy publishes, from one command, into one folder.

    python3 benchmarks/gpu_campaign.py --out DIR                              # the campaign, on cuda:0
    .venv/bin/python benchmarks/gpu_campaign.py --device cpu --smoke --out DIR   # CPU smoke (make test runs it)

Stages, in this order; after each one DIR/<device>-campaign.json is rewritten, so a run stopped
by its time limit still returns what it finished. A stage that fails records its error and the
next one runs; the exit status is 1 if any stage failed.

1. ``matmul_peak``: an 8192³ matmul in bf16 and fp16, timed with CUDA events: the MFU denominators.
2. ``fmnist``: the shipped fmnist_vit on the 10k Fashion-MNIST test images, fp32 on the CPU
   against bf16 and fp16 on the GPU: top-1, prediction agreement, largest logit difference.
3. ``tests``: the project's GPU-marked tests and the live timm parity test (pytest, in a subprocess).
4. ``speed``: DeiT-S and DeiT-B (seeded random weights) at batch 1, 64 and 256 in bf16 and fp16,
   torch backend (fused SDPA) replaying CUDA graphs; per model and precision every variant of
   ``campaign_variants`` is timed interleaved with the baseline in one process (``bench_sources``):
   p50/p99 latency, throughput, speedup next to the FLOPs reduction, and MFU. A variant that
   fails under CUDA graphs is timed again eagerly, next to an eager baseline. The stage starts
   no new (model, precision) group when less than ``reserve_s`` of the time budget is left.
5. ``train_throughput``: vitdeploy's training engine on a distilled DeiT-S fine-tune step in bf16 at
   batch 256 (30 timed steps after 10 warm-up steps), with DeiT's augmentation on generated
   500×375 JPEGs decoded by the loader workers, next to a plain timm loop on the same model and
   batch (``train_throughput.py``): images/s, the share of the time spent waiting for data and
   the ratio to the plain loop, against the goals (at least 0.95× the plain loop, under 5% waiting).
6. ``torchrun_smoke``: ``vitdeploy train`` (fmnist_vit, 4 steps on generated JPEGs) launched by
   ``torchrun --nproc-per-node 1`` on the campaign's device: its exit status. With one process no
   process group is started, so this checks torchrun's launch and environment, not collectives.
7. ``latency_table``: a torch bf16 latency table on the DeiT-S grid (``cpu-small``) at batch 64,
   with CUDA graphs, written as DIR/<device>-torch-bf16.json, and its MAPE on 10 held-out pruned
   DeiT-S specs measured on the same GPU (``lut.evaluate_table``).

Files in DIR, named after the device as read from the hardware (``device_slug``, e.g. nvidia-h200):
<device>-campaign.json (everything), <device>-campaign.md (the tables), <device>-torch-bf16.json
(the latency table) and <device>-campaign-tests.log (pytest's output).

On the GPU machine (the device tool). The machine has torch, timm, onnx, onnxruntime and the
rest of vitdeploy's needs except onnx-graphsurgeon, and no network, so a wheel and the
Fashion-MNIST test files travel in ignored folders. Prepare them once, here, in the repo root:

    grep -qx /.whl/ .git/info/exclude || echo /.whl/ >> .git/info/exclude
    grep -qx /.campaign-data/ .git/info/exclude || echo /.campaign-data/ >> .git/info/exclude
    .venv/bin/python -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64 -d .whl onnx_graphsurgeon==0.6.1
    mkdir -p .campaign-data/fashion-mnist && cp /usr/share/datasets/fashion-mnist/t10k-*-ubyte.gz .campaign-data/fashion-mnist/

Then call the device tool's run with carry [".whl", ".campaign-data"], timeout_s 480 and command:

    set -o pipefail; python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD VITDEPLOY_FASHION_MNIST=$PWD/.campaign-data/fashion-mnist PYTHONUNBUFFERED=1 || exit; python3 benchmarks/gpu_campaign.py --out $OUT 2>&1 | tee $OUT/campaign.log

vitdeploy itself is not installed there: PYTHONPATH points at the checkout. The run's budget
(--budget-s, default 400 s) keeps it inside the 480 s limit with the machine's start-up to spare.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import shlex
import subprocess
import sys
import tempfile
import time
import traceback
import xml.etree.ElementTree as ElementTree
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch

from campaign_report import campaign_markdown
from campaign_variants import BASELINE, campaign_variants
from train_throughput import (GOAL_DATA_WAIT, GOAL_RATIO, ThroughputPlan, goals_met, measure_anchor, measure_engine,
                              seeded_model, with_anchor, write_training_folder)

from vitdeploy import runtime
from vitdeploy.backends import BuildConfig, ModelSource, get_backend
from vitdeploy.backends.torch import DTYPES
from vitdeploy.hardware import cpu_count, device_name, device_slug, environment
from vitdeploy.bench.harness import TimingPlan, random_batch, time_engine
from vitdeploy.bench.run import bench_sources, sparse_weights_for
from vitdeploy.data import batches, dataset_for
from vitdeploy.errors import VitDeployError
from vitdeploy.io import write_bytes_atomic, write_json_atomic
from vitdeploy.lut import build_table, default_grid, evaluate_table, random_pruned_specs, save_table, table_path
from vitdeploy.models.spec import ViTSpec, uniform_blocks
from vitdeploy.models.vit import ViT
from vitdeploy.models.zoo import get_spec, load_model
from vitdeploy.prune.methods.nvit.structural import dims_summary

REPO = Path(__file__).resolve().parents[1]
HELD_OUT_SEED = 1
FMNIST_BATCH = 1000
LUT_PRECISION = "bf16"
TRAIN_PRECISION = "bf16"
TORCHRUN_TRAIN_ARGS = ("train", "--model", "fmnist_vit", "--epochs", "1", "--batch-size", "64", "--quiet")
TORCHRUN_DATA = ThroughputPlan(batch=64, steps=4, warmup=0, images=32)
"""The torchrun smoke's training data: generated JPEGs, so that no data set has to travel."""
GPU_TESTS = (("-m", "gpu", "tests"), ("tests/models/test_timm_parity.py", "-k", "live"))
SMOKE_TESTS = (("-m", "gpu", "tests/backends/test_backends.py"), ("tests/models/test_timm_parity.py", "-k", "live"))


def smoke_spec(name: str, depth: int, embed_dim: int, heads: int) -> ViTSpec:
    """A small 32×32 ViT for the CPU smoke run (DeiT-sized models take minutes to build on 2 cores)."""
    return ViTSpec(img_size=32, patch_size=8, in_chans=3, embed_dim=embed_dim, num_classes=5,
                   blocks=uniform_blocks(depth, embed_dim, heads, mlp_ratio=2.0), name=name).validate()


@dataclass(frozen=True)
class Settings:
    """What the campaign measures and how long it may take: ``GPU`` for the campaign, ``SMOKE`` for --smoke."""

    models: tuple[ViTSpec, ...]
    batches: tuple[int, ...]
    precisions: tuple[str, ...]
    timing: TimingPlan
    matmul_size: int
    lut_grid: str
    lut_batch: int
    lut_timing: TimingPlan | None
    """None: the table builder's own plan."""
    lut_base: ViTSpec
    """The model whose pruned variants are held out to measure the table's MAPE."""
    held_out: int
    fmnist_limit: int | None
    test_runs: tuple[tuple[str, ...], ...]
    tests_timeout_s: float
    train_model: ViTSpec
    train_plan: ThroughputPlan
    torchrun_timeout_s: float
    budget_s: float
    reserve_s: float
    """Time kept for the stages after the speed stage: it starts no new group with less left."""
    device: str = "cuda"


GPU = Settings(
    models=(get_spec("deit_small_patch16_224"), get_spec("deit_base_patch16_224")),
    batches=(1, 64, 256), precisions=("bf16", "fp16"), timing=TimingPlan(warmup=10, iters=100, rounds=10),
    matmul_size=8192, lut_grid="cpu-small", lut_batch=64, lut_timing=None,
    lut_base=get_spec("deit_small_patch16_224"), held_out=10, fmnist_limit=None, test_runs=GPU_TESTS,
    tests_timeout_s=120, train_model=get_spec("deit_small_patch16_224"),
    train_plan=ThroughputPlan(batch=256, steps=30, warmup=10), torchrun_timeout_s=120, budget_s=400, reserve_s=180,
)
SMOKE = Settings(
    models=(smoke_spec("smoke-vit", depth=11, embed_dim=128, heads=2),),
    batches=(1, 2), precisions=("bf16",), timing=TimingPlan(warmup=1, iters=2, rounds=2),
    matmul_size=256, lut_grid="quick", lut_batch=2, lut_timing=TimingPlan(warmup=1, iters=2, rounds=1),
    lut_base=smoke_spec("smoke-lut", depth=2, embed_dim=32, heads=2), held_out=2, fmnist_limit=64,
    test_runs=SMOKE_TESTS, tests_timeout_s=120, train_model=smoke_spec("smoke-train", depth=2, embed_dim=32, heads=2),
    train_plan=ThroughputPlan(batch=8, steps=2, warmup=1, workers=1, images=8), torchrun_timeout_s=120,
    budget_s=600, reserve_s=0,
)


class Deadline:
    def __init__(self, seconds: float):
        self.end = time.monotonic() + seconds

    def left(self) -> float:
        return self.end - time.monotonic()


class MatmulEngine:
    """One n×n by n×n matmul as an engine, so that the shared harness times it (CUDA events on GPU)."""

    backend = "torch-matmul"

    def __init__(self, size: int, precision: str, device: str):
        generator = torch.Generator(device=device).manual_seed(0)
        self.a, self.b = (torch.randn(size, size, generator=generator, device=device).to(DTYPES[precision])
                          for _ in range(2))
        self.out = torch.empty_like(self.a)
        self.size, self.precision, self.device = size, precision, device
        self.device_name = device_name(device)

    def stage(self, batch: np.ndarray) -> None:
        return None

    def run(self, staged: None) -> None:
        torch.matmul(self.a, self.b, out=self.out)

    def synchronize(self) -> None:
        if self.device == "cuda":
            torch.cuda.synchronize()

    def metadata(self) -> dict:
        return {"backend": self.backend, "size": self.size, "precision": self.precision, "device": self.device}


class Campaign:
    """Runs the stages in order and rewrites the JSON and markdown after each one."""

    def __init__(self, settings: Settings, out: Path, smoke: bool):
        self.settings, self.out = settings, out
        self.deadline = Deadline(settings.budget_s)
        name = device_name(settings.device)
        self.slug = device_slug(name)
        self.results = {
            "command": shlex.join([Path(sys.executable).name, *sys.argv]), "device": name, "smoke": smoke,
            "environment": {**environment(), **kernel_flags(settings.device)},
            "settings": settings_summary(settings), "stages": {},
        }

    def run(self) -> bool:
        started = time.monotonic()
        stages: dict[str, Callable[[], dict]] = {
            "matmul_peak": self.matmul_peak, "fmnist": self.fmnist, "tests": self.tests,
            "speed": self.speed, "train_throughput": self.train_throughput, "torchrun_smoke": self.torchrun_smoke,
            "latency_table": self.latency_table,
        }
        for name, stage in stages.items():
            self.results["stages"][name] = self._run_stage(name, stage)
            self.results["elapsed_s"] = time.monotonic() - started
            self.save()
        return all(stage["status"] == "ok" for stage in self.results["stages"].values())

    def save(self) -> None:
        stem = self.out / f"{self.slug}-campaign"
        write_json_atomic(stem.with_suffix(".json"), self.results)
        write_bytes_atomic(stem.with_suffix(".md"), campaign_markdown(self.results).encode())

    def _run_stage(self, name: str, stage: Callable[[], dict]) -> dict:
        """The stage's results with its status (ok unless the stage reports otherwise, or raises) and seconds."""
        if self.deadline.left() <= 0:
            return {"status": "skipped", "reason": "the time budget (--budget-s) was spent"}
        print(f"[campaign] {name} ({self.deadline.left():.0f} s of the budget left)", flush=True)
        started = time.monotonic()
        try:
            result = {"status": "ok", **stage()}
        except Exception:  # one stage's failure must not cost the other stages' results
            traceback.print_exc()
            result = {"status": "error", "error": traceback.format_exc(limit=4)}
        return {**result, "seconds": time.monotonic() - started}

    # --- stages ----------------------------------------------------------------------------------

    def matmul_peak(self) -> dict:
        plan = replace(self.settings.timing, rounds=1)
        peaks = {}
        for precision in self.settings.precisions:
            engine = MatmulEngine(self.settings.matmul_size, precision, self.settings.device)
            median_ms = time_engine(engine, f"matmul-{precision}", np.zeros(1), plan).median_ms
            peaks[precision] = {"median_ms": median_ms,
                                "tflops": 2 * self.settings.matmul_size ** 3 / (median_ms / 1e3) / 1e12}
            del engine
            free_device_memory()
        return {"size": self.settings.matmul_size, "peaks": peaks}

    def fmnist(self) -> dict:
        model = load_model("fmnist_vit")
        dataset = dataset_for(model, "fashion-mnist", "test", limit=self.settings.fmnist_limit)
        labels = torch.cat([y for _, y in batches(dataset, FMNIST_BATCH)]).numpy()
        reference = fmnist_logits(model, dataset, BuildConfig(device="cpu", threads=cpu_count()))
        rows = [prediction_row("cpu", "fp32", reference, reference, labels)]
        for precision in self.settings.precisions:
            config = BuildConfig(device=self.settings.device, precision=precision)
            rows.append(prediction_row(self.settings.device, precision, fmnist_logits(model, dataset, config),
                                       reference, labels))
        return {"images": len(labels), "reference": "cpu fp32", "rows": rows}

    def tests(self) -> dict:
        log = self.out / f"{self.slug}-campaign-tests.log"
        runs = [run_pytest(args, log, self.settings.tests_timeout_s) for args in self.settings.test_runs]
        return {"log": log.name, "runs": runs}

    def speed(self) -> dict:
        groups, shapes, skipped = [], {}, []
        for spec in self.settings.models:
            variants = None
            for precision in self.settings.precisions:
                if self.deadline.left() < self.settings.reserve_s:
                    skipped.append(f"{spec.name} {precision}")
                    continue
                try:
                    variants = variants or campaign_variants(seeded_model(spec, 0).eval())
                    shapes[spec.name] = {name: variant_shape(variant.spec) for name, variant in variants.items()}
                    groups.append(self._speed_group(spec.name, variants, precision))
                except Exception:  # the other groups still run; the stage then reports an error
                    traceback.print_exc()
                    groups.append({"model": spec.name, "precision": precision, "error": traceback.format_exc(limit=4)})
                self.results["stages"]["speed"] = {"status": "running", "groups": groups, "shapes": shapes}
                self.save()
        return {"status": "error" if any("error" in group for group in groups) else "ok",
                "groups": groups, "shapes": shapes, "skipped": skipped,
                "skip_reason": "less than reserve_s of the time budget left" if skipped else None}

    def _speed_group(self, model: str, variants: dict[str, ViT], precision: str) -> dict:
        peak = self.results["stages"]["matmul_peak"].get("peaks", {}).get(precision, {}).get("tflops")
        config = BuildConfig(device=self.settings.device, precision=precision, batch_sizes=self.settings.batches,
                             cuda_graphs=self.settings.device == "cuda")
        with tempfile.TemporaryDirectory(prefix="campaign-") as work:
            sources = {name: ModelSource(name, work, model=variant) for name, variant in variants.items()}
            rows, failed = bench_with_fallback(sources, config, self.settings.timing)
        free_device_memory()
        return {"model": model, "precision": precision, "failed": failed,
                "rows": with_flops_reduction([speed_row(row, model, peak) for row in rows])}

    def train_throughput(self) -> dict:
        spec, plan = self.settings.train_model, self.settings.train_plan
        rt = runtime.resolve(self.settings.device, TRAIN_PRECISION)
        with tempfile.TemporaryDirectory(prefix="campaign-train-") as work:
            folder = write_training_folder(Path(work), plan, spec.num_classes)
            with runtime.use(rt):
                engine = measure_engine(spec, folder, plan)
        anchor = measure_anchor(spec, plan, rt)
        free_device_memory()
        row = with_anchor(engine, anchor)
        return {"model": spec.name, "precision": rt.amp, "plan": asdict(plan), "engine": row, "anchor": anchor,
                "goals": {"anchor_ratio": GOAL_RATIO, "data_wait_fraction": GOAL_DATA_WAIT},
                "meets_goals": goals_met(row)}

    def torchrun_smoke(self) -> dict:
        launcher = ("-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "1", "-m", "vitdeploy")
        with tempfile.TemporaryDirectory(prefix="campaign-torchrun-") as work:
            data = write_training_folder(Path(work) / "data", TORCHRUN_DATA, num_classes=10)
            command = [sys.executable, *launcher, *TORCHRUN_TRAIN_ARGS, "--data", str(data), "--device",
                       self.settings.device, "--out", str(Path(work) / "model")]
            try:
                completed = subprocess.run(command, cwd=REPO, capture_output=True, text=True,
                                           timeout=self.settings.torchrun_timeout_s)
            except subprocess.TimeoutExpired:
                return {"status": "error", "command": shlex.join(command), "returncode": None, "timed_out": True}
        return {"status": "ok" if completed.returncode == 0 else "error", "command": shlex.join(command),
                "returncode": completed.returncode, "timed_out": False,
                "output_tail": (completed.stdout + completed.stderr).strip().splitlines()[-10:]}

    def latency_table(self) -> dict:
        config = BuildConfig(device=self.settings.device, precision=LUT_PRECISION,
                             cuda_graphs=self.settings.device == "cuda")
        started = time.monotonic()
        table = build_table("torch", config, default_grid(self.settings.lut_grid), self.settings.lut_timing,
                            device_batch=self.settings.lut_batch, progress=False)
        path = table_path(table.metadata, self.out)
        save_table(table, path)
        build_seconds = time.monotonic() - started
        specs = random_pruned_specs(self.settings.lut_base, self.settings.held_out, seed=HELD_OUT_SEED)
        accuracy = evaluate_table(table, specs, "torch", config, self.settings.lut_timing)
        return {"file": path.name, "grid": self.settings.lut_grid, "batch": self.settings.lut_batch,
                "build_seconds": build_seconds, "held_out_seed": HELD_OUT_SEED, **accuracy}


# --- speed -----------------------------------------------------------------------------------------

def variant_shape(spec: ViTSpec) -> dict:
    """What a variant's speed depends on: its dims, the patch tokens entering each block, its sparsity."""
    return {**dims_summary(spec), "patch_tokens_entering": spec.patch_tokens_entering(), "sparsity": spec.sparsity}


def bench_with_fallback(sources: dict[str, ModelSource], config: BuildConfig,
                        plan: TimingPlan) -> tuple[list[dict], dict[str, str]]:
    """Bench rows of the sources that run (the first, the baseline, must), and the errors of the others.

    Variants that fail under CUDA graphs are benched again without them, next to an eager baseline.
    """
    rows, failed = bench_runnable(sources, config, plan)
    if failed and config.cuda_graphs:
        baseline = next(iter(sources))
        retry = {baseline: sources[baseline], **{name: sources[name] for name in failed}}
        eager_rows, failed = bench_runnable(retry, replace(config, cuda_graphs=False), plan)
        rows += eager_rows
    return rows, failed


def bench_runnable(sources: dict[str, ModelSource], config: BuildConfig,
                   plan: TimingPlan) -> tuple[list[dict], dict[str, str]]:
    """``bench_sources`` over every source; if that fails, over those that pass ``probe`` alone."""
    try:
        return bench_sources(sources, "torch", config, plan).rows, {}
    except Exception:  # find out which variant broke the run; the baseline's own failure is raised
        failed = {name: error for name, source in sources.items() if (error := probe(source, config))}
        baseline = next(iter(sources))
        if not failed or baseline in failed:
            raise
    runnable = {name: source for name, source in sources.items() if name not in failed}
    return bench_sources(runnable, "torch", config, plan).rows, failed


def probe(source: ModelSource, config: BuildConfig) -> str | None:
    """The error that building and running ``source`` alone at every batch size raises, or None."""
    try:
        engine = get_backend("torch").build(source, bench_config(source, config))
        for batch in config.batch_sizes:
            engine.infer(random_batch(batch, source.input_shape()))
        return None
    except Exception as exc:
        return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    finally:
        free_device_memory()


def bench_config(source: ModelSource, config: BuildConfig) -> BuildConfig:
    """The config ``bench_sources`` builds ``source`` with (2:4 kernels where the spec records 2:4)."""
    return replace(config, sparse_weights=sparse_weights_for(source, "auto", "torch", config))


def speed_row(row: dict, model: str, peak_tflops: float | None) -> dict:
    """A bench row reduced to what the campaign reports, with the FLOPs reduction and MFU."""
    meta = row["metadata"]
    achieved_tflops = 2 * row["macs"] * row["throughput"] / 1e12
    return {
        "model": model, "variant": row["name"], "precision": row["precision"], "batch": row["batch"],
        "mode": "cuda graphs" if meta["cuda_graphs"] else "eager", "sparse_kernels": meta["sparse_weights"],
        "median_ms": row["median_ms"], "p99_ms": row["p99_ms"], "throughput": row["throughput"],
        "speedup": row["ratio_to_first"], "macs": row["macs"], "achieved_tflops": achieved_tflops,
        "mfu": achieved_tflops / peak_tflops if peak_tflops else None,
    }


def with_flops_reduction(rows: list[dict]) -> list[dict]:
    """Each row with its baseline's MACs ÷ its own (the FLOPs reduction to set its speedup against)."""
    base = {(r["batch"], r["mode"]): r["macs"] for r in rows if r["variant"] == BASELINE}
    return [{**r, "flops_reduction": base[(r["batch"], r["mode"])] / r["macs"]} for r in rows]


# --- fmnist ----------------------------------------------------------------------------------------

def fmnist_logits(model: ViT, dataset, config: BuildConfig) -> np.ndarray:
    """Logits of ``model`` over ``dataset`` built by the torch backend with ``config``."""
    with tempfile.TemporaryDirectory(prefix="campaign-") as work:
        engine = get_backend("torch").build(ModelSource("fmnist_vit", work, model=model), config)
        logits = np.concatenate([engine.infer(x.numpy()) for x, _ in batches(dataset, FMNIST_BATCH)])
    if not np.isfinite(logits).all():
        raise VitDeployError(f"fmnist_vit gave non-finite logits on {config.device} {config.precision}")
    return logits


def prediction_row(device: str, precision: str, logits: np.ndarray, reference: np.ndarray,
                   labels: np.ndarray) -> dict:
    predictions = logits.argmax(-1)
    return {"device": device, "precision": precision, "top1": float((predictions == labels).mean()),
            "agreement": float((predictions == reference.argmax(-1)).mean()),
            "max_abs_logit_diff": float(np.abs(logits - reference).max())}


# --- tests -----------------------------------------------------------------------------------------

def run_pytest(args: tuple[str, ...], log: Path, timeout_s: float) -> dict:
    """Run pytest on ``args`` in a subprocess, append its output to ``log``, count its outcomes."""
    with tempfile.TemporaryDirectory(prefix="campaign-pytest-") as work:
        junit = Path(work) / "junit.xml"
        command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--continue-on-collection-errors",
                   f"--junitxml={junit}", *args]
        try:
            completed = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=timeout_s)
        except subprocess.TimeoutExpired as exc:
            append_log(log, command, f"{exc.stdout or ''}\n{exc.stderr or ''}\nTIMED OUT after {timeout_s} s\n")
            return {"args": list(args), "returncode": None, "timed_out": True}
        append_log(log, command, completed.stdout + completed.stderr)
        return {"args": list(args), "returncode": completed.returncode, "timed_out": False, **junit_counts(junit)}


def append_log(log: Path, command: list[str], text: str) -> None:
    with log.open("a") as f:
        f.write(f"$ {shlex.join(command)}\n{text}\n")


def junit_counts(path: Path) -> dict:
    """passed/failed/errors/skipped of a pytest JUnit XML report (all zero when none was written)."""
    if not path.is_file():
        return {"passed": 0, "failed": 0, "errors": 0, "skipped": 0}
    suite = ElementTree.parse(path).getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    tests, failed, errors, skipped = (int(suite.get(key, 0)) for key in ("tests", "failures", "errors", "skipped"))
    return {"passed": tests - failed - errors - skipped, "failed": failed, "errors": errors, "skipped": skipped}


# --- helpers ---------------------------------------------------------------------------------------

def free_device_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def kernel_flags(device: str) -> dict:
    """The fused attention kernels torch may pick for ``scaled_dot_product_attention`` on CUDA, and cuSPARSELt."""
    if device != "cuda":
        return {}
    cusparselt = torch.backends.cusparselt
    return {"sdpa": {"flash": torch.backends.cuda.flash_sdp_enabled(),
                     "mem_efficient": torch.backends.cuda.mem_efficient_sdp_enabled(),
                     "cudnn": torch.backends.cuda.cudnn_sdp_enabled()},
            "cusparselt": cusparselt.version() if cusparselt.is_available() else None}


def settings_summary(settings: Settings) -> dict:
    summary = dataclasses.asdict(settings)
    summary["models"] = [spec.name for spec in settings.models]
    summary["lut_base"] = settings.lut_base.name
    summary["train_model"] = settings.train_model.name
    return summary


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path, help="folder for every result file")
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda", help="default: %(default)s")
    parser.add_argument("--smoke", action="store_true", help="tiny models and batches, two timed iterations")
    parser.add_argument("--budget-s", type=float, help="time budget; stages that would start after it are "
                                                        "skipped (default: 400 s, 600 s with --smoke)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        if args.device == "cpu" and not args.smoke:
            raise VitDeployError("the full campaign needs --device cuda; on a CPU run the smoke test (--smoke)")
        if args.device == "cuda" and not torch.cuda.is_available():
            raise VitDeployError("--device cuda: torch sees no CUDA GPU here; use --device cpu --smoke")
        settings = replace(SMOKE if args.smoke else GPU, device=args.device)
        if args.budget_s is not None:
            settings = replace(settings, budget_s=args.budget_s)
    except VitDeployError as exc:
        print(f"vitdeploy: error: {exc}", file=sys.stderr)
        return exc.exit_code
    args.out.mkdir(parents=True, exist_ok=True)
    return 0 if Campaign(settings, args.out, args.smoke).run() else 1


if __name__ == "__main__":
    sys.exit(main())
