"""SPViT soft token pruning: static selection, training-time masking, keep targets, config,
export, and resuming an interrupted run."""

import copy
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, TensorDataset

from tests.conftest import tiny_model
from vitdeploy.errors import VitDeployError
from vitdeploy.export.config import ExportConfig
from vitdeploy.export.onnx import export_onnx
from vitdeploy.models.checkpoint import load_artifact
from vitdeploy.models.flops import total_macs
from vitdeploy.models.spec import TokenStep
from vitdeploy.prune.methods.spvit import algorithm as spvit
from vitdeploy.prune.methods.spvit.config import FLAT_SCORES, SPViTConfig, parse_selectors
from vitdeploy.prune.methods.spvit import summary as spvit_summary
from vitdeploy.schema import flag_name, validated
from vitdeploy.tokens import select

N = 16  # patch tokens of the tiny model


def images(n=6, seed=0):
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def spvit_model(plan, seed=0):
    """The tiny model with SPViT steps {block: keep}, selectors with moderate random weights
    (saturated ones give exact ties in T, whose top-k order is arbitrary)."""
    model = tiny_model()
    steps = {b: TokenStep(keep=k, selector="spvit", **kw) for b, (k, kw) in plan.items()}
    model = spvit.student_from(model, model.spec.with_token_plan(steps), seed)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".selector." in name:
                p.copy_(torch.randn(p.shape, generator=generator) * 0.3)
    return model.eval()


def manual_keep_prob(selector, x):
    """The issue's formulas, head by head, from the selector's weights."""
    local, score, heads = selector.local, selector.score, selector.head_weights
    d = x.shape[-1] // selector.heads
    t, a_in = [], []
    for i in range(selector.heads):
        xi = x[..., i * d:(i + 1) * d]
        f_local = F.gelu(local[1](F.layer_norm(xi, (d,), local[0].weight, local[0].bias, local[0].eps)))
        f_global = f_local.mean(dim=1, keepdim=True).expand_as(f_local)
        h = F.gelu(score[0](torch.cat([f_local, f_global], dim=-1)))
        t.append(torch.softmax(score[4](F.gelu(score[2](h))), dim=-1)[..., 0])
        a_in.append(xi.mean(dim=-1))
    a = torch.sigmoid(heads[2](F.gelu(heads[0](torch.stack(a_in, dim=-1)))))
    return (torch.stack(t, dim=-1) * a).sum(-1) / a.sum(-1)


def test_static_step_is_topk_of_manual_scores_plus_package():
    model = spvit_model({1: (6, {"package": True})})
    x = images()
    tokens = model.embed(x)
    tokens = model.blocks[0](tokens)[0]
    block = model.blocks[1]
    tokens = tokens + block.attn(block.norm1(tokens))[0]
    tokens = tokens + block.mlp(block.norm2(tokens))
    patches = tokens[:, 1:]
    keep_prob = manual_keep_prob(block.selector, patches)
    torch.testing.assert_close(block.selector(patches), keep_prob)
    top = keep_prob.topk(6, dim=1).indices
    kept = torch.gather(patches, 1, top[..., None].expand(-1, -1, patches.shape[-1]))
    dropped = torch.ones_like(keep_prob).scatter(1, top, 0.0)
    weights = keep_prob * dropped
    package = (weights[..., None] * patches).sum(1, keepdim=True) / weights.sum(1, keepdim=True)[..., None]
    expected = torch.cat([tokens[:, :1], kept, package], dim=1)
    for later in model.blocks[2:]:
        expected = later(expected)[0]
    torch.testing.assert_close(model(x), model.classify(model.norm(expected)))


@pytest.mark.parametrize("keep_bias", [25.0, -25.0])
def test_keep_logit_ranks_saturated_tokens_without_ties(keep_bias):
    """Heads all but sure to keep (or drop): float32 T rounds to exact ties, the logit does not,
    and it matches float64's log T − log(1 − T)."""
    selector = spvit_model({1: (6, {})}).blocks[1].selector
    with torch.no_grad():
        selector.score[4].bias.copy_(torch.tensor([keep_bias, 0.0]))
    x = torch.randn(4, N, 32, generator=torch.Generator().manual_seed(1))
    exact_t = manual_keep_prob(copy.deepcopy(selector).double(), x.double())
    exact = exact_t.log() - (1.0 - exact_t).log()
    logit = selector.keep_logit(x)
    if keep_bias > 0:
        assert (selector(x) == 1.0).all()  # what ranking by T would face
    torch.testing.assert_close(logit.double(), exact, rtol=1e-4, atol=1e-3)
    assert all(len(row.unique()) == N for row in logit)
    assert torch.equal(logit.topk(6).indices, exact.topk(6).indices)


def test_score_spreads_flag_a_selector_that_scores_all_tokens_alike():
    model = spvit_model({0: (10, {}), 2: (5, {})})
    with torch.no_grad():
        model.blocks[0].selector.score[4].weight.zero_()  # every token gets the bias: the same T
    data = TensorDataset(images(8), torch.zeros(8, dtype=torch.long))
    flat, varied = spvit.score_spreads(model, data)
    assert flat < 1e-6 and varied > FLAT_SCORES
    phases = [{"after_block": 1, "score_spread": flat}, {"after_block": 3, "score_spread": varied}]
    report = {"method": "spvit", "patch_tokens_entering": [16, 10, 10, 5], "keep": [10, None, 5, None],
              "flops_ratio": 0.6, "macs": 6e6, "baseline_macs": 1e7, "top1": 0.5, "best_epoch": 1,
              "teacher_top1": 0.6, "phases": phases}
    warnings = [line for line in spvit_summary(report, "out").splitlines() if line.startswith("warning")]
    assert len(warnings) == 1 and "after block 1 " in warnings[0]


def fixed_decisions(masks):
    """A ``Decide`` returning the given masks in turn."""
    calls = iter(masks)

    def decide(keep_prob, alive):
        return next(calls)

    return decide


def test_decisions_multiply_across_selectors():
    model = spvit_model({0: (10, {}), 2: (5, {})})
    generator = torch.Generator().manual_seed(3)
    first, second = (torch.rand(6, N, generator=generator) > 0.4).float(), (torch.rand(6, N, generator=generator) > 0.4).float()
    out = spvit.soft_forward(model, images(), fixed_decisions([first, second]))
    torch.testing.assert_close(out.decision, first * second)
    torch.testing.assert_close(out.keep_fractions[0], first.mean(1))
    torch.testing.assert_close(out.keep_fractions[1], (first * second).mean(1))


def test_gumbel_decisions_are_hard_keep_with_probability_t_and_pass_gradients():
    keep_prob = torch.tensor([[0.05, 0.3, 0.7, 0.95]]).expand(20000, -1).clone().requires_grad_(True)
    decide = spvit.gumbel_decisions(1.0, torch.Generator().manual_seed(0))
    decisions = decide(keep_prob, torch.ones_like(keep_prob))
    assert set(decisions.detach().unique().tolist()) <= {0.0, 1.0}
    torch.testing.assert_close(decisions.detach().mean(0), keep_prob[0].detach(), atol=0.015, rtol=0)
    decisions.sum().backward()
    assert keep_prob.grad.abs().sum() > 0


def test_masked_softmax_ignores_dropped_keys_and_matches_softmax_over_kept():
    logits = torch.randn(2, 3, 5, 5)
    policy = torch.tensor([[1.0, 0.0, 1.0, 1.0, 0.0], [1.0, 1.0, 1.0, 1.0, 1.0]])
    probs = spvit.masked_softmax(logits, policy)
    kept = [0, 2, 3]
    expected = torch.softmax(logits[0][:, kept][:, :, kept], dim=-1)
    torch.testing.assert_close(probs[0][:, kept][:, :, kept], expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(probs[1], torch.softmax(logits[1], dim=-1), atol=1e-5, rtol=0)


@pytest.mark.parametrize("package", [{}, {"package": True}, {"package": True, "package_mode": "add"},
                                     {"package": True, "selector_heads": 1}])
def test_masked_training_forward_equals_gathered_inference_for_the_topk_decisions(package):
    """With hard decisions equal to each step's top-k set, masking equals gathering exactly."""
    plan = {0: (11, package), 1: (7, package), 2: (3, package)}
    model = spvit_model(plan, seed=1)
    keeps = iter([11, 7, 3])

    def topk_of_alive(keep_prob, alive):
        return select.token_selection(keep_prob.masked_fill(alive == 0, -1.0), next(keeps))[1]

    x = images(8)
    soft = spvit.soft_forward(model, x, topk_of_alive)
    torch.testing.assert_close(soft.logits, model(x), atol=2e-5, rtol=1e-4)
    assert soft.decision.sum(1).tolist() == [3.0] * 8


def test_keep_targets_meet_the_flops_budget():
    model = tiny_model()
    for budget in (0.9, 0.7, 0.55):
        spec, targets = spvit.static_plan(model.spec, SPViTConfig(budget_flops=budget))
        ratio = total_macs(spec) / total_macs(model.spec)
        assert budget - 0.1 < ratio <= budget
        keeps = [b.tokens.keep for b in spec.blocks if b.tokens.active]
        assert targets == [k / N for k in keeps] and keeps == sorted(keeps, reverse=True)
        assert all(b.tokens.selector == "spvit" and b.tokens.package for b in spec.blocks if b.tokens.active)


def test_unreachable_budget_is_a_clear_error():
    with pytest.raises(VitDeployError, match="cannot be reached"):
        spvit.static_plan(tiny_model().spec, SPViTConfig(budget_flops=0.05))


@pytest.mark.parametrize("fields, message", [
    ({"budget_flops": 0.0}, "budget-flops"),
    ({"budget_flops": 1.5}, "budget-flops"),
    ({"selectors": (0, 2)}, "selectors"),
    ({"selectors": (2, 4)}, "selectors"),  # block 4 is the tiny model's last
    ({"selectors": (2, 2)}, "selectors"),
    ({"package_mode": "stack"}, "package-mode"),
    ({"epochs": 0}, "epochs"),
    ({"selector_heads": 0}, "selector-heads"),
    ({"lambda_ratio": -1.0}, "lambda-ratio"),
])
def test_config_validation(fields, message):
    with pytest.raises(VitDeployError, match=message):
        validated(SPViTConfig(**fields), flag_name).validate(depth=4)


def test_selector_parsing_and_defaults():
    assert parse_selectors("3, 6,9") == (3, 6, 9)
    with pytest.raises(VitDeployError, match="selectors"):
        parse_selectors("3,six")
    assert SPViTConfig().selector_blocks(12) == [2, 5, 8]  # after blocks 3, 6, 9
    assert SPViTConfig().selector_blocks(6) == [1, 2, 3]


@pytest.mark.parametrize("selection", ["topk", "rank"])
def test_static_spvit_model_exports_with_audit_and_parity(tmp_path, selection):
    model = spvit_model({0: (11, {"package": True}), 2: (5, {"package": True})}, seed=2)
    report = export_onnx(model, tmp_path / "spvit.onnx", ExportConfig(selection=selection))
    assert report.audit.passed and report.parity.max_abs_diff <= 1e-4


def random_data(n, seed):
    generator = torch.Generator().manual_seed(seed)
    return TensorDataset(torch.randn(n, 3, 32, 32, generator=generator), torch.randint(0, 5, (n,), generator=generator))


class Interrupted(Exception):
    pass


class InterruptAfter(Dataset):
    """Serves ``items`` items of ``data``, then raises as a killed process would stop."""

    def __init__(self, data, items):
        self.data, self.left = data, items

    def __len__(self):
        return len(self.data)

    def __getitem__(self, index):
        self.left -= 1
        if self.left < 0:
            raise Interrupted
        return self.data[index]


CONFIG = SPViTConfig(budget_flops=0.6, epochs=2, batch_size=16, threads=1)


def test_training_runs_and_returns_the_best_static_model(tmp_path):
    model = tiny_model()
    pruned, report = spvit.prune_spvit(model, CONFIG, random_data(48, 0), random_data(24, 1), tmp_path, progress=False)
    assert [r["epoch"] for r in report["history"]] == [1, 2]
    assert report["flops_ratio"] <= 0.6 and report["selectors"] == [1, 2, 3]
    best = load_artifact(tmp_path / spvit.BEST_DIR)
    x = images()
    torch.testing.assert_close(best(x), pruned(x))
    assert report["top1"] == max(r["top1"] for r in report["history"])


def test_an_interrupted_run_resumes_to_the_same_result(tmp_path):
    model, train, val = tiny_model(), random_data(48, 0), random_data(24, 1)
    straight, straight_report = spvit.prune_spvit(model, CONFIG, train, val, tmp_path / "a", progress=False)
    with pytest.raises(Interrupted):  # dies during epoch 2, after epoch 1 was checkpointed
        spvit.prune_spvit(model, CONFIG, InterruptAfter(train, 48 + 20), val, tmp_path / "b", progress=False)
    after_one = load_artifact(tmp_path / "b" / spvit.BEST_DIR)
    assert after_one.spec == straight.spec
    resumed, report = spvit.prune_spvit(model, CONFIG, train, val, tmp_path / "b", progress=False)
    assert report["resumed_from_epoch"] == 1
    assert _without_seconds(report) == _without_seconds(straight_report)
    for key, value in straight.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[key], value, atol=0, rtol=0)


def _without_seconds(report):
    return [{k: v for k, v in r.items() if k != "seconds"} for r in report["history"]]


def test_extending_a_finished_run_keeps_its_history_and_best_model(tmp_path):
    model, train, val = tiny_model(), random_data(48, 0), random_data(24, 1)
    one = SPViTConfig(budget_flops=0.6, epochs=1, batch_size=16, threads=1)
    _, first = spvit.prune_spvit(model, one, train, val, tmp_path, progress=False)
    _, second = spvit.prune_spvit(model, replace(one, epochs=2), train, val, tmp_path,
                                  progress=False)
    assert second["resumed_from_epoch"] == 1 and len(second["history"]) == 2
    assert second["history"][0] == first["history"][0]
    assert second["top1"] >= first["top1"]


def test_a_checkpoint_of_other_settings_is_not_resumed(tmp_path):
    model, train, val = tiny_model(), random_data(32, 0), random_data(16, 1)
    one = SPViTConfig(budget_flops=0.6, epochs=1, batch_size=16, threads=1)
    spvit.prune_spvit(model, one, train, val, tmp_path, progress=False)
    with pytest.raises(VitDeployError, match="different SPViT run"):
        spvit.prune_spvit(model, replace(one, budget_flops=0.5), train, val, tmp_path,
                          progress=False)


def test_gradients_reach_the_selectors_through_masks_and_package():
    model = spvit_model({0: (10, {"package": True}), 2: (5, {"package": True})})
    model.train()
    out = spvit.soft_forward(model, images(), spvit.gumbel_decisions(1.0, torch.Generator().manual_seed(0)))
    out.logits.square().mean().backward()
    grads = [p.grad for n, p in model.named_parameters() if ".selector." in n]
    assert all(g is not None for g in grads) and sum(g.abs().sum() for g in grads) > 0
    assert torch.isfinite(out.logits).all()


def test_gradients_stay_bounded_when_a_dropped_key_dominates_or_a_step_drops_nothing():
    logits = torch.zeros(1, 1, 4, 4)
    logits[..., 3] = 60.0  # a dropped key far above every kept one
    policy = torch.tensor([[1.0, 1.0, 1.0, 0.0]], requires_grad=True)
    spvit.masked_softmax(logits, policy)[..., 0].sum().backward()
    assert torch.isfinite(policy.grad).all() and policy.grad.abs().max() < 10
    patches = torch.randn(2, 5, 8)
    weights = torch.zeros(2, 5, requires_grad=True)  # nothing dropped
    spvit.soft_package(patches, weights).sum().backward()
    assert weights.grad.abs().max() <= patches.sum(-1).abs().max() / spvit.PACKAGE_FLOOR + 1e-3
