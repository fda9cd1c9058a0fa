"""Tests for vitdeploy.export.allowlists."""

import pytest

from vitdeploy.errors import VitDeployError
from vitdeploy.export.allowlists import (
    TENSORRT_MAX_OPSET,
    TENSORRT_OPS,
    TENSORRT_TOPK_MAX_K,
    allowed_ops,
    standard_onnx_ops,
)

VIT_CORE_OPS = [
    "MatMul", "Gemm", "Add", "Softmax", "LayerNormalization", "TopK", "Gather",
    "GatherElements", "Concat", "Reshape", "Transpose", "Div", "Mul", "Erf",
]


@pytest.mark.parametrize("target", ["tensorrt", "onnxruntime"])
@pytest.mark.parametrize("opset", [17, 18])
@pytest.mark.parametrize("op", VIT_CORE_OPS)
def test_core_vit_ops_allowed(target, opset, op):
    assert op in allowed_ops(target, opset)


@pytest.mark.parametrize("op", ["SequenceConstruct", "StringNormalizer", "Unique"])
def test_ops_tensorrt_docs_mark_unsupported(op):
    # All three are "N" in the onnx-tensorrt 10.15 operators.md matrix.
    assert op not in TENSORRT_OPS
    assert op not in allowed_ops("tensorrt", 17)
    # ... but they are standard ops that onnxruntime accepts, so the difference is real.
    assert op in allowed_ops("onnxruntime", 17)


def test_layernorm_arrives_at_opset_17():
    assert "LayerNormalization" not in standard_onnx_ops(16)
    assert "LayerNormalization" in standard_onnx_ops(17)
    assert "LayerNormalization" not in allowed_ops("tensorrt", 16)


def test_gelu_only_from_opset_20_even_for_tensorrt():
    assert "Gelu" in TENSORRT_OPS
    assert "Gelu" not in allowed_ops("tensorrt", 17)
    assert "Gelu" in allowed_ops("tensorrt", 20)


def test_deprecated_ops_are_dropped():
    assert "Upsample" in standard_onnx_ops(9)
    assert "Upsample" not in standard_onnx_ops(10)
    assert "Scatter" not in allowed_ops("tensorrt", 11)


def test_tensorrt_is_subset_of_onnxruntime():
    for opset in (13, 17, 18, TENSORRT_MAX_OPSET):
        trt = allowed_ops("tensorrt", opset)
        assert trt <= allowed_ops("onnxruntime", opset)
        assert len(trt) > 100


def test_tensorrt_constants():
    assert TENSORRT_TOPK_MAX_K == 3840
    assert TENSORRT_MAX_OPSET == 24


def test_unknown_target():
    with pytest.raises(VitDeployError, match="unknown target 'x': choose tensorrt or onnxruntime"):
        allowed_ops("x", 17)
