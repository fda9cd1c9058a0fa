"""Tests for the rewrite driver (vitdeploy.export.rewrite), with argsort+slice graphs from both torch exporters.

The rule's own cases on hand-built graphs are in rules/test_argsort_slice_to_topk.py.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import pytest
import torch
from onnx import TensorProto

from vitdeploy.errors import VitDeployError
from vitdeploy.export import rewrite
from vitdeploy.export.check import audit, parity
from vitdeploy.export.rewrite import apply_rules, report_path, rewrite_onnx

TOKENS, DIM = 17, 8


def _gather_tokens(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    return torch.gather(x, 1, idx.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


class ArgsortTopK(torch.nn.Module):
    """EViT-style selection: score tokens, keep the k best via argsort and a slice."""

    def __init__(self, k: int = 5, descending: bool = True):
        super().__init__()
        self.score = torch.nn.Linear(DIM, 1)
        self.k, self.descending = k, descending

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        score = self.score(x).squeeze(-1)
        idx = torch.argsort(score, dim=1, descending=self.descending)[:, : self.k]
        return _gather_tokens(x, idx)


class SortValuesAndIndices(torch.nn.Module):
    """Keeps the k best tokens and weights them by their sliced sorted scores (dim=-1 sort)."""

    def __init__(self, k: int = 6):
        super().__init__()
        self.score = torch.nn.Linear(DIM, 1)
        self.k = k

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        values, idx = torch.sort(self.score(x).squeeze(-1), dim=-1, descending=True)
        weights = values[:, : self.k].softmax(-1).unsqueeze(-1)
        return _gather_tokens(x, idx[:, : self.k]) * weights


class TwoStages(torch.nn.Module):
    """Two pruning stages, 17 -> 9 -> 4 tokens."""

    def __init__(self):
        super().__init__()
        self.first, self.second = ArgsortTopK(k=9), ArgsortTopK(k=4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.second(torch.relu(self.first(x)))


class ReshapedScore(torch.nn.Module):
    """The score's shape comes from ``x.shape[0] // 1``: symbolic shape inference loses it."""

    def __init__(self):
        super().__init__()
        self.score = torch.nn.Linear(DIM, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        score = self.score(x).reshape(x.shape[0] // 1, -1)
        return _gather_tokens(x, torch.argsort(score, dim=1, descending=True)[:, :5])


class FullArgsort(torch.nn.Module):
    """Negative case: all sorted indices are used, so this really is a sort."""

    def __init__(self):
        super().__init__()
        self.score = torch.nn.Linear(DIM, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _gather_tokens(x, torch.argsort(self.score(x).squeeze(-1), dim=-1))


#: name -> (module factory, (old K, new k) of each rewritten TopK)
REWRITABLE = {
    "argsort_descending": (lambda: ArgsortTopK(k=5, descending=True), [(TOKENS, 5)]),
    "argsort_ascending": (lambda: ArgsortTopK(k=7, descending=False), [(TOKENS, 7)]),
    "sort_values_and_indices": (SortValuesAndIndices, [(TOKENS, 6)]),
    "two_stages": (TwoStages, [(TOKENS, 9), (9, 4)]),
}
EXPORTERS = ["torchscript", "dynamo"]


def _export(module: torch.nn.Module, path: Path, exporter: str) -> None:
    x = torch.randn(2, TOKENS, DIM)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if exporter == "torchscript":
            torch.onnx.export(
                module, (x,), str(path), dynamo=False, opset_version=17, input_names=["x"],
                output_names=["y"], dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}},
            )
        else:
            torch.onnx.export(
                module, (x,), str(path), dynamo=True, opset_version=18, input_names=["x"],
                output_names=["y"], dynamic_shapes=({0: torch.export.Dim("batch")},), verbose=False,
            )


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """Lazily export (module, exporter) pairs once per test module; returns (module, path)."""
    root = tmp_path_factory.mktemp("exports")
    cache: dict[tuple[str, str], tuple[torch.nn.Module, Path]] = {}
    factories = {name: factory for name, (factory, _) in REWRITABLE.items()}
    factories.update(full_argsort=FullArgsort, reshaped_score=ReshapedScore)

    def get(name: str, exporter: str) -> tuple[torch.nn.Module, Path]:
        if (name, exporter) not in cache:
            torch.manual_seed(0)
            module = factories[name]().eval()
            path = root / f"{name}_{exporter}.onnx"
            _export(module, path, exporter)
            cache[name, exporter] = module, path
        return cache[name, exporter]

    return get


def _topk_ks(path: Path) -> list[int]:
    return [info.k for info in audit(onnx.load(str(path)), "onnxruntime").topk]


def _folded_only(path: Path) -> onnx.ModelProto:
    graph = gs.import_onnx(onnx.shape_inference.infer_shapes(onnx.load(str(path)), data_prop=True))
    graph.fold_constants()
    return gs.export_onnx(graph.cleanup().toposort())


def _torch_reference(module: torch.nn.Module):
    def run(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return module(torch.from_numpy(x)).numpy()

    return run


@pytest.mark.parametrize("exporter", EXPORTERS)
@pytest.mark.parametrize("name", list(REWRITABLE))
def test_rewrites_argsort_slice_to_topk_k(exported, tmp_path, name, exporter):
    module, src = exported(name, exporter)
    expected = REWRITABLE[name][1]
    before = audit(onnx.load(str(src)), "onnxruntime")
    assert not before.passed
    assert any("full sort" in v for v in audit(_folded_only(src), "onnxruntime").violations)

    out = tmp_path / "out.onnx"
    report = rewrite_onnx(src, out)

    assert [(a["old_k"], a["new_k"]) for a in report.applied] == expected
    assert {a["rule"] for a in report.applied} == {"argsort_slice_to_topk"}
    assert report.skipped == []
    assert sorted(_topk_ks(out)) == sorted(k for _, k in expected)
    assert report.audit.passed, report.audit.violations
    assert audit(onnx.load(str(out)), "onnxruntime").passed
    assert report.parity.passed and report.parity.max_abs_diff <= 1e-4
    assert parity(out, _torch_reference(module), (TOKENS, DIM)).max_abs_diff <= 1e-5
    assert "Slice" not in report.op_counts_after
    saved = json.loads(report_path(out).read_text())
    assert saved["applied"] == report.applied and saved["parity"]["passed"] and saved["audit"]["passed"]
    assert saved["rules"] == ["argsort_slice_to_topk"]


def test_no_rules_selected_only_folds(exported, tmp_path):
    _, src = exported("argsort_descending", "torchscript")
    report = rewrite_onnx(src, tmp_path / "out.onnx", rule_names=[])
    assert report.rules == [] and report.applied == [] and report.skipped == []
    before = audit(onnx.load(str(src)), "onnxruntime").violations
    assert not any("full sort" in v for v in before)  # K only becomes a known constant by folding
    assert any("full sort" in v for v in report.audit.violations)


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_full_argsort_is_left_alone_and_still_fails_the_audit(exported, tmp_path, exporter):
    _, src = exported("full_argsort", exporter)
    out = tmp_path / "out.onnx"
    report = rewrite_onnx(src, out)
    assert report.applied == []
    assert len(report.skipped) == 1 and "used unsliced by Unsqueeze" in report.skipped[0]["reason"]
    assert _topk_ks(out) == [TOKENS]
    assert not report.audit.passed
    assert any("full sort" in v for v in report.audit.violations)
    assert report.parity.passed
    assert json.loads(report_path(out).read_text())["skipped"] == report.skipped


def test_axis_length_unknown_to_symbolic_inference_is_probed(exported, tmp_path):
    _, src = exported("reshaped_score", "torchscript")
    inferred = onnx.shape_inference.infer_shapes(onnx.load(str(src)), data_prop=True)
    topk = next(n for n in inferred.graph.node if n.op_type == "TopK")
    score_shape = next(v for v in inferred.graph.value_info if v.name == topk.input[0]).type.tensor_type.shape
    assert not score_shape.dim[1].HasField("dim_value")  # the premise: inference alone cannot tell

    report = rewrite_onnx(src, tmp_path / "out.onnx")
    assert [(a["old_k"], a["new_k"]) for a in report.applied] == [(TOKENS, 5)]
    assert report.audit.passed, report.audit.violations


# --- hand-built graphs (tests/export/conftest.py) ------------------------------------------


def _save(model: onnx.ModelProto, path: Path) -> Path:
    onnx.save(model, str(path))
    return path


@pytest.mark.parametrize("k_source", ["initializer", "constant_node"])
def test_rewrite_onnx_on_hand_built_graph_with_duplicate_slices(tmp_path, topk_slice_model, k_source):
    src = _save(topk_slice_model([[5], [5]], k_source=k_source, axis=1), tmp_path / "in.onnx")
    out = tmp_path / "out.onnx"
    report = rewrite_onnx(src, out)
    assert [(a["new_k"], a["slices"]) for a in report.applied] == [(5, ["slice0", "slice1"])]
    model = onnx.load(str(out))
    assert [o.name for o in model.graph.output] == ["kept0", "kept1"]
    assert _topk_ks(out) == [5] and report.audit.passed
    assert report.parity.passed and report.parity.mismatched_outputs == []  # int64 outputs compared exactly


# --- errors ----------------------------------------------------------------------------------


def test_missing_input_file(tmp_path):
    with pytest.raises(VitDeployError, match="no such ONNX file"):
        rewrite_onnx(tmp_path / "missing.onnx", tmp_path / "out.onnx")


def test_input_that_is_not_onnx(tmp_path):
    src = tmp_path / "notes.onnx"
    src.write_text("this is not a protobuf\n")
    with pytest.raises(VitDeployError, match="not a readable ONNX model"):
        rewrite_onnx(src, tmp_path / "out.onnx")
    assert not (tmp_path / "out.onnx").exists()


def test_inputs_that_cannot_be_generated(tmp_path, topk_slice_model):
    model = topk_slice_model([[5]])
    model.graph.input[0].type.tensor_type.shape.dim[1].dim_param = "tokens"
    with pytest.raises(VitDeployError, match="input 'x' has shape \\[batch, tokens\\]"):
        rewrite_onnx(_save(model, tmp_path / "in.onnx"), tmp_path / "out.onnx")
    model.graph.input[0].type.tensor_type.elem_type = TensorProto.INT64
    with pytest.raises(VitDeployError, match="input 'x' is INT64"):
        rewrite_onnx(_save(model, tmp_path / "in.onnx"), tmp_path / "out.onnx")


def test_failed_parity_leaves_nothing(tmp_path, monkeypatch, topk_slice_model):
    def wrong_direction(graph: gs.Graph, rules):
        result = apply_rules(graph, rules)
        for node in graph.nodes:
            if node.op == "TopK":
                node.attrs["largest"] = 0
        return result

    monkeypatch.setattr(rewrite, "apply_rules", wrong_direction)
    src = _save(topk_slice_model([[5]]), tmp_path / "in.onnx")
    out = tmp_path / "out" / "model.onnx"
    with pytest.raises(VitDeployError, match="outputs differ from the original"):
        rewrite_onnx(src, out)
    assert not out.parent.exists()  # not even the directory the failed rewrite created
