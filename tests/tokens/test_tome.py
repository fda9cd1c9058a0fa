"""Token merging (ToMe) against a direct, loop-based bipartite soft matching written here, token by
token; r = 0 bit-exact; the counts that FLOPs and latency tables read; export without sorting."""

from __future__ import annotations

import math

import onnx
import pytest
import torch
import torch.nn.functional as F

from tests.conftest import tiny_model, tiny_spec
from vitdeploy.errors import VitDeployError
from vitdeploy.export.config import ExportConfig
from vitdeploy.export.onnx import export_onnx
from vitdeploy.models.flops import block_macs, total_macs
from vitdeploy.models.spec import TokenStep, uniform_blocks
from vitdeploy.models.token_plan import with_spec
from vitdeploy.prune.methods.tome.config import ToMeConfig
from vitdeploy.prune.methods.tome.schedule import tome_spec
from vitdeploy.prune.token_methods import prune_tokens
from vitdeploy.tokens.merge import merge_tokens


def loop_merge(x, keys, sizes, r, num_prefix):
    """Bipartite soft matching as the paper states it, one image and one token at a time.

    Returns, per image, the output tokens as (members, size, value): ``members`` the input indices
    each output token stands for."""
    images = []
    for b in range(x.shape[0]):
        patches = list(range(num_prefix, x.shape[1]))
        set_a, set_b = patches[0::2], patches[1::2]
        edges = {}
        for i in set_a:
            similarities = [F.cosine_similarity(keys[b, i], keys[b, j], dim=0, eps=0).item() for j in set_b]
            best = max(range(len(set_b)), key=lambda t: (similarities[t], -t))
            edges[i] = (similarities[best], set_b[best])
        merged = sorted(set_a, key=lambda i: -edges[i][0])[:r]
        members = {j: [j] for j in set_b}
        for i in merged:
            members[edges[i][1]].append(i)
        order = [*range(num_prefix), *(i for i in set_a if i not in merged), *set_b]
        tokens = []
        for t in order:
            group = sorted(members.get(t, [t]))
            size = sum(sizes[b, m].item() for m in group)
            value = sum(x[b, m] * sizes[b, m] for m in group) / size
            tokens.append((group, size, value))
        images.append(tokens)
    return images


@pytest.mark.parametrize("method", ["topk", "rank"])
@pytest.mark.parametrize("num_prefix", [1, 2])
@pytest.mark.parametrize("patches, r", [(15, 5), (16, 8)], ids=["some", "all-of-A"])
def test_merge_equals_the_loop_reference_token_by_token(method, num_prefix, patches, r):
    generator = torch.Generator().manual_seed(num_prefix)
    batch, n = 3, num_prefix + patches
    keys = torch.randn(batch, n, 6, generator=generator)
    sizes = torch.randint(1, 4, (batch, n), generator=generator).float()
    identity = torch.eye(n).expand(batch, n, n)  # token t's value is the t-th unit vector
    values = torch.randn(batch, n, 4, generator=generator)
    x = torch.cat([identity, values], dim=-1)

    tokens, new_sizes = merge_tokens(x, keys, sizes, r, num_prefix, method)

    reference = loop_merge(x, keys, sizes, r, num_prefix)
    assert tokens.shape == (batch, n - r, n + 4) and new_sizes.shape == (batch, n - r)
    for b, expected in enumerate(reference):
        for position, (group, size, value) in enumerate(expected):
            members = torch.nonzero(tokens[b, position, :n] > 1e-6).flatten().tolist()
            assert members == group, (b, position)
            assert new_sizes[b, position].item() == size
            torch.testing.assert_close(tokens[b, position], value, rtol=1e-5, atol=1e-6)


def test_merged_model_equals_a_reference_forward_with_proportional_attention():
    model = tiny_model()
    merging = with_spec(model, tome_spec(model.spec, [3, 2, 2]))
    images = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.allclose(merging(images), _reference_forward(merging, images), atol=1e-5)
        assert not torch.allclose(merging(images), model(images), atol=1e-3)


def _reference_forward(model, images):
    """The model's own layers, with attention written out (logits + log size) and ``loop_merge``."""
    x = model.embed(images)
    sizes = torch.ones(x.shape[:2])
    for block in model.blocks:
        q, k, v = block.attn.project_qkv(block.norm1(x))
        logits = (q @ k.transpose(-2, -1)) * block.attn.scale + sizes.log()[:, None, None, :]
        x = x + block.attn._merge_heads(torch.softmax(logits, dim=-1) @ v)
        if block.step.active:
            r = block.patch_tokens_in - block.step.keep
            merged = loop_merge(x, k.mean(dim=1), sizes, r, model.spec.num_prefix_tokens)
            x = torch.stack([torch.stack([value for _, _, value in image]) for image in merged])
            sizes = torch.tensor([[size for _, size, _ in image] for image in merged])
        x = x + block.mlp(block.norm2(x))
    return model.classify(model.norm(x))


def test_r_zero_is_the_unmerged_model_bit_exactly(tiny):
    pruned, report = prune_tokens(tiny, ToMeConfig(r=0), None)
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(pruned(images), tiny(images))
    assert report["r_per_block"] == [0, 0, 0] and report["flops_ratio"] == 1


def test_a_flops_target_is_met_by_the_smallest_r_under_it(tiny):
    pruned, report = prune_tokens(tiny, ToMeConfig(target_flops=0.8), None)
    r = report["r_per_block"][0]
    assert report["r_per_block"] == [r] * 3 and report["flops_ratio"] <= 0.8
    assert total_macs(tome_spec(tiny.spec, [r - 1] * 3)) / total_macs(tiny.spec) > 0.8
    assert total_macs(pruned.spec) / total_macs(tiny.spec) == report["flops_ratio"]


def test_the_mlp_after_a_merge_runs_on_fewer_tokens():
    spec = tome_spec(tiny_spec(), [4, 0, 2])
    prefix, d, m = spec.num_prefix_tokens, spec.embed_dim, spec.blocks[0].mlp_dim
    assert spec.patch_tokens_entering() == [16, 12, 12, 10]
    assert spec.mlp_tokens() == [prefix + 12, prefix + 12, prefix + 10, prefix + 10]
    macs = block_macs(spec)
    assert [b.mlp for b in macs] == [2 * n * d * m for n in spec.mlp_tokens()]
    assert macs[0].token_scores > 0 and macs[1].token_scores == 0


@pytest.mark.parametrize("merges, message", [
    ([9], "at most 8 of the 16"),
    ([1, 1, 1, 1], "lists 4 blocks"),
])
def test_a_plan_the_model_cannot_run_is_refused(merges, message):
    with pytest.raises(VitDeployError, match=message):
        tome_spec(tiny_spec(), merges)


def test_tome_cannot_share_a_model_with_other_selectors():
    spec = tiny_spec()
    with pytest.raises(VitDeployError, match="cannot share a model with cls_attn"):
        spec.with_token_plan({0: TokenStep(keep=12, selector="tome"), 1: TokenStep(keep=8, selector="cls_attn")})


@pytest.mark.parametrize("target, selection, merges", [
    ("tensorrt", "topk", [4, 3, 2]),
    ("tensorrt", "topk", [8, 3, 2]),  # the first block merges all of A: no TopK ranks a whole axis
    ("onnxruntime", "rank", [4, 3, 2]),
])
def test_export_is_sort_free_checked_and_batch_dynamic(tmp_path, target, selection, merges):
    spec = tiny_spec(blocks=uniform_blocks(4, 32, 2), distilled=True)
    model = with_spec(tiny_model(spec), tome_spec(spec, merges))
    path = tmp_path / "tome.onnx"
    report = export_onnx(model, path, ExportConfig(target=target, selection=selection)).to_dict()
    assert report["parity"]["passed"] and len(report["parity"]["batch_sizes"]) > 1
    graph = onnx.load(path).graph
    ops = {node.op_type for node in graph.node}
    assert not ops & {"ArgSort", "Sort", "NonZero", "Unique"}
    assert ("TopK" in ops) == (selection == "topk")
    assert "ScatterND" not in ops
    assert all(a.name != "reduction" or a.s in (b"", b"none") for n in graph.node for a in n.attribute)


def test_the_decreasing_schedule_merges_more_early():
    from vitdeploy.prune.methods.tome.schedule import per_block

    decreasing, constant = per_block(4, 7, "decreasing"), per_block(4, 7, "constant")
    assert decreasing == sorted(decreasing, reverse=True) and decreasing[0] == 8
    assert constant == [4] * 6
    assert math.isclose(sum(decreasing), 4 * 7, abs_tol=3)
