"""NViT structural pruning: groups and importance, ranking, compaction to a dense ViT, the loop."""

import json

import pytest
import torch
import torch.nn.functional as F
from tests.conftest import tiny_model, tiny_spec
from torch.func import functional_call
from torch.utils.data import TensorDataset

from vitdeploy.errors import VitDeployError
from vitdeploy.export.onnx import export_onnx
from vitdeploy.lut.table import load_table
from vitdeploy.models.flops import total_macs
from vitdeploy.models.groups import all_dims, dim_key, dim_size
from vitdeploy.models.zoo import get_spec
from vitdeploy.prune.methods.nvit.importance import (
    group_importance,
    hessian_importance,
    magnitude_importance,
)
from vitdeploy.prune.costs import flops_cost, lut_latency
from vitdeploy.prune.methods.nvit.structural import (
    NViTConfig,
    NViTPruner,
    compact,
    compaction_error,
    plan_removals,
    prune_nvit,
    shrink,
    unit_size,
)

SHIPPED_TABLE = "latency_tables/amd-epyc-onnxruntime-fp32.json"


def ce_loss(model, x, y):
    return F.cross_entropy(model(x), y)


def random_keep(model, seed: int, fraction: float = 0.5) -> dict[str, torch.Tensor]:
    """Random keep masks over every dim, EMB included; at least one index of each survives."""
    generator = torch.Generator().manual_seed(seed)
    keep = {}
    for dim, scores in magnitude_importance(model).items():
        mask = torch.rand(len(scores), generator=generator) < fraction
        mask[torch.randint(len(scores), (1,), generator=generator)] = True
        keep[dim] = mask
    return keep


def tiny_data(count: int = 64, seed: int = 0, classes: int = 5) -> TensorDataset:
    generator = torch.Generator().manual_seed(seed)
    return TensorDataset(torch.randn(count, 3, 32, 32, generator=generator),
                         torch.randint(classes, (count,), generator=generator))


def quick_config(**overrides) -> NViTConfig:
    fields = {"target_flops": 0.6, "prune_step": 0.2, "calib_batches": 1, "batch_size": 16, "finetune_steps": 2,
              "final_finetune_steps": 2}
    return NViTConfig(**{**fields, **overrides})


# --- compaction ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("distilled", [False, True])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_compacted_model_computes_what_the_masked_model_computes(distilled, seed):
    model = tiny_model(tiny_spec(distilled=distilled, embed_dim=48))
    keep = random_keep(model, seed)
    compacted = compact(model, keep)
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(seed))
    assert compaction_error(model, keep, compacted, x) <= 1e-5
    # the masks really remove something, so an identity "compaction" cannot pass
    with torch.no_grad():
        assert (compacted(x) - model(x)).abs().max() > 1e-3
    assert compacted.spec.embed_dim == int(keep["emb"].sum()) < model.spec.embed_dim


def test_compaction_gives_per_block_dims_and_keeps_the_attention_scale():
    model = tiny_model()
    keep = random_keep(model, seed=3)
    spec = compact(model, keep).spec
    for i, (old, new) in enumerate(zip(model.spec.blocks, spec.blocks)):
        assert (new.heads, new.qk_dim, new.v_dim, new.mlp_dim) == tuple(
            int(keep[dim_key(i, kind)].sum()) for kind in ("heads", "qk", "v", "mlp"))
        assert new.attn_scale == old.scale
    assert spec.sparsity is None


def test_compaction_keeping_everything_is_exact():
    model = tiny_model()
    keep = {dim: torch.ones(len(s), dtype=torch.bool) for dim, s in magnitude_importance(model).items()}
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(compact(model, keep)(x), model(x))


def test_compacted_model_exports_with_audit_and_parity(tmp_path):
    compacted = compact(tiny_model(), random_keep(tiny_model(), seed=4))
    report = export_onnx(compacted, tmp_path / "model.onnx")
    assert report.audit.passed and report.parity.passed


# --- importance ---------------------------------------------------------------------------------------------

def gate_gradient(model, dim: str, channel: int, x, y) -> float:
    """∂L/∂g at g = 1 for a gate multiplying every weight that pruning (dim, channel) removes.

    The group's weights are found independently of ``group_sums``: they are the ones compaction
    drops when only this channel is pruned.
    """
    from vitdeploy.prune.methods.nvit.structural import kept_indices

    keep = {d: torch.ones(len(s), dtype=torch.bool) for d, s in magnitude_importance(model).items()}
    keep[dim][channel] = False
    selections = kept_indices(model.spec, keep)
    gate = torch.ones((), requires_grad=True)
    params = {}
    for name, param in model.named_parameters():
        inside = torch.ones_like(param, dtype=torch.bool)
        for axis, index in selections.get(name, {}).items():
            along = torch.zeros(param.shape[axis], dtype=torch.bool)
            along[index] = True
            inside &= along.reshape([-1 if a == axis else 1 for a in range(param.ndim)])
        params[name] = torch.where(inside, param.detach(), param.detach() * gate)
    loss = F.cross_entropy(functional_call(model, params, (x,)), y)
    return torch.autograd.grad(loss, gate)[0].item()


@pytest.mark.parametrize("dim, channel", [
    ("emb", 5), ("blocks.0.heads", 1), ("blocks.1.qk", 3), ("blocks.2.v", 7), ("blocks.3.mlp", 11),
])
def test_hessian_importance_is_the_squared_gate_gradient(dim, channel):
    model = tiny_model(tiny_spec(distilled=True))
    x, y = tiny_data(8).tensors
    scores = hessian_importance(model, [(x, y)], ce_loss)
    expected = gate_gradient(model, dim, channel, x, y) ** 2
    assert expected > 0
    assert scores[dim][channel].item() == pytest.approx(expected, rel=1e-3)


def test_a_zeroed_group_has_zero_importance():
    model = tiny_model()
    with torch.no_grad():
        mlp = model.blocks[1].mlp
        mlp.fc1.weight[7].zero_()
        mlp.fc1.bias[7] = 0
        mlp.fc2.weight[:, 7].zero_()
    calibration = [tiny_data(8).tensors]
    for criterion in ("hessian", "magnitude"):
        scores = group_importance(criterion, model, calibration, ce_loss)["blocks.1.mlp"]
        assert scores[7] == 0
        assert (scores[torch.arange(len(scores)) != 7] > 0).all()


def test_magnitude_importance_is_the_squared_l2_norm_of_the_group():
    model = tiny_model()
    mlp = model.blocks[2].mlp
    expected = torch.cat([mlp.fc1.weight[3], mlp.fc1.bias[3:4], mlp.fc2.weight[:, 3]]).square().sum()
    assert magnitude_importance(model)["blocks.2.mlp"][3].item() == pytest.approx(expected.item(), rel=1e-5)


# --- ranking --------------------------------------------------------------------------------------------------

def test_lowest_ranked_units_go_first_and_dims_stay_multiples():
    spec = tiny_model().spec
    scores = {dim: torch.ones(len(s)) for dim, s in magnitude_importance(tiny_model()).items()}
    scores["blocks.2.mlp"] = torch.linspace(0, 1e-3, len(scores["blocks.2.mlp"])).flip(0)
    goal = flops_cost(spec) - 1
    keep, removals = plan_removals(spec, scores, goal, flops_cost, flops_cost, eta=0.0, round_to=8)
    assert [r.dim for r in removals] == ["blocks.2.mlp"]
    assert keep["blocks.2.mlp"].sum() == spec.blocks[2].mlp_dim - 8
    assert not keep["blocks.2.mlp"][-8:].any()  # the 8 least important (flipped linspace: the last ones)


def test_latency_term_prefers_the_costliest_of_equally_important_units():
    spec = tiny_model().spec
    units = {dim: unit_size(dim, dim_size(spec, dim), 8) for dim in all_dims(spec)}
    scores = {dim: torch.full((dim_size(spec, dim),), 1.0 / units[dim]) for dim in units}  # equal per unit
    _, removals = plan_removals(spec, scores, flops_cost(spec) - 1, flops_cost, flops_cost, eta=1.0, round_to=8)
    savings = {dim: flops_cost(spec) - flops_cost(shrink(spec, dim, count)) for dim, count in units.items()}
    assert removals[0].dim == max(savings, key=savings.get)


def test_a_unit_that_would_overshoot_the_floor_is_passed_over():
    spec = tiny_model().spec
    scores = {dim: torch.ones(len(s)) for dim, s in magnitude_importance(tiny_model()).items()}
    scores["emb"] = torch.zeros(spec.embed_dim)  # by far the cheapest to remove, and the largest unit
    goal = flops_cost(spec) - 1
    _, free = plan_removals(spec, scores, goal, flops_cost, flops_cost, eta=0.0, round_to=8)
    _, bounded = plan_removals(spec, scores, goal, flops_cost, flops_cost, eta=0.0, round_to=8,
                               floor=flops_cost(spec) * 0.9)
    assert free[0].dim == "emb" and bounded[0].dim != "emb"


def test_lut_latency_shrinks_with_the_model():
    table = load_table(SHIPPED_TABLE)
    spec = get_spec("deit_tiny_patch16_224")  # inside the table's grid (fmnist_vit's embed 64 is not)
    latency = lut_latency(table)
    assert 0 < latency(shrink(spec, "blocks.0.mlp", 128)) < latency(spec)
    assert latency(shrink(spec, "emb", 32)) < latency(shrink(spec, "blocks.0.heads", 1)) < latency(spec)


# --- the loop and its inputs ----------------------------------------------------------------------------------

def test_prune_nvit_reaches_the_target_with_a_dense_model_and_a_full_report():
    model = tiny_model()
    original = {k: v.clone() for k, v in model.state_dict().items()}
    pruned, report = prune_nvit(model, quick_config(), tiny_data(), eval_data=tiny_data(32, seed=1), progress=False)
    assert total_macs(pruned.spec) <= 0.6 * total_macs(model.spec)
    assert report["macs"]["ratio"] <= 0.6 and report["params"]["after"] < report["params"]["before"]
    assert report["compaction_max_abs_diff"] <= 1e-5 and len(report["steps"]) >= 1
    dims = [pruned.spec.embed_dim] + [d for b in pruned.spec.blocks for d in (b.qk_dim, b.v_dim, b.mlp_dim)]
    assert all(d % 8 == 0 for d in dims)
    assert all(b.attn_scale == 16**-0.5 for b in pruned.spec.blocks)
    assert set(report["accuracy"]) == {"before", "pruned", "after"}
    assert all(torch.equal(v, original[k]) for k, v in model.state_dict().items())
    json.dumps(report)


def test_pruner_snapshots_at_several_levels_with_the_lut_term():
    pruner = NViTPruner(tiny_model(), quick_config(target_flops=0.5, finetune_steps=0), tiny_data(),
                        lut=load_table(SHIPPED_TABLE))
    ratios = [total_macs(pruner.prune_to(level).spec) / total_macs(pruner.teacher.spec) for level in (0.8, 0.5)]
    assert ratios[0] <= 0.8 and ratios[1] <= 0.5
    assert "predicted_latency_ms" in pruner.report()


@pytest.mark.parametrize("overrides, message", [
    ({"target_flops": 1.5}, "target_flops: Input should be less than 1"),
    ({"target_flops": 0.0}, "target_flops: Input should be greater than 0"),
    ({"target_flops": float("nan")}, "target_flops: Input should be a finite number"),
    ({"target_flops": None}, "exactly one target"),
    ({"target_latency_ms": 2.0}, "exactly one target"),
    ({"target_flops": None, "target_latency_ms": -1.0}, "target_latency_ms: Input should be greater than 0"),
    ({"criterion": "random"}, "unknown criterion"),
    ({"prune_step": 0.0}, "prune_step: Input should be greater than 0"),
    ({"round_to": 0}, "round_to: Input should be greater than or equal to 1"),
    ({"eta": -1.0}, "eta: Input should be greater than or equal to 0"),
    ({"temperature": 0.0}, "temperature: Input should be greater than 0"),
    ({"finetune_steps": -1}, "finetune_steps: Input should be greater than or equal to 0"),
    ({"lr": 0.0}, "lr: Input should be greater than 0"),
])
def test_bad_configs_are_rejected(overrides, message):
    with pytest.raises(VitDeployError) as error:
        NViTConfig(**overrides).validate()
    assert message in str(error.value)


def test_an_unreachable_target_is_refused_before_any_work():
    with pytest.raises(VitDeployError, match="cannot be reached"):
        prune_nvit(tiny_model(), quick_config(target_flops=0.01, round_to=16), tiny_data(), progress=False)


def test_a_latency_target_needs_a_table():
    with pytest.raises(VitDeployError, match="--lut"):
        prune_nvit(tiny_model(), quick_config(target_flops=None, target_latency_ms=1.0), tiny_data(), progress=False)


@pytest.mark.parametrize("error", [float("nan"), float("inf")])
def test_non_finite_outputs_during_pruning_are_a_user_error_not_a_pass(error):
    from vitdeploy.prune.methods.nvit.structural import require_exact_compaction

    with pytest.raises(VitDeployError, match="NaN or infinite"):
        require_exact_compaction(error)


def test_compaction_that_changes_outputs_is_a_bug():
    from vitdeploy.prune.methods.nvit.structural import COMPACTION_TOLERANCE, require_exact_compaction

    require_exact_compaction(COMPACTION_TOLERANCE / 2)
    with pytest.raises(RuntimeError, match="compaction changed the outputs"):
        require_exact_compaction(COMPACTION_TOLERANCE * 2)
