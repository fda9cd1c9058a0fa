"""Analytic MACs against two public counters (fvcore, torch's FlopCounterMode) and the papers."""

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from vitdeploy.models.flops import block_macs, total_macs
from vitdeploy.models.spec import BlockSpec, TokenStep
from vitdeploy.models.vit import ViT
from vitdeploy.models.zoo import get_spec
from tests.conftest import tiny_spec


def pruned_spec():
    """Uneven per-block dims (as NViT produces) plus a token plan with a package token."""
    spec = tiny_spec(distilled=True).with_token_plan({
        1: TokenStep(keep=10, selector="cls_attn", package=True),
        2: TokenStep(keep=6, selector="fixed", positions=[0, 1, 2, 3, 4, 5]),
    })
    spec.blocks[0] = BlockSpec(heads=3, qk_dim=8, v_dim=24, mlp_dim=48)
    spec.blocks[3] = BlockSpec(heads=1, qk_dim=16, v_dim=8, mlp_dim=24)
    return spec.validate()


def torch_counter_macs(spec) -> int:
    model = ViT(spec).eval()
    # The math backend decomposes attention into bmm calls, which the counter sees; it has no
    # formula for CPU's fused flash kernel.
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.randn(1, spec.in_chans, spec.img_size, spec.img_size))
    return counter.get_total_flops() // 2


def test_analytic_macs_match_torch_flop_counter_exactly():
    spec = pruned_spec()
    assert total_macs(spec) == torch_counter_macs(spec)


def test_analytic_macs_of_star_and_spvit_steps_match_torch_flop_counter():
    """A STAR step after a fixed one, then two SPViT selectors whose package tokens are added."""
    six_blocks = [BlockSpec(heads=2, qk_dim=16, v_dim=16, mlp_dim=64) for _ in range(6)]
    spec = tiny_spec(blocks=six_blocks).with_token_plan({
        0: TokenStep(keep=12, selector="fixed", positions=list(range(12))),
        1: TokenStep(keep=9, selector="star", alpha=0.3, inter_scores=[1.0 + i for i in range(16)]),
        2: TokenStep(keep=7, selector="spvit", package=True, package_mode="add"),
        3: TokenStep(keep=5, selector="spvit", package=True, package_mode="add", selector_heads=1),
    })
    assert spec.package_tokens_entering()[-1] == 1
    assert total_macs(spec) == torch_counter_macs(spec)


def test_analytic_macs_match_fvcore():
    fvcore = pytest.importorskip("fvcore.nn")
    spec = pruned_spec()
    model = ViT(spec).eval()
    x = torch.randn(1, spec.in_chans, spec.img_size, spec.img_size)
    counter = fvcore.FlopCountAnalysis(model, x).unsupported_ops_warnings(False).uncalled_modules_warnings(False)
    counter.set_op_handle("aten::scaled_dot_product_attention", _sdpa_macs)
    by_op = counter.by_operator()
    assert by_op["linear"] > 0 and by_op["scaled_dot_product_attention"] > 0
    assert counter.total() - by_op.get("layer_norm", 0) == total_macs(spec)  # we count no norms


def _sdpa_macs(inputs, outputs):
    """fvcore has no SDPA handle; count Q·Kᵀ and A·V from the traced input shapes."""
    from fvcore.nn.jit_handles import get_shape

    q, k, v = (get_shape(t) for t in inputs[:3])
    batch_heads = q[0] * q[1]
    return batch_heads * q[2] * k[2] * (q[3] + v[3])


@pytest.mark.parametrize("name, paper_gmacs", [
    ("deit_tiny_patch16_224", 1.3), ("deit_small_patch16_224", 4.6), ("deit_base_patch16_224", 17.6),
])
def test_deit_macs_match_the_deit_paper(name, paper_gmacs):
    # DeiT (Touvron et al. 2021), Table 1 reports 1.3 / 4.6 / 17.6 GFLOPs (multiply-adds),
    # rounded to one decimal.
    assert round(total_macs(get_spec(name)) / 1e9, 1) == paper_gmacs


def test_dropping_tokens_reduces_later_blocks_only():
    spec = tiny_spec()
    pruned = spec.with_token_plan({1: TokenStep(keep=8, selector="cls_attn")})
    base, cut = block_macs(spec), block_macs(pruned)
    assert cut[0].total == base[0].total
    assert cut[1].token_scores > 0 and cut[1].mlp == base[1].mlp
    assert cut[2].tokens == 9 and cut[2].total < base[2].total
