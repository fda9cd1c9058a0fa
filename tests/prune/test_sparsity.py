"""2:4 sparsity: the magnitude mask, the verifier, the dims check, fine-tuning and the ONNX export."""

import numpy as np
import pytest
import torch
from tests.conftest import tiny_model, tiny_spec
from torch.utils.data import TensorDataset

from vitdeploy.errors import VitDeployError
from vitdeploy.export.onnx import export_onnx
from vitdeploy.prune.sparsity import (
    mask_24,
    preserve_24,
    sparse_weight_names,
    sparsify_24,
    verify_24,
    verify_24_onnx,
)
from vitdeploy.train.config import TrainConfig
from vitdeploy.train.loop import fine_tune


def test_mask_keeps_the_two_largest_of_every_four_inputs():
    weight = torch.randn(16, 32, generator=torch.Generator().manual_seed(0))
    mask = mask_24(weight)
    groups, kept = weight.abs().reshape(16, 8, 4), mask.reshape(16, 8, 4)
    assert (kept.sum(-1) == 2).all()
    smallest_kept = torch.where(kept, groups, torch.inf).amin(-1)
    largest_dropped = torch.where(kept, -torch.inf, groups).amax(-1)
    assert (smallest_kept >= largest_dropped).all()


def test_mask_runs_along_the_input_dim():
    weight = torch.zeros(4, 8)
    weight[:, 0] = 5.0  # large in one column: every row keeps it
    weight[0, 1:4] = torch.tensor([1.0, 2.0, 3.0])
    mask = mask_24(weight)
    assert mask[:, 0].all()
    assert mask[0].tolist()[:4] == [True, False, False, True]


def test_verifier_accepts_the_pattern_and_rejects_a_group_with_three_nonzeros():
    weight = torch.randn(8, 16)
    sparse = weight * mask_24(weight)
    broken = sparse.clone()
    broken[3, 4:8] = torch.tensor([1.0, 1.0, 1.0, 0.0])
    report = verify_24({"sparse": sparse, "broken": broken, "dense": weight, "bias": torch.ones(8)})
    assert report["sparse"] == ["sparse"] and report["dense"] == ["broken", "dense"]
    assert report["skipped"] == ["bias"] and not report["all_satisfied"]
    assert report["tensors"]["broken"]["violating_groups"] == 1
    assert report["tensors"]["dense"]["violating_groups"] == 8 * 4


def test_verifier_reads_the_input_axis_per_tensor():
    weight = torch.randn(8, 16, generator=torch.Generator().manual_seed(1))
    sparse = (weight * mask_24(weight)).numpy()
    assert verify_24({"w": sparse.T}, {"w": 0})["all_satisfied"]
    assert not verify_24({"w": np.ascontiguousarray(sparse.T)})["all_satisfied"]


def test_sparsify_masks_every_block_linear_and_records_the_pattern():
    model = tiny_model()
    sparse, report = sparsify_24(model)
    assert sparse.spec.sparsity == "2:4" and report["verified"]
    assert report["layers"] == 4 * model.spec.depth and report["zeroed"] == report["weights"] // 2
    state, original = sparse.state_dict(), model.state_dict()
    names = sparse_weight_names(sparse)
    assert verify_24({n: state[n] for n in names})["all_satisfied"]
    assert all(torch.equal(state[k], original[k]) for k in original if k not in names)
    assert model.spec.sparsity is None  # the input model is untouched


def test_dims_not_divisible_by_16_are_refused():
    model = tiny_model(tiny_spec(embed_dim=24))
    with pytest.raises(VitDeployError, match="divisible by 16.*--round-to 16"):
        sparsify_24(model)


def test_fine_tuning_under_preserve_keeps_the_zeros():
    sparse, _ = sparsify_24(tiny_model())
    before = {n: p.detach().clone() for n, p in sparse.named_parameters()}
    data = TensorDataset(torch.randn(32, 3, 32, 32), torch.randint(5, (32,)))
    with preserve_24(sparse):
        fine_tune(sparse, data, TrainConfig(batch_size=8, lr=1e-2, warmup_epochs=0.0), steps=3)
    names = sparse_weight_names(sparse)
    state = sparse.state_dict()
    assert verify_24({n: state[n] for n in names})["all_satisfied"]
    assert all(torch.equal(state[n] == 0, before[n] == 0) for n in names)
    assert not torch.equal(state[names[0]], before[names[0]])  # it did train


def test_exported_onnx_keeps_the_exact_zeros(tmp_path):
    sparse, _ = sparsify_24(tiny_model())
    export_onnx(sparse, tmp_path / "model.onnx")
    report = verify_24_onnx(tmp_path / "model.onnx")
    assert len(report["sparse"]) == 4 * sparse.spec.depth  # qkv, proj, fc1, fc2 of every block
    assert len(report["dense"]) == 1  # the classifier head stays dense
    dense_report = verify_24_onnx(_export_dense(tmp_path))
    assert dense_report["sparse"] == []


def test_verify_onnx_on_a_missing_file_is_a_user_error(tmp_path):
    with pytest.raises(VitDeployError, match="no such ONNX file"):
        verify_24_onnx(tmp_path / "missing.onnx")


def _export_dense(tmp_path):
    path = tmp_path / "dense.onnx"
    export_onnx(tiny_model(), path)
    return path
