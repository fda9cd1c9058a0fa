import pytest

from vitdeploy.errors import VitDeployError
from vitdeploy.models.zoo import get_spec
from vitdeploy.models.token_plan import keep_count, keep_plan_spec, parse_keep

DEIT_S = get_spec("deit_small_patch16_224")


def test_rates_apply_to_the_tokens_left_by_earlier_steps():
    spec = keep_plan_spec(DEIT_S, parse_keep("4:0.7,7:0.7,10:0.7"))
    assert spec.patch_tokens_entering()[3:11] == [196, 138, 138, 138, 97, 97, 97, 68]


def test_counts_and_rates_are_distinct():
    assert parse_keep("4:137,7:0.5") == {3: 137, 6: 0.5}
    assert keep_count(137, 196) == 137 and keep_count(0.7, 196) == 138


@pytest.mark.parametrize("text, message", [
    ("0:5", "numbered from 1"), ("-1:5", "not BLOCK:KEEP"), ("99:0.5", "block 99 does not exist"),
    ("4:1.0", "rate strictly between 0 and 1"), ("4:nan", "rate strictly"), ("4:inf", "rate strictly"),
    ("4:0", r"1\.\.195"), ("4:196", "fewer than the 196"), ("12:0.5", "last block"),
    ("4:0.7,4:0.5", "twice"), (",", "empty"), ("four:0.5", "not BLOCK:KEEP"),
])
def test_bad_plans_raise_one_clear_error(text, message):
    with pytest.raises(VitDeployError, match=message):
        keep_plan_spec(DEIT_S, parse_keep(text))
