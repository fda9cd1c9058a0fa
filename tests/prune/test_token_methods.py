"""Static token plans: STAR and a-STAR selectors in the model, Patch Slimming, baselines, CLI."""

import json
import math
from pathlib import Path

import pytest
import torch

from tests.conftest import run_cli, tiny_model, tiny_spec
from tests.lut.synthetic import table_for_this_machine
from vitdeploy.errors import VitDeployError
from vitdeploy.export.config import ExportConfig
from vitdeploy.export.onnx import export_onnx
from vitdeploy.lut.table import predict, save_table
from vitdeploy.models.checkpoint import save_artifact
from vitdeploy.models.flops import total_macs
from vitdeploy.models.spec import TokenStep
from vitdeploy.prune.methods.patch_slimming import algorithm as patch_slimming
from vitdeploy.prune.methods.star import algorithm as star
from vitdeploy.prune.calibrate import run_blocks, trace
from vitdeploy.prune.methods.baselines.config import BaselineConfig
from vitdeploy.prune.token_config import token_config
from vitdeploy.prune.costs import flops_target
from vitdeploy.prune.token_methods import prune_tokens, solve_knob
from vitdeploy.schema import flag_name, parse, validated
from vitdeploy.tokens import select
from vitdeploy.models.token_plan import with_spec

FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
N = 16  # patch tokens of the tiny model


def star_step(keep, alpha, scores, rate=None):
    return TokenStep(keep=keep, selector="star", alpha=alpha, inter_scores=list(scores), adaptive_rate=rate)


def images(n=6, seed=0):
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def test_star_with_alpha_one_selects_like_class_attention(tiny):
    x = images()
    star_model = with_spec(tiny, tiny.spec.with_token_plan({1: star_step(9, 1.0, [1.0] * N)}))
    cls_model = with_spec(tiny, tiny.spec.with_token_plan({1: TokenStep(keep=9, selector="cls_attn")}))
    torch.testing.assert_close(star_model(x), cls_model(x))


def test_star_with_alpha_zero_follows_original_positions_through_an_earlier_step(tiny):
    """Inter scores favour high original positions; after a fixed step that reorders tokens, the
    STAR step must still pick by original position, as a fixed plan of those positions does."""
    scores = [float(p + 1) for p in range(N)]
    first = list(range(N - 1, 1, -1))  # keeps 14 tokens, in reverse order
    plan = {0: TokenStep(keep=14, selector="fixed", positions=first), 2: star_step(5, 0.0, scores)}
    star_model = with_spec(tiny, tiny.spec.with_token_plan(plan))
    top_original = [15, 14, 13, 12, 11]  # entering-relative indices of these are 0..4
    fixed = {0: plan[0], 2: TokenStep(keep=5, selector="fixed", positions=[first.index(p) for p in top_original])}
    fixed_model = with_spec(tiny, tiny.spec.with_token_plan(fixed))
    x = images()
    torch.testing.assert_close(star_model(x), fixed_model(x))


@pytest.mark.parametrize("fields, message", [
    (dict(alpha=1.5, inter_scores=[1.0] * N), "alpha"),
    (dict(alpha=0.1, inter_scores=[1.0] * 3), "inter_scores"),
    (dict(alpha=0.1, inter_scores=[0.0] * N), "inter_scores"),
    (dict(alpha=0.1, inter_scores=[1.0] * N, adaptive_rate=0.0), "adaptive_rate"),
])
def test_star_step_validation(fields, message):
    with pytest.raises(VitDeployError, match=message):
        tiny_spec().with_token_plan({1: TokenStep(keep=8, selector="star", **fields)})


def test_star_fields_on_another_selector_are_refused():
    with pytest.raises(VitDeployError, match="belong to the star selector"):
        tiny_spec().with_token_plan({1: TokenStep(keep=8, selector="cls_attn", alpha=0.5)})


@pytest.mark.parametrize("selection", ["topk", "rank"])
def test_star_plan_exports_with_audit_and_parity(tiny, tmp_path, selection):
    scores = torch.rand(N, generator=torch.Generator().manual_seed(1)).add(0.1).tolist()
    spec = tiny.spec.with_token_plan({0: star_step(12, 0.15, scores), 2: star_step(6, 0.15, scores)})
    report = export_onnx(with_spec(tiny, spec), tmp_path / "star.onnx", ExportConfig(selection=selection))
    assert report.audit.passed and report.parity.passed and report.parity.max_abs_diff <= 1e-4
    assert ("TopK" in report.audit.op_counts) == (selection == "topk")


def test_adaptive_keep_mask_keeps_the_fewest_tokens_reaching_the_rate():
    scores = torch.tensor([[0.1, 0.5, 0.3, 0.1], [0.25, 0.25, 0.25, 0.25]])
    alive = torch.tensor([[1.0, 1, 1, 1], [1, 1, 1, 0]])
    mask = select.adaptive_keep_mask(scores, alive, 0.75)
    # row 0: 0.5 + 0.3 = 0.8 ≥ 0.75 → two tokens; row 1: three alive tokens of 1/3 → all three
    assert mask.tolist() == [[0, 1, 1, 0], [1, 1, 1, 0]]


def test_adaptive_star_at_rate_one_keeps_everything(tiny):
    spec = tiny.spec.with_token_plan({1: star_step(8, 0.15, [1.0] * N, rate=1.0)})
    model = with_spec(tiny, spec)
    x = images()
    _, counts = model.forward_adaptive(x)
    assert counts[:, 2].eq(N).all()
    torch.testing.assert_close(model(x), tiny(x))


def test_adaptive_star_export_is_refused_and_offers_the_static_plan(tiny, tmp_path):
    spec = tiny.spec.with_token_plan({1: star_step(8, 0.15, [1.0] * N, rate=0.5)})
    with pytest.raises(VitDeployError, match="--as-static-star"):
        export_onnx(with_spec(tiny, spec), tmp_path / "a.onnx")
    assert not (tmp_path / "a.onnx").exists()
    static = spec.static_counterpart()
    assert not static.adaptive and static.blocks[1].tokens.keep == 8


def test_average_cosine_similarity():
    same = torch.ones(1, 4, 3)
    orthogonal = torch.eye(3).unsqueeze(0)
    assert star.average_cosine_similarity(same).item() == pytest.approx(1.0)
    assert star.average_cosine_similarity(orthogonal).item() == pytest.approx(0.0)


def test_keep_rates_run_from_one_to_rho_and_grow_with_rho():
    acs = [0.2, 0.3, 0.5, 0.6]
    rates = star.keep_rates(acs, 0.4)
    assert rates[0] == pytest.approx(1.0) and rates[-1] == pytest.approx(0.4)
    assert all(a > b for a, b in zip(rates, rates[1:]))
    assert all(hi >= lo - 1e-12 for hi, lo in zip(star.keep_rates(acs, 0.6), rates))
    with pytest.raises(VitDeployError, match="ρ"):
        star.keep_rates(acs, 1.2)
    with pytest.raises(VitDeployError, match="ACS"):
        star.keep_rates([0.5, 0.4, 0.3], 0.5)


def test_inter_layer_scores_are_a_pmf_per_block(tiny):
    scores = star.inter_layer_scores(tiny, images(8), gamma=2, rounds=2, batch_size=4, progress=False)
    assert len(scores) == tiny.spec.depth and all(len(s) == N for s in scores)
    assert all(math.isclose(sum(s), 1.0, rel_tol=1e-3) and min(s) > 0 for s in scores)


def test_star_spec_counts_follow_ceil_of_rate_times_tokens(tiny):
    """Layer l's rate applies to the tokens entering block l, by a step at the end of block l − 1."""
    inter = [[float(layer + 1)] * N for layer in range(4)]
    stats = star.StarStatistics(acs=[0.1, 0.2, 0.3, 0.4], inter_scores=inter)
    spec = star.star_spec(tiny.spec, stats, rho=0.25)
    rates = star.keep_rates(stats.acs, 0.25)
    expected, n = [], N
    for rate in rates[1:]:
        n = math.ceil(rate * n)
        expected.append(n)
    assert [b.tokens.keep for b in spec.blocks] == [*expected, None]
    assert [b.tokens.inter_scores[0] for b in spec.blocks[:3]] == [2.0, 3.0, 4.0]


def test_trace_matches_the_fused_model(tiny):
    x = images()
    t = trace(tiny, x)
    torch.testing.assert_close(t.logits, tiny(x))
    assert t.attention[0].shape == (6, 2, N + 1, N + 1)
    torch.testing.assert_close(t.attention[0].sum(-1), torch.ones(6, 2, N + 1))


def test_run_blocks_simulates_the_fixed_plan_model(tiny):
    keep = {1: torch.tensor([0, 3, 4, 9, 10, 15]), 2: torch.tensor([3, 9, 15])}
    plan = patch_slimming.slimming_spec(tiny.spec, {1: keep[1].tolist(), 2: keep[2].tolist()})
    x = images()
    expected = with_spec(tiny, plan).forward_features(x)
    got = run_blocks(tiny, tiny.embed(x), 0, keep)
    torch.testing.assert_close(got[:, 0], expected[:, 0])


def test_patch_slimming_plans_are_nested_and_meet_epsilon(tiny):
    calib = patch_slimming.SlimmingCalibration(tiny, images(8))
    loose = patch_slimming.slimming_plan(calib, 0.5, progress=False)
    tight = patch_slimming.slimming_plan(calib, 1e-3, progress=False)
    for plan in (loose, tight):
        blocks = sorted(plan)
        assert all(set(plan[b + 1]) <= set(plan[b]) for b in blocks[:-1])
    assert sum(map(len, loose.values())) <= sum(map(len, tight.values()))
    start = min(tight)
    assert calib.error(start, {b: torch.tensor(p) for b, p in tight.items()}) <= 1e-3
    spec = patch_slimming.slimming_spec(tiny.spec, loose)
    assert all(b.tokens.selector in ("none", "fixed") for b in spec.blocks)


def test_patch_slimming_significance_matches_the_dense_formula(tiny):
    """Eq. 6 from the full matrices A_t (diag(m) products) against the row-vector shortcut."""
    calib = patch_slimming.SlimmingCalibration(tiny, images(3))
    t = 1
    masks = {3: torch.tensor([1.0] + [0.0] * N), 2: (torch.rand(N + 1) > 0.5).float()}
    masks[2][0] = 1
    expected = torch.zeros(N + 1)
    for b in range(3):
        for h in range(2):
            a = torch.diag(masks[3]) @ calib.attention[3][b, h]
            a = a @ torch.diag(masks[2]) @ calib.attention[2][b, h]
            u = calib.attention[t][b, h] @ calib.inputs[t][b].abs()
            expected += torch.stack([(torch.outer(a[:, i], u[i]) ** 2).sum() for i in range(N + 1)])
    got = calib.significance(t, masks)
    torch.testing.assert_close(got, expected[1:] / 3)


def test_fixed_plan_exports_without_topk(tiny, tmp_path):
    spec = patch_slimming.slimming_spec(tiny.spec, {0: list(range(0, 16, 2)), 1: [0, 4, 8]})
    report = export_onnx(with_spec(tiny, spec), tmp_path / "ps.onnx")
    assert "TopK" not in report.audit.op_counts and report.parity.max_abs_diff <= 1e-4


@pytest.mark.parametrize("method", ["uniform", "cls-attn", "random", "star", "patch-slimming"])
def test_target_flops_is_met_from_below(tiny, method):
    quick_star = dict(rounds=1, calib_batch=4, gamma=2) if method == "star" else {}
    config = token_config(method, target_flops=0.7, **quick_star)
    pruned, report = prune_tokens(tiny, config, images(8), progress=False)
    assert report["flops_ratio"] <= 0.7 and report["flops_ratio"] == total_macs(pruned.spec) / total_macs(tiny.spec)
    assert report["flops_ratio"] > 0.5


def test_unreachable_flops_target_is_a_user_error(tiny):
    spec = tiny.spec

    def make(rate):
        return spec.with_token_plan({2: TokenStep(keep=max(1, round(rate * N)), selector="cls_attn")})

    with pytest.raises(VitDeployError, match="--target-flops 0.2 cannot be reached"):
        solve_knob(make, flops_target(0.2, spec), (0.01, 0.99), "rate")


@pytest.mark.parametrize("method", ["uniform", "star"])
def test_latency_target_gives_the_slowest_plan_predicted_under_it(tiny, tmp_path, method):
    table = table_for_this_machine(tiny.spec)
    save_table(table, tmp_path / "t.json")
    unpruned = predict(table, tiny.spec)["total_ms"]
    target = 0.8 * unpruned
    config = token_config(method, target_latency_ms=target, lut=str(tmp_path / "t.json"))
    pruned, _ = prune_tokens(tiny, config, images(8), progress=False)
    predicted = predict(table, pruned.spec)["total_ms"]
    assert predicted <= target * (1 + 1e-3) and predicted > 0.6 * unpruned


def test_latency_target_with_a_table_of_another_geometry_names_the_build_command(tiny, tmp_path):
    save_table(table_for_this_machine(tiny_spec(img_size=64)), tmp_path / "t.json")
    config = token_config("uniform", target_latency_ms=1.0, lut=str(tmp_path / "t.json"))
    with pytest.raises(VitDeployError, match="lut build --for tiny"):
        prune_tokens(tiny, config, None, progress=False)


@pytest.mark.parametrize("fields, message", [
    (dict(method="star", rho=0.0), "--rho"),
    (dict(method="star", rho=1.5), "--rho"),
    (dict(method="star"), "exactly one"),
    (dict(method="uniform", rate=0.5, target_flops=0.5), "exactly one"),
    (dict(method="uniform", target_flops=1.2), "--target-flops"),
    (dict(method="uniform", rate=0.5, package=True), "--package"),
    (dict(method="magic", rate=0.5), "unknown pruning method 'magic'"),
    (dict(method="uniform", target_latency_ms=5.0), "go together"),
    (dict(method="uniform", target_latency_ms=5.0, target_flops=0.5, lut="t.json"), "exactly one"),
    (dict(method="uniform", target_latency_ms=-1.0, lut="t.json"), "--target-latency-ms: Input should be greater"),
])
def test_config_validation(fields, message):
    with pytest.raises(VitDeployError, match=message):
        validated(token_config(**fields), flag_name)


def test_a_cross_field_message_names_the_flag_on_the_command_line_and_the_key_elsewhere():
    config = token_config("uniform", target_latency_ms=5.0)
    with pytest.raises(VitDeployError, match="^--target-latency-ms and --lut go together"):
        validated(config, flag_name)
    with pytest.raises(VitDeployError, match="^target_latency_ms and lut go together"):
        config.validate()
    with pytest.raises(VitDeployError, match="^recipe r.json: target_latency_ms and lut go together"):
        parse(BaselineConfig, {"method": "uniform", "target_latency_ms": 5.0}, "recipe r.json")


def test_a_library_caller_reads_the_field_name():
    with pytest.raises(VitDeployError, match="^rho: Input should be less than or equal to 1"):
        token_config("star", rho=1.5).validate()


def test_calibrated_methods_need_data(tiny):
    with pytest.raises(VitDeployError, match="--calib"):
        prune_tokens(tiny, token_config("star", rho=0.5), None, progress=False)


def test_a_model_with_a_plan_is_refused(tiny):
    planned = with_spec(tiny, tiny.spec.with_token_plan({1: TokenStep(keep=8, selector="cls_attn")}))
    with pytest.raises(VitDeployError, match="without a token plan"):
        prune_tokens(planned, token_config("uniform", rate=0.5), None, progress=False)


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    path = tmp_path_factory.mktemp("models") / "tiny"
    save_artifact(tiny_model(), path)
    return path


def test_cli_prune_writes_artifact_and_report(artifact, tmp_path):
    out = tmp_path / "pruned"
    result = run_cli("prune", "cls-attn", artifact, "--rate", "0.5", "--package", "--out", out, "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads((out / "prune.json").read_text())
    assert report == json.loads(result.stdout)
    spec = json.loads((out / "spec.json").read_text())
    assert [b["tokens"]["keep"] for b in spec["blocks"]] == report["keep"]
    assert any(b["tokens"]["package"] for b in spec["blocks"])


@pytest.mark.parametrize("args, message", [
    (["star", "--rho", "1.5"], "--rho"),
    (["uniform", "--keep", "2:40"], "keep=40"),
    (["star", "--rho", "0.5"], "--calib"),
])
def test_cli_prune_user_errors_exit_2(artifact, tmp_path, args, message):
    out = tmp_path / "pruned"
    result = run_cli("prune", args[0], artifact, *args[1:], "--out", out)
    assert result.returncode == 2 and message in result.stderr, result.stderr
    assert "Traceback" not in result.stderr and not out.exists()


@pytest.mark.skipif(not FASHION_MNIST.is_dir(), reason="apt-get install dataset-fashion-mnist")
def test_cli_prune_calibration_data_of_the_wrong_size_exits_2(artifact, tmp_path):
    result = run_cli("prune", "star", artifact, "--rho", "0.5", "--calib", "fashion-mnist",
                     "--out", tmp_path / "p")
    assert result.returncode == 2 and "--resize" in result.stderr, result.stderr


def test_cli_export_of_a_star_model_and_its_static_counterpart(tiny, tmp_path):
    spec = tiny.spec.with_token_plan({1: star_step(8, 0.15, [1.0] * N, rate=0.5)})
    save_artifact(with_spec(tiny, spec), tmp_path / "astar")
    refused = run_cli("export", tmp_path / "astar", "--out", tmp_path / "a.onnx")
    assert refused.returncode == 2 and "--as-static-star" in refused.stderr
    static = run_cli("export", tmp_path / "astar", "--as-static-star", "--out", tmp_path / "s.onnx", "--json")
    assert static.returncode == 0, static.stderr
    exported = json.loads(static.stdout)["spec"]["blocks"][1]["tokens"]
    assert exported["adaptive_rate"] is None and exported["keep"] == 8


def test_eval_of_an_a_star_model_through_onnx_is_a_user_error(tiny):
    from vitdeploy.evaluate import EvalOptions, evaluate_model

    spec = tiny.spec.with_token_plan({1: star_step(8, 0.15, [1.0] * N, rate=0.5)})
    with pytest.raises(VitDeployError, match="--no-onnx"):
        evaluate_model(with_spec(tiny, spec), EvalOptions(data="fashion-mnist"))


def test_low_uniform_rates_stop_adding_steps_at_one_token(tiny):
    _, report = prune_tokens(tiny, token_config("uniform", rate=0.01), None, progress=False)
    assert report["keep"] == [1, None, None, None]
