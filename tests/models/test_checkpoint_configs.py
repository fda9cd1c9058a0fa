"""Checkpoints users actually have: timm config.json, DeiT/timm training checkpoints, model arguments.

A state dict does not reveal the head count or the normalisation; these tests build checkpoints
whose true architecture differs from what the shapes suggest and check that the loaded model
computes what the original did, and that whatever had to be assumed is said.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import functools
import json

import pytest
import torch
from safetensors.torch import save_file

from tests.conftest import tiny_spec
from vitdeploy.cli import main
from vitdeploy.errors import VitDeployError
from vitdeploy.models.spec import uniform_blocks
from vitdeploy.models.vit import ViT
from vitdeploy.models.zoo import load_model

WIDTH = 192  # DeiT-Tiny's width: the standard head count (3) is what the shapes alone suggest


@functools.cache
def deit_shaped(heads: int) -> ViT:
    """A 2-block DeiT-Tiny-width model with ``heads`` heads (built once per head count; not modified)."""
    model = ViT(tiny_spec(embed_dim=WIDTH, blocks=uniform_blocks(2, WIDTH, heads)))
    model.reset_parameters(7)
    return model.eval()


def same_outputs(a: ViT, b: ViT) -> bool:
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return torch.allclose(a(x), b(x), atol=1e-6)


def write_hub_files(directory, model: ViT, **config) -> str:
    save_file(dict(model.state_dict()), str(directory / "model.safetensors"))
    (directory / "config.json").write_text(json.dumps(config))
    return str(directory / "model.safetensors")


def test_heads_and_normalisation_come_from_timm_config_json(tmp_path):
    trained = deit_shaped(heads=6)
    path = write_hub_files(tmp_path, trained, architecture="vit_custom", model_args={"num_heads": 6},
                           pretrained_cfg={"mean": [0.5] * 3, "std": [0.5] * 3, "crop_pct": 0.9})
    loaded = load_model(path)
    assert loaded.spec.blocks[0].heads == 6
    assert loaded.spec.mean == (0.5, 0.5, 0.5) and loaded.spec.std == (0.5, 0.5, 0.5)
    assert [note.split(" ")[0] for note in loaded.assumptions] == ["class-token", "GELU"]  # pooling, activation
    assert same_outputs(loaded, trained)


def test_a_timm_hub_directory_loads_like_its_weights_file(tmp_path):
    trained = deit_shaped(heads=6)
    write_hub_files(tmp_path, trained, architecture="vit_custom", model_args={"num_heads": 6, "act_layer": "gelu"})
    assert same_outputs(load_model(str(tmp_path)), trained)


def test_a_gelu_tanh_model_is_read_as_one(tmp_path):
    trained = ViT(tiny_spec(embed_dim=WIDTH, blocks=uniform_blocks(2, WIDTH, 3), activation="gelu_tanh"))
    trained.reset_parameters(7)
    path = write_hub_files(tmp_path, trained.eval(), model_args={"act_layer": "gelu_tanh"})
    loaded = load_model(path)
    assert loaded.spec.activation == "gelu_tanh" and same_outputs(loaded, trained)
    exact_gelu = ViT(dataclasses.replace(loaded.spec, activation="gelu"))
    exact_gelu.load_state_dict(loaded.state_dict())
    assert not same_outputs(exact_gelu.eval(), trained)


def test_without_a_config_the_assumed_heads_and_normalisation_are_said(tmp_path):
    trained = deit_shaped(heads=3)
    save_file(dict(trained.state_dict()), str(tmp_path / "model.safetensors"))
    loaded = load_model(str(tmp_path / "model.safetensors"))
    assert same_outputs(loaded, trained)
    assumed = " | ".join(loaded.assumptions)
    assert "num_heads=3 assumed" in assumed and "pooling assumed" in assumed and "ImageNet mean/std" in assumed
    assert "GELU (exact, erf) assumed" in assumed


def test_model_arguments_on_the_command_line_override_the_shapes(tmp_path, capsys):
    trained = deit_shaped(heads=12)
    save_file(dict(trained.state_dict()), str(tmp_path / "m.safetensors"))
    loaded = load_model(str(tmp_path / "m.safetensors"), model_args={"num_heads": 12, "global_pool": "token",
                                                                     "act_layer": "gelu", "mean": [0.5] * 3,
                                                                     "std": [0.5] * 3})
    assert loaded.assumptions == [] and same_outputs(loaded, trained)
    assert main(["inspect", str(tmp_path / "m.safetensors"), "--model-arg", "num_heads=12", "--json"]) == 0
    out, err = capsys.readouterr()
    assert {b["heads"] for b in json.loads(out)["spec"]["blocks"]} == {12}
    assert [line.split(":")[1] for line in err.splitlines()] == [" note"] * 3  # pooling, activation, normalisation


def test_deit_main_training_checkpoint_with_namespace_args_loads(tmp_path):
    trained = deit_shaped(heads=3)
    torch.save({"model": trained.state_dict(), "optimizer": {"state": {}, "param_groups": []}, "epoch": 3,
                "lr_scheduler": {"last_epoch": 3},
                "args": argparse.Namespace(model="deit_tiny_patch16_224", lr=5e-4, input_size=32)},
               tmp_path / "checkpoint.pth")
    loaded = load_model(str(tmp_path / "checkpoint.pth"))
    assert loaded.assumptions == []  # heads, pooling and normalisation are those of the registered DeiT-Tiny
    assert loaded.spec.mean == (0.485, 0.456, 0.406)
    assert same_outputs(loaded, trained)


@pytest.mark.parametrize("name", ["model_best.pth.tar", "checkpoint-7.pth.tar"])
def test_timm_train_checkpoints_read_model_kwargs_and_mean_std(tmp_path, name):
    trained = deit_shaped(heads=6)
    torch.save({"epoch": 7, "arch": "vit_custom", "state_dict": trained.state_dict(), "version": 2,
                "optimizer": {"state": {}, "param_groups": []},
                "args": argparse.Namespace(model="vit_custom", model_kwargs={"num_heads": 6}, gp=None,
                                           mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))},
               tmp_path / name)
    loaded = load_model(str(tmp_path / name))
    assert loaded.spec.blocks[0].heads == 6 and loaded.spec.std == (0.5, 0.5, 0.5)
    assert same_outputs(loaded, trained)


def test_namespace_admits_nothing_else(tmp_path):
    torch.save({"model": deit_shaped(3).state_dict(), "args": argparse.Namespace(when=datetime.date(2024, 1, 1))},
               tmp_path / "ckpt.pth")
    with pytest.raises(VitDeployError, match=r"Python object \(datetime.date\).*re-save the weights"):
        load_model(str(tmp_path / "ckpt.pth"))


@pytest.mark.parametrize("model_args, refused", [
    ({"global_pool": "avg", "fc_norm": False}, "global_pool='avg'"),
    ({"act_layer": "quick_gelu"}, "act_layer='quick_gelu'"),
    ({"class_token": False}, "class_token=False"),
    ({"reg_tokens": 4}, "reg_tokens=4"),
])
def test_settings_the_vit_does_not_implement_are_refused(tmp_path, model_args, refused):
    path = write_hub_files(tmp_path, deit_shaped(3), architecture="vit_custom", model_args=model_args)
    with pytest.raises(VitDeployError, match=refused):
        load_model(path)


def test_prune_report_records_what_was_assumed(tmp_path, capsys):
    save_file(dict(deit_shaped(3).state_dict()), str(tmp_path / "m.safetensors"))
    code = main(["prune", "uniform", str(tmp_path / "m.safetensors"), "--out", str(tmp_path / "p"),
                 "--rate", "0.5", "--quiet"])
    assert code == 0
    report = json.loads((tmp_path / "p" / "prune.json").read_text())
    assert any("num_heads=3 assumed" in note for note in report["assumed"])
    assert "vitdeploy: note: num_heads=3 assumed" in capsys.readouterr().err


@pytest.mark.parametrize("extra_positions, reason", [(4, "register tokens"), (-1, "no_embed_class")])
def test_register_tokens_and_no_class_position_are_named_when_refused(tmp_path, extra_positions, reason):
    state = dict(deit_shaped(heads=3).state_dict())
    pos = state["pos_embed"]
    state["pos_embed"] = (torch.cat([pos, pos[:, -extra_positions:]], dim=1) if extra_positions > 0
                          else pos[:, :extra_positions])
    save_file(state, str(tmp_path / "m.safetensors"))
    with pytest.raises(VitDeployError, match=reason):
        load_model(str(tmp_path / "m.safetensors"))
