import pytest
import torch
from safetensors.torch import save_file

from vitdeploy.errors import VitDeployError
from vitdeploy.models.checkpoint import load_artifact, load_timm_checkpoint, save_artifact, spec_from_timm_state
from vitdeploy.models.spec import TokenStep
from vitdeploy.models.zoo import get_spec, load_model
from vitdeploy.models.token_plan import with_spec
from tests.conftest import tiny_model, tiny_spec


def test_artifact_round_trip_reproduces_outputs(tmp_path, tiny):
    model = with_spec(tiny, tiny.spec.with_token_plan({1: TokenStep(keep=9, selector="cls_attn", package=True)}))
    save_artifact(model, tmp_path / "m")
    again = load_artifact(tmp_path / "m")
    x = torch.randn(2, 3, 32, 32)
    assert again.spec == model.spec
    assert torch.equal(again(x), model(x))
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["spec.json", "weights.safetensors"]


def test_saving_over_an_artifact_replaces_it_whole(tmp_path, tiny):
    save_artifact(tiny, tmp_path / "m")
    other = tiny_model(seed=5)
    save_artifact(other, tmp_path / "m")
    assert torch.equal(load_artifact(tmp_path / "m").head.weight, other.head.weight)
    assert [p.name for p in tmp_path.iterdir()] == ["m"]


def test_saving_never_replaces_a_directory_with_other_files(tmp_path, tiny):
    (tmp_path / "thesis.tex").write_text("years of work")
    with pytest.raises(VitDeployError, match="already holds other files"):
        save_artifact(tiny, tmp_path)
    assert (tmp_path / "thesis.tex").read_text() == "years of work"
    (tmp_path / "afile").write_text("x")
    with pytest.raises(VitDeployError, match="is a file"):
        save_artifact(tiny, tmp_path / "afile")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "thesis.tex"]


def test_a_failure_while_saving_keeps_the_old_artifact(tmp_path, tiny, monkeypatch):
    save_artifact(tiny, tmp_path / "m", reports={"train.json": {"top1": 0.9}})
    import vitdeploy.models.checkpoint as checkpoint

    monkeypatch.setattr(checkpoint, "save_file", lambda *a, **k: (_ for _ in ()).throw(OSError("disk full")))
    with pytest.raises(OSError):
        save_artifact(tiny_model(seed=3), tmp_path / "m")
    assert torch.equal(load_artifact(tmp_path / "m").head.weight, tiny.head.weight)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


def timm_style_state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_pth_with_model_wrapper_and_module_prefix_loads(tmp_path):
    spec = tiny_spec(embed_dim=192, blocks=get_spec("deit_tiny_patch16_224").blocks[:2])
    model = tiny_model(spec.validate())
    state = {"model": {f"module.{k}": v for k, v in timm_style_state(model).items()}, "epoch": 3}
    torch.save(state, tmp_path / "ckpt.pth")
    loaded = load_timm_checkpoint(tmp_path / "ckpt.pth")
    x = torch.randn(1, 3, 32, 32)
    assert torch.equal(loaded(x), model(x))
    assert spec_from_timm_state(timm_style_state(model)).blocks == spec.blocks


def test_a_nonstandard_width_needs_arch(tmp_path):
    torch.save(timm_style_state(tiny_model()), tmp_path / "odd.pth")  # width 32: heads unknowable
    with pytest.raises(VitDeployError, match="pass --arch"):
        load_timm_checkpoint(tmp_path / "odd.pth")
    loaded = load_timm_checkpoint(tmp_path / "odd.pth", tiny_spec())
    x = torch.randn(1, 3, 32, 32)
    assert torch.equal(loaded(x), tiny_model()(x))


def test_checkpoint_that_does_not_match_the_spec(tmp_path, tiny):
    state = timm_style_state(tiny)
    state["blocks.0.mlp.fc1.weight"] = torch.zeros(7, 32)
    save_file(state, str(tmp_path / "bad.safetensors"))
    with pytest.raises(VitDeployError, match=r"fc1.weight has shape \(7, 32\)"):
        load_timm_checkpoint(tmp_path / "bad.safetensors", tiny_spec())
    del state["head.bias"]
    save_file(state, str(tmp_path / "missing.safetensors"))
    with pytest.raises(VitDeployError, match="missing"):
        load_timm_checkpoint(tmp_path / "missing.safetensors", tiny_spec())


def test_pickled_objects_are_refused(tmp_path):
    torch.save({"model": {"x": object()}}, tmp_path / "evil.pth")
    with pytest.raises(VitDeployError, match="not a readable checkpoint"):
        load_timm_checkpoint(tmp_path / "evil.pth")


def test_garbage_file_is_a_user_error(tmp_path):
    (tmp_path / "junk.safetensors").write_bytes(b"not a checkpoint")
    with pytest.raises(VitDeployError, match="not a readable checkpoint"):
        load_model(str(tmp_path / "junk.safetensors"))


@pytest.mark.parametrize("ref, message", [
    ("nope/missing.pth", "no such file"),
    ("deit_huge_patch16_224", "unknown model"),
])
def test_unresolvable_model_references(ref, message):
    with pytest.raises(VitDeployError, match=message):
        load_model(ref)


def test_directory_without_artifact_files(tmp_path):
    with pytest.raises(VitDeployError, match="not a vitdeploy model"):
        load_model(str(tmp_path))
