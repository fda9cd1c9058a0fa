"""Post-training INT8 quantization of a model's checked ONNX export, written as Q/DQ ONNX.

The float model is exported (and checked) as usual; ONNX Runtime's quantization tools then
calibrate activation ranges on real images and insert QuantizeLinear/DequantizeLinear pairs in
front of the chosen parts only. Weights are INT8, symmetric, per output channel. Which nodes
form which part is read from the exporter's module scopes (``pkg.torch.onnx.name_scopes``), so
token selection, LayerNorm, Softmax, GELU and the residual adds are never touched.

Exact parity does not apply to an INT8 graph, so the check is accuracy: top-1 of the float and
the INT8 graphs on evaluation images, and how often their predictions agree. A drop beyond
``max_drop`` points refuses the model, and nothing is written.
"""

from __future__ import annotations

import contextlib
import logging
import math
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnx
import torch
from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static

from vitdeploy.data import batches, dataset_for
from vitdeploy.errors import VitDeployError
from vitdeploy.evaluate import onnx_predictions, top1
from vitdeploy.export import check
from vitdeploy.export.config import ExportConfig
from vitdeploy.export.onnx import INPUT_NAME, export_onnx
from vitdeploy.io import atomic_paths, finite_json
from vitdeploy.models.vit import ViT
from vitdeploy.quantize.config import QuantizeConfig
from vitdeploy.quantize.parts import PART_OPS, nodes_by_part

@dataclass
class Accuracy:
    images: int
    float_top1: float
    int8_top1: float
    agreement: float
    """Share of images on which the INT8 graph predicts what the float graph predicts."""

    @property
    def drop_points(self) -> float:
        return 100 * (self.float_top1 - self.int8_top1)

    def to_dict(self) -> dict:
        return {**asdict(self), "drop_points": self.drop_points}


@dataclass
class QuantizeReport:
    onnx_path: str
    config: QuantizeConfig
    calib_data: str
    eval_data: str
    quantized: dict[str, int]
    """Nodes running in INT8, per part."""
    float_ops: dict[str, int]
    """Op counts of the float graph, for comparison with ``ops``."""
    ops: dict[str, int]
    audit: check.AuditReport
    accuracy: Accuracy
    seconds: float
    qat: dict | None = None
    """The quantization-aware fine-tune's steps, final loss and seconds, if there was one."""

    def to_dict(self) -> dict:
        return {
            "onnx": self.onnx_path, "config": asdict(self.config), "calib_data": self.calib_data,
            "eval_data": self.eval_data, "quantized": self.quantized, "float_ops": self.float_ops, "ops": self.ops,
            "audit": self.audit.to_dict(), "accuracy": self.accuracy.to_dict(),
            "seconds": round(self.seconds, 3), "qat": self.qat,
        }


def report_path(onnx_path: str | Path) -> Path:
    onnx_path = Path(onnx_path)
    return onnx_path.with_name(onnx_path.stem + ".quantize.json")


def quantize_model(model: ViT, out: str | Path, config: QuantizeConfig, calib_data: str, eval_data: str,
                   resize: bool = False, progress: bool = False) -> QuantizeReport:
    """Export ``model``, quantize it as ``config`` says, check it and write ``out`` with its report."""
    config = config.validate()
    started = time.perf_counter()
    calibration = calibration_batches(dataset_for(model, calib_data, "train", config.calib_images, resize), config)
    evaluation = dataset_for(model, eval_data, "test", config.eval_limit, resize)
    with tempfile.TemporaryDirectory() as scratch, \
            atomic_paths(out, report_path(out), suffixes=(".onnx", ".json")) as (tmp, report_tmp):
        float_path = Path(scratch) / "float.onnx"
        export_onnx(model, float_path, ExportConfig(target=config.target))
        source, overrides, qat = float_path, None, None
        if config.qat_steps:
            source, overrides, qat = _quantization_aware(model, Path(scratch) / "qat.onnx", calibration, config,
                                                         dataset_for(model, calib_data, "train", resize=resize),
                                                         progress)
        nodes = quantize_onnx(source, tmp, calibration, config, overrides)
        audit = _check_quantized(tmp, config.target)
        accuracy = compare_accuracy(float_path, tmp, evaluation, progress)
        _refuse_drop(accuracy, config.max_drop)
        report = QuantizeReport(str(out), config, calib_data, eval_data, {p: len(n) for p, n in nodes.items()},
                                check.op_counts(onnx.load(str(float_path)).graph.node),
                                check.op_counts(onnx.load(str(tmp)).graph.node), audit,
                                accuracy, time.perf_counter() - started, qat)
        report_tmp.write_text(finite_json(report.to_dict(), str(report_path(out))))
    return report


def _quantization_aware(model: ViT, path: Path, calibration: list[np.ndarray], config: QuantizeConfig, train_set,
                        progress: bool) -> tuple[Path, dict, dict]:
    """(the export of ``model`` after ``config.qat_steps`` of quantization-aware fine-tuning, the
    scales and zero points its linear inputs were trained with, the fine-tune's summary)."""
    from vitdeploy.quantize import qat

    tuned, inputs, tuning = qat.fine_tune(model, train_set, calibration, config, config.qat_steps, progress)
    export_onnx(tuned, path, ExportConfig(target=config.target))
    graph = onnx.load(str(path))
    overrides = qat.tensor_overrides(graph, nodes_by_part(graph, ("linear",))["linear"], inputs)
    return path, overrides, {key: tuning[key] for key in ("steps", "final_loss", "seconds")}


def calibration_batches(dataset, config: QuantizeConfig) -> list[np.ndarray]:
    """The calibration images as float32 batches; refused when too few or not finite."""
    if len(dataset) < config.calib_batch:
        raise VitDeployError(f"the calibration data has {len(dataset)} images, fewer than one calibration batch "
                             f"of {config.calib_batch}")
    found = [x.numpy().astype(np.float32) for x, _ in batches(dataset, config.calib_batch)]
    if not all(np.isfinite(x).all() for x in found):
        raise VitDeployError("the calibration data holds NaN or infinite values after preprocessing")
    return found


class CalibrationImages(CalibrationDataReader):
    """ONNX Runtime's calibration reader over a list of batches."""

    def __init__(self, calibration: list[np.ndarray], input_name: str = INPUT_NAME):
        self._batches, self._input_name = iter(calibration), input_name

    def get_next(self) -> dict | None:
        batch = next(self._batches, None)
        return None if batch is None else {self._input_name: batch}


def quantize_onnx(float_path: str | Path, out: str | Path, calibration: list[np.ndarray],
                  config: QuantizeConfig, overrides: dict | None = None) -> dict[str, list[str]]:
    """Write ``float_path`` (a vitdeploy export) with Q/DQ in front of ``config.parts``, calibrated on
    ``calibration`` (float32 batches) except for the tensors whose scale and zero point ``overrides``
    fixes (ONNX Runtime's ``TensorQuantOverrides``); returns the quantized nodes' names per part.
    Unchecked: ``quantize_model`` adds the checks.

    Only inputs are quantized: a MatMul's output stays float, so ONNX Runtime fuses each
    DQ→MatMul with its bias into one integer kernel and TensorRT fuses the DQ into the layer."""
    graph = onnx.load(str(float_path))
    nodes = nodes_by_part(graph, config.parts)
    unsigned = config.target == "onnxruntime"
    options = {"ActivationSymmetric": not unsigned, "WeightSymmetric": True, "CalibPercentile": config.percentile,
               "CalibTensorRangeSymmetric": not unsigned, "OpTypesToExcludeOutputQuantization": ["MatMul", "Gemm"],
               "TensorQuantOverrides": overrides or {}}
    with _without_preprocessing_advice():
        quantize_static(
            str(float_path), str(out), CalibrationImages(calibration, graph.graph.input[0].name), quant_format=QuantFormat.QDQ,
            nodes_to_quantize=[name for names in nodes.values() for name in names],
            op_types_to_quantize=sorted({op for part in config.parts for op in PART_OPS[part]}), per_channel=True,
            activation_type=QuantType.QUInt8 if unsigned else QuantType.QInt8, weight_type=QuantType.QInt8,
            calibrate_method=_CALIBRATORS[config.calibration], extra_options=options,
            calibration_providers=["CPUExecutionProvider"])
    return nodes


def quantize_for_timing(float_path: Path, out: Path, example_shape: tuple[int, ...], target: str) -> bool:
    """Write ``float_path`` quantized as ``vitdeploy quantize`` quantizes by default, its ranges calibrated
    on random inputs of ``example_shape``: latency does not depend on the values. False, and nothing
    written, when the graph has none of the default parts (a latency table's stem-and-head part)."""
    config = QuantizeConfig(target=target)
    if not any(nodes_by_part(onnx.load(str(float_path)), config.parts, required=False).values()):
        return False
    calibration = [np.random.default_rng(0).standard_normal(example_shape, dtype=np.float32)]
    quantize_onnx(float_path, out, calibration, config)
    return True


class Int8Source:
    """``source`` with its ONNX graph quantized for timing (``quantize_for_timing``) on ``batch``
    inputs of its own shape: what latency tables of precision int8 measure. Everything else is
    ``source``'s."""

    def __init__(self, source, batch: int):
        self._source, self._example_shape = source, (batch, *source.input_shape())
        self._quantized: dict[str, Path] = {}

    def __getattr__(self, name: str):
        return getattr(self._source, name)

    def onnx_path(self, target: str = "onnxruntime") -> Path:
        if target not in self._quantized:
            float_path = self._source.onnx_path(target)
            int8_path = float_path.with_name(f"{float_path.stem}.int8.onnx")
            quantized = quantize_for_timing(float_path, int8_path, self._example_shape, target)
            self._quantized[target] = int8_path if quantized else float_path
        return self._quantized[target]


@contextlib.contextmanager
def _without_preprocessing_advice():
    """ONNX Runtime's quantizer logs advice to run its pre-processing on every call; vitdeploy's export
    already gives it shapes and fused ops, so the advice is noise."""
    def keep(record: logging.LogRecord) -> bool:
        return "pre-processing" not in record.getMessage()

    root = logging.getLogger()
    root.addFilter(keep)
    try:
        yield
    finally:
        root.removeFilter(keep)


_CALIBRATORS = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
                "entropy": CalibrationMethod.Entropy}


def _check_quantized(path: Path, target: str) -> check.AuditReport:
    check.check_model(path)
    audit = check.audit(onnx.load(str(path)), target)
    if not audit.passed:
        raise VitDeployError("op audit of the INT8 graph failed: " + "; ".join(audit.violations))
    return audit


def compare_accuracy(float_path: Path, int8_path: Path, dataset, progress: bool = False) -> Accuracy:
    """Top-1 of both graphs on ``dataset`` and how often they agree (ONNX Runtime, CPU)."""
    labels = torch.cat([torch.as_tensor(y) for _, y in batches(dataset, 1024)])
    reference = onnx_predictions(float_path, dataset, progress)
    quantized = onnx_predictions(int8_path, dataset, progress)
    return Accuracy(len(labels), top1(reference, labels), top1(quantized, labels),
                    (reference == quantized).float().mean().item())


def _refuse_drop(accuracy: Accuracy, max_drop: float) -> None:
    if not math.isfinite(accuracy.drop_points) or accuracy.drop_points > max_drop:
        raise VitDeployError(
            f"INT8 loses {accuracy.drop_points:.2f} top-1 points ({100 * accuracy.float_top1:.2f} % → "
            f"{100 * accuracy.int8_top1:.2f} % on {accuracy.images} images), more than --max-drop {max_drop:g}; "
            "nothing written. Try --calibration percentile or entropy, more --calib-images, or fewer --parts")


def summary(report: QuantizeReport) -> str:
    parts = ", ".join(f"{count} {part}" for part, count in report.quantized.items())
    accuracy, config = report.accuracy, report.config
    return "\n".join([
        f"wrote {report.onnx_path} (INT8 Q/DQ for {config.target}: {parts} nodes) and {report_path(report.onnx_path)}",
        f"top-1 on {accuracy.images} {report.eval_data} test images: float {100 * accuracy.float_top1:.2f} % → "
        f"INT8 {100 * accuracy.int8_top1:.2f} % ({-accuracy.drop_points:+.2f} points; at most -{config.max_drop:g} "
        f"allowed), the two agree on {100 * accuracy.agreement:.1f} %",
        f"calibration {config.calibration} on {config.calib_images} {report.calib_data} training images"
        + (f", then {report.qat['steps']} quantization-aware fine-tuning steps" if report.qat else "")
        + f"; op audit passed; {report.seconds:.1f} s",
    ])
