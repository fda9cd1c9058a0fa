"""torch → ONNX export with a static token plan and a dynamic batch axis, checked on every run.

After torch's (dynamo) exporter, ``fuse.py``'s passes reshape the graph so that the target's
runtime fuses it fully. Every export then runs the ONNX checker (full mode), the op audit (no sort,
target allowlist) and an ONNX Runtime parity check against PyTorch, on the graph as written. The
.onnx and its JSON report (export config, fusion, audit, parity, spec) are renamed into place only
when all three pass, so a failed export leaves nothing.
"""

from __future__ import annotations

import contextlib
import io
import logging
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnx
import torch

from vitdeploy.errors import VitDeployError
from vitdeploy.export import check, fuse
from vitdeploy.export.config import ExportConfig
from vitdeploy.io import atomic_paths, finite_json
from vitdeploy.models.flops import total_macs
from vitdeploy.models.spec import ViTSpec
from vitdeploy.models.vit import ViT

INPUT_NAME, OUTPUT_NAME = "input", "logits"


@dataclass
class ExportReport:
    onnx_path: str
    config: ExportConfig
    spec: dict
    macs: int
    export_seconds: float
    fusion: fuse.FusionReport
    audit: check.AuditReport
    parity: check.ParityReport
    assumed: list[str]
    """What loading the model had to assume (heads, pooling, normalisation), if anything."""

    def to_dict(self) -> dict:
        return {
            "assumed": self.assumed,
            "onnx": self.onnx_path,
            "config": asdict(self.config),
            "macs": self.macs,
            "export_seconds": round(self.export_seconds, 3),
            "fusion": self.fusion.to_dict(),
            "audit": self.audit.to_dict(),
            "parity": self.parity.to_dict(),
            "spec": self.spec,
        }


def report_path(onnx_path: str | Path) -> Path:
    onnx_path = Path(onnx_path)
    return onnx_path.with_name(onnx_path.stem + ".export.json")


def export_onnx(model: ViT, out: str | Path, config: ExportConfig | None = None) -> ExportReport:
    """Export ``model`` to ``out`` and check it; raise ``VitDeployError`` if any check fails."""
    config = (config or ExportConfig()).validate()
    _refuse_adaptive(model.spec)
    out = Path(out)
    started = time.perf_counter()
    with atomic_paths(out, report_path(out), suffixes=(".onnx", ".json")) as (tmp, report_tmp), \
            _selection(model.eval(), config.selection):
        _torch_export(model, tmp, config)
        fusion = fuse.fuse(tmp, config.target, config.opset)
        audit, parity = _check_export(tmp, model, config, fusion)
        report = ExportReport(str(out), config, model.spec.to_dict(), total_macs(model.spec),
                              time.perf_counter() - started, fusion, audit, parity,
                              list(getattr(model, "assumptions", [])))
        report_tmp.write_text(finite_json(report.to_dict(), str(report_path(out))))
    return report


def _refuse_adaptive(spec: ViTSpec) -> None:
    if spec.adaptive:
        counts = [b.tokens.keep for b in spec.static_counterpart().blocks if b.tokens.active]
        raise VitDeployError(
            "this model uses a-STAR: each image keeps a different number of tokens, so it is not a static graph "
            "and cannot be exported. Its static STAR plan (the same ρ and fused scores, keeping "
            f"{', '.join(map(str, counts))} patch tokens) exports: add --as-static-star to `vitdeploy export`, "
            "or prune with `vitdeploy prune star`")


def _check_export(path: Path, model: ViT, config: ExportConfig,
                  fusion: fuse.FusionReport) -> tuple[check.AuditReport, check.ParityReport]:
    """Checker, audit and parity; any failure raises ``VitDeployError`` (and the export is dropped).
    Fills ``fusion``'s op counts of the written graph and of ONNX Runtime's optimisation of it."""
    check.check_model(path)
    written = onnx.load(str(path))
    if check.model_opset(written) != config.opset:
        raise RuntimeError(f"asked the exporter for opset {config.opset}, got {check.model_opset(written)}")
    fusion.written = check.op_counts(written.graph.node)
    audit = check.audit(written, config.target)
    if not audit.passed:
        raise VitDeployError("op audit failed: " + "; ".join(audit.violations))
    with tempfile.TemporaryDirectory() as scratch:
        optimized = Path(scratch) / "onnxruntime-optimized.onnx"
        parity = check.parity(path, torch_reference(model), input_shape(model), config.parity_batches,
                              config.parity_atol, images=_parity_images(model, config),
                              images_name=f"{config.parity_data} test images", optimized_model_path=optimized)
        fusion.onnxruntime = check.op_counts(onnx.load(str(optimized)).graph.node)
    if not parity.passed:
        raise VitDeployError(f"parity check failed: ONNX Runtime differs from PyTorch by "
                             f"{parity.max_abs_diff:.2e} > {config.parity_atol:.0e}{_parity_hint(model, config)}")
    return audit, parity


def _parity_images(model: ViT, config: ExportConfig) -> np.ndarray | None:
    if config.parity_data is None:
        return None
    from vitdeploy.data import batches, dataset_for

    count = max(config.parity_batches)
    images = next(iter(batches(dataset_for(model, config.parity_data, "test", count, config.parity_resize), count)))[0]
    if len(images) < count:
        raise VitDeployError(f"--parity-data {config.parity_data}: {len(images)} test images, the parity check "
                             f"needs {count}")
    return images.numpy()


def _parity_hint(model: ViT, config: ExportConfig) -> str:
    """Why a model that ranks tokens by their scores may fail on random inputs, and what to do."""
    if config.parity_data is not None or not any(b.tokens.scored for b in model.spec.blocks):
        return ""
    return (". This model keeps the top-k tokens by their scores; on random-noise inputs the scores can be so "
            "close that float rounding flips which token is kept. Check on real images: --parity-data DATA")


@contextlib.contextmanager
def _selection(model: ViT, method: str):
    """Use ``method`` for token selection while exporting, then restore the model's own."""
    previous = model.selection
    model.set_selection(method)
    try:
        yield
    finally:
        model.set_selection(previous)


def _torch_export(model: ViT, path: Path, config: ExportConfig) -> None:
    example = torch.zeros(config.example_batch, *input_shape(model))
    batch = torch.export.Dim("batch", min=1)
    quiet = io.StringIO()
    with torch.no_grad(), quiet_exporter(quiet):
        try:
            program = torch.onnx.export(
                model, (example,), dynamo=True, opset_version=config.opset,
                input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                dynamic_shapes=({0: batch},), optimize=True, verbose=False,
            )
        except Exception as exc:  # the exporter raises many types; a failure here is ours, not the user's
            raise RuntimeError(f"torch.onnx.export failed:\n{quiet.getvalue()}") from exc
        program.save(str(path))


@contextlib.contextmanager
def quiet_exporter(captured: io.StringIO | None = None):
    """Silence the dynamo exporter: its progress prints go to ``captured`` (kept for error
    messages), and its warnings and per-missing-library log lines (torchvision) are dropped."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(captured or io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def torch_reference(model: ViT):
    """``model`` as a numpy → numpy function (no autograd), what ONNX Runtime is compared with."""

    def run(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return model(torch.from_numpy(x)).numpy()

    return run


def input_shape(model: ViT) -> tuple[int, int, int]:
    """(C, H, W) of one input image."""
    spec = model.spec
    return (spec.in_chans, spec.img_size, spec.img_size)
