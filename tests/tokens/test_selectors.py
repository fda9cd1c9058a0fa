"""Token selectors: each is one module that the spec, the model and the FLOPs count hand off to,
so a new selector works end to end (validation, forward, MACs, checked ONNX export)."""

import pytest
import torch

from tests.conftest import tiny_model, tiny_spec
from vitdeploy.errors import VitDeployError
from vitdeploy.models.flops import block_macs
from vitdeploy.models.spec import TokenStep
from vitdeploy.models.token_plan import with_spec
from vitdeploy.tokens import selectors

NORM_SELECTOR = '''
from vitdeploy.tokens.selectors import TokenSelector


class TokenNorm(TokenSelector):
    name = "norm_for_test"

    def scores(self, block, cls_scores, positions, patches):
        return patches.norm(dim=-1)

    def score_macs(self, spec, block_spec, tokens, patches):
        return patches * spec.embed_dim
'''


@pytest.fixture
def norm_selector(install_plugin):
    """A selector from an installed third-party package."""
    install_plugin({"norm_plugin.py": NORM_SELECTOR}, {"vitdeploy.token_selectors": {"norm_for_test": "norm_plugin:TokenNorm"}})


def test_the_shipped_selectors_are_registered():
    assert {"fixed", "cls_attn", "star", "spvit"} <= set(selectors.SELECTORS.names())


def test_a_new_selector_module_works_in_spec_model_flops_and_export(norm_selector, tmp_path):
    from vitdeploy.export.onnx import export_onnx

    spec = tiny_spec().with_token_plan({1: TokenStep(keep=6, selector="norm_for_test")})
    model = with_spec(tiny_model(), spec)
    x = torch.randn(2, 3, 32, 32)
    tokens = model.blocks[1](model.blocks[0](model.embed(x))[0])[0]
    patches = model.blocks[1].residual(model.blocks[0](model.embed(x))[0],
                                       lambda h: model.blocks[1].attn(h))[0][:, 1:]
    expected = patches.gather(1, patches.norm(dim=-1).topk(6).indices[..., None].expand(-1, -1, 32))
    torch.testing.assert_close(tokens[:, 1:], expected)
    assert block_macs(spec)[1].token_scores == 16 * 32
    report = export_onnx(model, tmp_path / "norm.onnx")
    assert report.parity.max_abs_diff <= report.parity.atol


def test_fields_of_another_selector_are_refused(norm_selector):
    with pytest.raises(VitDeployError, match="alpha belong to the star selector, not norm_for_test"):
        tiny_spec().with_token_plan({1: TokenStep(keep=6, selector="norm_for_test", alpha=0.5)})


def test_an_unknown_selector_is_a_user_error():
    with pytest.raises(VitDeployError, match="unknown token selector 'magic'"):
        tiny_spec().with_token_plan({1: TokenStep(keep=6, selector="magic")})
