"""What every rewrite rule's test uses: run one rule on a graph, compare ONNX Runtime outputs."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import onnxruntime as ort
import pytest

from vitdeploy.export.rewrite import apply_rules
from vitdeploy.export.rules import RewriteRule


def _run_rule(rule: RewriteRule, model: onnx.ModelProto) -> tuple[onnx.ModelProto, list[dict], list[dict]]:
    """(rewritten model, applied, skipped) of ``rule`` alone on ``model``, without constant folding."""
    graph = gs.import_onnx(onnx.shape_inference.infer_shapes(model))
    applied, skipped = apply_rules(graph, [rule])
    return gs.export_onnx(graph.cleanup().toposort()), applied, skipped


def _session(model: onnx.ModelProto) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def _random_feed(model: onnx.ModelProto, batch: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Standard-normal float32 inputs; symbolic dims get ``batch``."""
    feed = {}
    for value in model.graph.input:
        tensor_type = value.type.tensor_type
        assert tensor_type.elem_type == onnx.TensorProto.FLOAT, f"input {value.name} is not float32"
        dims = [d.dim_value if d.HasField("dim_value") else batch for d in tensor_type.shape.dim]
        feed[value.name] = rng.standard_normal(dims).astype(np.float32)
    return feed


def _assert_same_outputs(
    before: onnx.ModelProto, after: onnx.ModelProto, atol: float = 0.0, batch_sizes=(1, 3), seed: int = 0
) -> None:
    """``after``'s outputs match ``before``'s on the same random inputs, and every output is finite."""
    rng = np.random.default_rng(seed)
    want_session, got_session = _session(before), _session(after)
    names = [output.name for output in want_session.get_outputs()]
    for batch in batch_sizes:
        feed = _random_feed(before, batch, rng)
        for name, want, got in zip(names, want_session.run(names, feed), got_session.run(names, feed)):
            # assert_allclose counts NaN == NaN as equal, so NaN/Inf are rejected first
            assert np.isfinite(want).all() and np.isfinite(got).all(), f"output {name} is not finite"
            np.testing.assert_allclose(got, want, rtol=0, atol=atol, err_msg=f"output {name}, batch {batch}")


@pytest.fixture
def run_rule():
    return _run_rule


@pytest.fixture
def assert_same_outputs():
    return _assert_same_outputs
