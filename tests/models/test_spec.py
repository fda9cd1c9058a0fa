import pytest

from vitdeploy.errors import VitDeployError
from vitdeploy.models.spec import BlockSpec, TokenStep, ViTSpec
from vitdeploy.models.zoo import ARCHITECTURES, get_spec
from tests.conftest import tiny_spec


def test_json_round_trip_keeps_every_field():
    spec = tiny_spec(distilled=True, sparsity="2:4").with_token_plan({
        1: TokenStep(keep=10, selector="cls_attn", package=True),
        2: TokenStep(keep=4, selector="fixed", positions=[0, 3, 5, 9]),
    })
    spec.blocks[3] = BlockSpec(heads=3, qk_dim=8, v_dim=12, mlp_dim=40, attn_scale=0.25)
    again = ViTSpec.from_json(spec.to_json())
    assert again == spec
    assert again.blocks[3].scale == 0.25 and again.blocks[0].scale == 16**-0.5


def test_token_counts_follow_the_plan():
    spec = tiny_spec().with_token_plan({
        0: TokenStep(keep=12, selector="cls_attn", package=True),
        2: TokenStep(keep=5, selector="cls_attn"),
    })
    assert spec.patch_tokens_entering() == [16, 12, 12, 5]
    assert spec.package_tokens_entering() == [0, 1, 1, 1]
    assert spec.tokens_entering() == [17, 14, 14, 7]


@pytest.mark.parametrize("plan, message", [
    ({0: TokenStep(keep=17, selector="cls_attn")}, r"whole number in 1\.\.15"),
    ({0: TokenStep(keep=16, selector="cls_attn")}, r"fewer than the 16 patch tokens"),
    ({0: TokenStep(keep=8, selector="cls_attn"), 1: TokenStep(keep=9, selector="cls_attn")}, r"1\.\.7"),
    ({0: TokenStep(keep=7.5, selector="cls_attn")}, "whole number"),
    ({3: TokenStep(keep=4, selector="cls_attn")}, "last block"),
    ({0: TokenStep(keep=2, selector="fixed", positions=[1])}, "lists 1 positions"),
    ({0: TokenStep(keep=2, selector="fixed", positions=[1, 16])}, "distinct indices"),
    ({0: TokenStep(keep=2, selector="magic")}, "unknown token selector"),
    ({0: TokenStep(keep=2)}, "needs a token selector"),
    ({7: TokenStep(keep=2, selector="cls_attn")}, "block 8 does not exist"),
])
def test_invalid_plans_raise_clear_errors(plan, message):
    with pytest.raises(VitDeployError, match=message):
        tiny_spec().with_token_plan(plan)


def test_invalid_json_is_a_user_error():
    with pytest.raises(VitDeployError, match="not valid JSON"):
        ViTSpec.from_json("{")
    with pytest.raises(VitDeployError, match="model spec: patch_size: Field required"):
        ViTSpec.from_json('{"img_size": 32}')


def test_non_integer_dims_from_a_hand_edited_spec_are_refused():
    data = tiny_spec().to_dict()
    data["blocks"][1]["mlp_dim"] = 128.0
    with pytest.raises(VitDeployError, match=r"blocks\.1\.mlp_dim: Input should be a valid integer"):
        ViTSpec.from_dict(data)


def test_unpruned_specs_record_their_attention_scale():
    assert all(b.attn_scale == 16**-0.5 for b in tiny_spec().blocks)


def test_every_registered_spec_is_valid():
    for name in ARCHITECTURES.names():
        assert get_spec(name).validate().name == name


def test_unknown_name_lists_known_names():
    with pytest.raises(VitDeployError, match="deit_small_patch16_224"):
        get_spec("deit_huge")


@pytest.mark.parametrize("edit, message", [
    (lambda d: d.update(colour="red"), "colour: Unexpected keyword argument"),
    (lambda d: d["blocks"][0]["tokens"].update(speed=1), r"blocks\.0\.tokens\.speed: Unexpected keyword"),
    (lambda d: d.update(embed_dim="64"), "embed_dim: Input should be a valid integer"),
    (lambda d: d["blocks"][0].update(attn_scale=float("nan")), r"blocks\.0\.attn_scale: Input should be a finite"),
    (lambda d: d["blocks"][0].update(mlp_dim=10**9), "more than the 4e\\+09"),
    (lambda d: d.update(blocks="many"), "blocks: Input should be a valid array"),
])
def test_spec_files_are_validated_field_by_field(edit, message):
    data = tiny_spec().to_dict()
    edit(data)
    with pytest.raises(VitDeployError, match=message):
        ViTSpec.from_dict(data)


def test_spec_json_that_is_not_text_or_absurdly_nested_is_a_user_error():
    for text in (b"\xff\xfe{", "[" * 100_000 + "]" * 100_000):
        with pytest.raises(VitDeployError, match="not valid JSON"):
            ViTSpec.from_json(text)
