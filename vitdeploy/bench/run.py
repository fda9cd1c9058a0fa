"""``vitdeploy bench``: build each model once, then time all of them interleaved per batch size."""

from __future__ import annotations

import json
from dataclasses import asdict, replace
from pathlib import Path

from tqdm import tqdm

from vitdeploy.backends import BACKENDS, BuildConfig, ModelSource, get_backend
from vitdeploy.bench.harness import Measurement, TimingPlan, random_batch, time_interleaved
from vitdeploy.bench.report import BenchResult
from vitdeploy.errors import VitDeployError
from vitdeploy.models.flops import total_macs

SPARSITY_CHOICES = ("auto", "none", "2:4")
"""``--sparsity``: 2:4 kernels where the spec records 2:4 and the build can run them, never, or always."""


def sparse_weights_for(source: ModelSource, sparsity: str, backend_name: str, config: BuildConfig) -> bool:
    """Whether ``source`` is built with 2:4 sparse kernels (``BuildConfig.sparse_weights``).

    ``auto``: when its spec records 2:4 and the build can run them (a backend with
    ``sparse_24``, CUDA, fp16 or bf16); otherwise dense kernels, as before. ``2:4``: always,
    so the backend's own checks say what is missing. ``none``: never.
    """
    if sparsity not in SPARSITY_CHOICES:
        raise VitDeployError(f"--sparsity {sparsity!r}: choose one of {', '.join(SPARSITY_CHOICES)}")
    if sparsity == "none":
        return False
    if not BACKENDS.get(backend_name).sparse_24:
        if sparsity == "2:4":
            sparse = [name for name, backend in BACKENDS.items().items() if backend.sparse_24]
            raise VitDeployError(f"--sparsity 2:4: backend {backend_name} has no 2:4 sparse kernels; "
                                 f"use --backend {' or '.join(sparse)}")
        return False
    if sparsity == "2:4":
        return True
    return source.sparsity() == "2:4" and config.device == "cuda" and config.precision != "fp32"


def bench_models(refs: list[str], backend_name: str, config: BuildConfig, plan: TimingPlan, work_dir: Path,
                 progress: bool = False, sparsity: str = "auto", loaded: dict | None = None) -> BenchResult:
    """Measure every model reference at every batch size in ``config``; ratios are to the first.
    ``loaded`` maps references to models already loaded (with the user's checkpoint options)."""
    return bench_sources(_sources(refs, work_dir, loaded or {}), backend_name, config, plan, progress, sparsity)


def bench_sources(sources: dict[str, ModelSource], backend_name: str, config: BuildConfig, plan: TimingPlan,
                  progress: bool = False, sparsity: str = "auto") -> BenchResult:
    """Measure named model sources at every batch size in ``config``; ratios are to the first.

    ``sparsity`` sets each model's ``sparse_weights`` (``sparse_weights_for``), replacing the config's.
    """
    config.validate()
    plan.validate()
    backend = get_backend(backend_name, require_available=False)
    for source in sources.values():
        source.require_runnable(backend.export_target)
    if not backend.available(config.device):
        raise VitDeployError(f"backend {backend_name} is not available here: "
                             f"{backend.unavailable_reason(config.device)}")
    shape = _common_input_shape(sources)
    configs = {name: replace(config, sparse_weights=sparse_weights_for(source, sparsity, backend_name, config))
               for name, source in sources.items()}
    engines = {name: backend.build(source, configs[name]) for name, source in sources.items()}
    measurements: list[Measurement] = []
    bar = tqdm(total=len(config.batch_sizes) * plan.rounds, desc="bench", disable=not progress)
    for batch in config.batch_sizes:
        bar.set_postfix(batch=batch)
        timed = time_interleaved(engines, random_batch(batch, shape), plan, on_round=lambda _: bar.update())
        measurements.extend(timed.values())
    bar.close()
    title = f"{backend_name} {config.precision} on {config.device}: " + ", ".join(sources)
    bench_config = {"backend": backend_name, "models": {n: s.ref for n, s in sources.items()},
                    "build": config.to_dict(), "timing": asdict(plan),
                    "threads": config.threads, "sparsity": sparsity,
                    "sparse_weights": {name: c.sparse_weights for name, c in configs.items()}}
    return BenchResult.from_measurements(title, measurements, bench_config, macs=_macs(sources))


def _sources(refs: list[str], work_dir: Path, loaded: dict) -> dict[str, ModelSource]:
    if not refs:
        raise VitDeployError("give at least one model to benchmark")
    sources: dict[str, ModelSource] = {}
    for ref in refs:
        source = ModelSource(ref, work_dir, model=loaded.get(ref))
        name, n = source.name, 2
        while name in sources:
            name, n = f"{source.name}#{n}", n + 1
        sources[name] = source
    return sources


def _common_input_shape(sources: dict[str, ModelSource]) -> tuple[int, int, int]:
    shapes = {name: source.input_shape() for name, source in sources.items()}
    if len(set(shapes.values())) > 1:
        raise VitDeployError(f"models take different input shapes ({shapes}); benchmark them separately")
    return next(iter(shapes.values()))


def _macs(sources: dict[str, ModelSource]) -> dict[str, int]:
    """MACs per image: from the spec, or from the export report beside an .onnx file."""
    macs = {}
    for name, source in sources.items():
        if not source.ref.endswith(".onnx"):
            macs[name] = total_macs(source.torch_model().spec)
            continue
        report = Path(source.ref).with_name(Path(source.ref).stem + ".export.json")
        if report.is_file():
            macs[name] = json.loads(report.read_text()).get("macs")
    return macs
