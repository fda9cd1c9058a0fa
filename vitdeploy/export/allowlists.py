"""Operator allowlists for the post-export op audit, one per deployment target.

Sources (figures and facts only, restated in our own words):

* TensorRT ONNX parser: onnx/onnx-tensorrt ``docs/operators.md``, TensorRT 10.15 GA
  revision (the newest 10.x copy found). Same-release sources in that repo at commit
  dd0a3a9f8794ae4f0316ed07ea68cda9b944bb3c: ``docs/Changelog.md`` (top entry:
  10.15 GA, 2026-02-02), ``onnxOpImporters.cpp``, ``onnxOpCheckers.cpp``.
  That doc says TensorRT 10.15 parses ONNX opsets 9 through 24, inclusive. (The 10.0
  revision of the same file gave 9 through 20.)
* TopK cap: the TensorRT 10.15.1 C++ API, ``nvinfer1::ITopKLayer::setK`` (k up to 3840), and
  the TensorRT operator reference ``docs.nvidia.com/deeplearning/tensorrt/latest/_static/
  operators/TopK.html`` (k <= 3840 and k <= the size of the reduced axis; the axis must be
  one of the last four). The onnx-tensorrt 10.15 table words it as K "less than 3840".
  Exports should therefore keep K <= 3840.
* ONNX Runtime (CPU EP): treated as supporting every standard, non-deprecated ``ai.onnx``
  operator of the model's opset. The schemas come from the installed ``onnx`` package
  (``onnx.defs.get_all_schemas_with_history``). Beside them, the ``com.microsoft`` contrib ops
  that ``vitdeploy.export.fuse`` may write (through ONNX Runtime's transformer optimizer): both
  are defined in ONNX Runtime's ``docs/ContribOperators.md`` and have CPU kernels
  (``docs/OperatorKernels.md``). TensorRT parses none of them.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache

import onnx.defs

from vitdeploy.errors import VitDeployError

#: Inclusive ONNX opset range of the TensorRT 10.15 ONNX parser (onnx-tensorrt docs/operators.md).
TENSORRT_MIN_OPSET = 9
TENSORRT_MAX_OPSET = 24

#: Largest K that a TensorRT TopK layer accepts (ITopKLayer::setK; operators/TopK.html).
TENSORRT_TOPK_MAX_K = 3840

#: Default-domain (ai.onnx) operators marked supported ("Y") in the onnx-tensorrt 10.15
#: operators.md support matrix. Operators marked "N" are left out. These include the
#: Sequence*, Optional*, String*, Bitwise*, *Integer, QLinear*, DFT, Unique, Compress,
#: Det, Multinomial, MaxUnpool, MaxRoiPool, AffineGrid, Col2Im, CenterCropPad,
#: ImageDecoder, RegexFullMatch, TfIdfVectorizer, DynamicQuantizeLinear and the training
#: losses. Operators missing from the table (e.g. Swish) are also left out.
#: ImageScaler, ParametricSoftplus and ScaledTanh are old experimental ops that the onnx
#: package no longer defines, so allowed_ops() always drops them. It also drops Upsample
#: from opset 10 and Scatter from opset 11, where ONNX deprecates them.
TENSORRT_OPS: frozenset[str] = frozenset(
    {
        "Abs", "Acos", "Acosh", "Add", "And", "ArgMax", "ArgMin", "Asin", "Asinh",
        "Atan", "Atanh", "Attention", "AveragePool",
        "BatchNormalization", "BlackmanWindow",
        "Cast", "CastLike", "Ceil", "Celu", "Clip", "Concat", "Constant",
        "ConstantOfShape", "Conv", "ConvTranspose", "Cos", "Cosh", "CumSum",
        "DeformConv", "DepthToSpace", "DequantizeLinear", "Div", "Dropout",
        "Einsum", "Elu", "Equal", "Erf", "Exp", "Expand", "EyeLike",
        "Flatten", "Floor",
        "Gather", "GatherElements", "GatherND", "Gelu", "Gemm", "GlobalAveragePool",
        "GlobalLpPool", "GlobalMaxPool", "Greater", "GreaterOrEqual", "GridSample",
        "GroupNormalization", "GRU",
        "HammingWindow", "HannWindow", "HardSigmoid", "HardSwish", "Hardmax",
        "Identity", "If", "ImageScaler", "InstanceNormalization", "IsInf", "IsNaN",
        "LayerNormalization", "LeakyRelu", "Less", "LessOrEqual", "Log", "LogSoftmax",
        "Loop", "LRN", "LSTM", "LpNormalization", "LpPool",
        "MatMul", "Max", "MaxPool", "Mean", "MeanVarianceNormalization", "Min", "Mish",
        "Mod", "Mul",
        "Neg", "NonMaxSuppression", "NonZero", "Not",
        "OneHot", "Or",
        "Pad", "ParametricSoftplus", "Pow", "PRelu",
        "QuantizeLinear",
        "RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike", "Range",
        "Reciprocal", "ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp",
        "ReduceMax", "ReduceMean", "ReduceMin", "ReduceProd", "ReduceSum",
        "ReduceSumSquare", "Relu", "Reshape", "Resize", "ReverseSequence",
        "RMSNormalization", "RNN", "RoiAlign", "RotaryEmbedding", "Round",
        "STFT", "ScaledTanh", "Scan", "Scatter", "ScatterElements", "ScatterND", "Selu",
        "Shape", "Shrink", "Sigmoid", "Sign", "Sin", "Sinh", "Size", "Slice", "Softmax",
        "Softplus", "Softsign", "SpaceToDepth", "Split", "Sqrt", "Squeeze", "Sub", "Sum",
        "Tan", "Tanh", "TensorScatter", "ThresholdedRelu", "Tile", "TopK", "Transpose",
        "Trilu",
        "Unsqueeze", "Upsample",
        "Where",
        "Xor",
    }
)

#: Restrictions listed for TensorRT 10.15 on ops that ViT exports use (onnx-tensorrt
#: operators.md, onnxOpImporters.cpp/onnxOpCheckers.cpp at dd0a3a9, TRT operator reference).
TENSORRT_VIT_OP_NOTES: Mapping[str, str] = {
    "TopK": "sorted must be 1; K <= 3840 and <= the reduced axis size; reduced axis must be "
    "one of the last four; K may be a runtime tensor (dynamic K, since TRT 8.6); "
    "indices come back as INT64",
    "LayerNormalization": "only the first output (Y) may be consumed",
    "Gather": "FP32/FP16/BF16/INT32/INT64/BOOL data; negative indices supported",
    "GatherElements": "FP32/FP16/BF16/INT32/INT64/BOOL data; negative indices supported",
    "ScatterND": "reduction must be 'none'",
    "Einsum": "ellipsis, diagonal and broadcasting supported since TRT 10.12",
    "Squeeze": "axes must resolve to a build-time constant",
    "Unsqueeze": "axes must resolve to a build-time constant",
    "ReduceMean": "axes must be an initializer",
    "Dropout": "is_training must be an initializer that evaluates to false",
}


#: (domain, op) of the ONNX Runtime contrib ops allowed in exports for target onnxruntime.
ONNXRUNTIME_CONTRIB_OPS: frozenset[tuple[str, str]] = frozenset(
    {("com.microsoft", "BiasGelu"), ("com.microsoft", "Gelu")}
)


@lru_cache(maxsize=None)
def standard_onnx_ops(opset: int) -> frozenset[str]:
    """Return the ai.onnx operators that exist, and are not deprecated, at ``opset``.

    For each operator, the version used is the newest schema whose since_version is at
    most ``opset``. The operator is kept when that version is not marked deprecated.
    """
    latest: dict[str, onnx.defs.OpSchema] = {}
    for schema in onnx.defs.get_all_schemas_with_history():
        if schema.domain not in ("", "ai.onnx") or schema.since_version > opset:
            continue
        seen = latest.get(schema.name)
        if seen is None or schema.since_version > seen.since_version:
            latest[schema.name] = schema
    return frozenset(name for name, schema in latest.items() if not schema.deprecated)


def allowed_ops(target: str, opset: int) -> frozenset[str]:
    """Return the operators that the op audit allows for ``target`` at ``opset``."""
    if target == "onnxruntime":
        return standard_onnx_ops(opset)
    if target == "tensorrt":
        return TENSORRT_OPS & standard_onnx_ops(opset)
    raise VitDeployError(f"unknown target {target!r}: choose tensorrt or onnxruntime")


def allowed_contrib_ops(target: str) -> frozenset[tuple[str, str]]:
    """Return the (domain, op) pairs outside the standard domain that the audit allows for ``target``."""
    return ONNXRUNTIME_CONTRIB_OPS if target == "onnxruntime" else frozenset()
