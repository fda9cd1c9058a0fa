"""Hugging Face ViT/DeiT directories: read without transformers, checked against transformers itself."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import tiny_model, tiny_spec
from vitdeploy.cli import main
from vitdeploy.errors import VitDeployError
from vitdeploy.export.onnx import export_onnx
from vitdeploy.export.onnx import INPUT_NAME
from vitdeploy.export.ort_session import open_session
from vitdeploy.models.huggingface import save_hf_directory
from vitdeploy.models.token_plan import apply_keep_plan
from vitdeploy.models.zoo import load_model

transformers = pytest.importorskip("transformers")
warnings.filterwarnings("ignore", module="transformers")

SMALL = dict(hidden_size=48, num_hidden_layers=3, intermediate_size=80, image_size=32, patch_size=8, num_labels=5,
             initializer_range=0.2)
CLASSES = {
    "vit": (transformers.ViTConfig, transformers.ViTForImageClassification),
    "deit": (transformers.DeiTConfig, transformers.DeiTForImageClassification),
    "deit-teacher": (transformers.DeiTConfig, transformers.DeiTForImageClassificationWithTeacher),
}


def hf_model(kind: str, seed: int = 0, **config):
    config_class, model_class = CLASSES[kind]
    torch.manual_seed(seed)
    return model_class(config_class(**{**SMALL, **config})).eval()


def hf_logits(model, images: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(pixel_values=images).logits


def images(count: int = 3) -> torch.Tensor:
    return torch.randn(count, 3, 32, 32, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("kind, config", [
    ("vit", {}),
    ("vit", {"num_attention_heads": 4, "layer_norm_eps": 1e-5, "hidden_act": "gelu_new"}),
    ("vit", {"num_attention_heads": 6, "qkv_bias": False, "hidden_act": "gelu_pytorch_tanh"}),
    ("deit", {"num_attention_heads": 3}),
    ("deit-teacher", {"num_attention_heads": 4, "layer_norm_eps": 1e-6}),
])
def test_logits_match_transformers(tmp_path, kind, config):
    reference = hf_model(kind, **config)
    reference.save_pretrained(tmp_path / "m")
    ours = load_model(str(tmp_path / "m"))
    torch.testing.assert_close(ours(images()), hf_logits(reference, images()), atol=1e-5, rtol=0)
    assert ours.spec.blocks[0].heads == config.get("num_attention_heads", 12)
    assert ours.spec.norm_eps == config.get("layer_norm_eps", 1e-12)


def test_the_onnx_export_matches_transformers(tmp_path):
    reference = hf_model("deit-teacher", num_attention_heads=4, hidden_act="gelu_new")
    reference.save_pretrained(tmp_path / "m")
    export_onnx(load_model(str(tmp_path / "m")), tmp_path / "m.onnx")
    (got,) = open_session(tmp_path / "m.onnx", threads=1).run(None, {INPUT_NAME: images().numpy()})
    np.testing.assert_allclose(got, hf_logits(reference, images()).numpy(), atol=1e-4, rtol=0)


def test_a_token_plan_on_a_hugging_face_model_exports_with_parity(tmp_path):
    hf_model("vit", num_attention_heads=4, initializer_range=0.3).save_pretrained(tmp_path / "m")
    model = load_model(str(tmp_path / "m"))
    planned = apply_keep_plan(model, "1:0.5")
    assert not torch.equal(planned(images()), model(images()))
    report = export_onnx(planned, tmp_path / "m.onnx")
    assert report.parity.passed and report.audit.topk


def test_transformers_5_key_layout_loads_too(tmp_path):
    reference = hf_model("vit", num_attention_heads=4)
    reference.save_pretrained(tmp_path / "m", save_original_format=False)
    assert any(".attention.q_proj." in key for key in load_file(str(tmp_path / "m" / "model.safetensors")))
    torch.testing.assert_close(load_model(str(tmp_path / "m"))(images()), hf_logits(reference, images()),
                               atol=1e-5, rtol=0)


def test_sharded_and_pickled_weights_load(tmp_path):
    reference = hf_model("deit", num_attention_heads=4)
    reference.save_pretrained(tmp_path / "sharded", max_shard_size="40KB")
    assert (tmp_path / "sharded" / "model.safetensors.index.json").is_file()
    reference.save_pretrained(tmp_path / "pickled")
    torch.save(load_file(str(tmp_path / "pickled" / "model.safetensors")), tmp_path / "pickled" / "pytorch_model.bin")
    (tmp_path / "pickled" / "model.safetensors").unlink()
    for name in ("sharded", "pickled"):
        torch.testing.assert_close(load_model(str(tmp_path / name))(images()), hf_logits(reference, images()),
                                   atol=1e-5, rtol=0)


def test_labels_and_normalisation_come_from_the_directory(tmp_path):
    labels = ["cat", "dog", "eel", "fox", "gnu"]
    hf_model("vit", num_attention_heads=4, id2label=dict(enumerate(labels))).save_pretrained(tmp_path / "m")
    (tmp_path / "m" / "preprocessor_config.json").write_text(json.dumps(
        {"image_mean": [0.1, 0.2, 0.3], "image_std": [0.4, 0.5, 0.6], "do_normalize": True}))
    model = load_model(str(tmp_path / "m"))
    assert model.spec.labels == labels
    assert (model.spec.mean, model.spec.std) == ((0.1, 0.2, 0.3), (0.4, 0.5, 0.6))
    assert model.assumptions == []


def test_without_a_preprocessor_config_the_normalisation_is_a_note_and_strict_refuses(tmp_path, capsys):
    hf_model("vit", num_attention_heads=4).save_pretrained(tmp_path / "m")
    assert main(["inspect", str(tmp_path / "m")]) == 0
    assert "vitdeploy: note: mean=[0.5, 0.5, 0.5] std=[0.5, 0.5, 0.5] assumed" in capsys.readouterr().err
    assert main(["inspect", str(tmp_path / "m"), "--strict"]) == 2
    assert "--strict" in capsys.readouterr().err
    given = ["--model-arg", "mean=[0.2,0.2,0.2]", "--model-arg", "std=[0.3,0.3,0.3]", "--strict", "--json"]
    assert main(["inspect", str(tmp_path / "m"), *given]) == 0
    assert json.loads(capsys.readouterr().out)["spec"]["std"] == [0.3, 0.3, 0.3]


def test_a_hugging_face_model_prunes_and_keeps_its_labels(tmp_path):
    labels = ["a", "b", "c", "d", "e"]
    hf_model("deit-teacher", num_attention_heads=4, id2label=dict(enumerate(labels))).save_pretrained(tmp_path / "m")
    assert main(["prune", "uniform", str(tmp_path / "m"), "--out", str(tmp_path / "p"), "--rate", "0.5",
                 "--quiet"]) == 0
    pruned = load_model(str(tmp_path / "p"))
    assert pruned.spec.labels == labels and pruned.spec.has_dist_head
    assert pruned.spec.blocks[0].tokens.keep == 8


@pytest.mark.parametrize("kind", ["vit", "deit", "deit-teacher"])
def test_to_hf_writes_what_transformers_loads(tmp_path, kind):
    hf_model(kind, num_attention_heads=4, hidden_act="gelu_new").save_pretrained(tmp_path / "m")
    assert main(["export", str(tmp_path / "m"), "--to-hf", "--out", str(tmp_path / "out")]) == 0
    config_class, model_class = CLASSES[kind]
    loaded = model_class.from_pretrained(str(tmp_path / "out")).eval()
    torch.testing.assert_close(hf_logits(loaded, images()), load_model(str(tmp_path / "m"))(images()),
                               atol=1e-5, rtol=0)


def test_to_hf_of_a_vitdeploy_model_with_one_channel(tmp_path):
    model = tiny_model(tiny_spec(in_chans=1, mean=(0.3,), std=(0.4,), labels=list("abcde")))
    save_hf_directory(model, tmp_path / "out")
    loaded = transformers.ViTForImageClassification.from_pretrained(str(tmp_path / "out")).eval()
    x = torch.randn(2, 1, 32, 32)
    torch.testing.assert_close(hf_logits(loaded, x), model(x), atol=1e-5, rtol=0)
    assert loaded.config.id2label[4] == "e"
    processor = json.loads((tmp_path / "out" / "preprocessor_config.json").read_text())
    assert (processor["image_mean"], processor["image_std"]) == ([0.3], [0.4])


def test_what_transformers_cannot_express_is_refused(tmp_path):
    pruned = tiny_model(tiny_spec(blocks=[b if i else type(b)(heads=1, qk_dim=16, v_dim=16, mlp_dim=64)
                                          for i, b in enumerate(tiny_spec().blocks)]))
    with pytest.raises(VitDeployError, match="same heads and widths"):
        save_hf_directory(pruned, tmp_path / "out")
    assert not (tmp_path / "out").exists()
