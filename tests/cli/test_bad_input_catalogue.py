"""Bad inputs a user hits, one row each, through the real CLI.

Every row must end with exit 2 and exactly one stderr line ``vitdeploy: error: ...`` (signal rows:
130/143 and ``vitdeploy: interrupted``), no traceback, and the working directory exactly as it
was: no new files or directories (hidden temporaries and created parents included) and every
pre-existing file byte-identical. Most rows run ``vitdeploy.cli.main`` in-process; rows marked
``subprocess`` run ``python -m vitdeploy.cli`` to prove the real entry point.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import onnx
import pytest
import torch
from onnx import TensorProto, helper
from safetensors.torch import load_file, save_file

from tests.cli.conftest import deit_shaped_state, timm_config, training_checkpoint
from tests.conftest import tiny_model
from vitdeploy.cli import main
from vitdeploy.io import write_json_atomic
from vitdeploy.models.huggingface import save_hf_directory

Setup = Callable[[Path, "Assets"], None]  # noqa: F821 - the conftest's Assets

@dataclass(frozen=True)
class Case:
    id: str
    kind: str
    """The class of bad input, for the catalogue's summary."""
    argv: str
    """Whitespace-separated arguments after ``vitdeploy`` (paths relative to the case's directory)."""
    setup: tuple[Setup, ...] = ()
    fault: Callable[[pytest.MonkeyPatch], None] | None = None
    """Injected OS failure (in-process rows only)."""
    cwd: str = "."
    subprocess: bool = False
    signal: int | None = None
    """Send this signal once the command has started writing (subprocess rows only)."""
    env: tuple[tuple[str, str], ...] = ()
    """Extra environment variables (subprocess rows only), e.g. the ones torchrun sets."""


# --- setups: each builds inputs in the case's directory -------------------------------------------------

def model(name: str = "m") -> Setup:
    return lambda w, assets: assets.put("tiny", w, name)


def deit(name: str = "m.safetensors") -> Setup:
    return lambda w, assets: assets.put("deit.safetensors", w, name)


def table(edit: Callable[[dict], object] = lambda data: None, name: str = "t.json", asset: str = "table.json") -> Setup:
    """A latency table from the assets (default: the shipped one), changed by ``edit``."""
    def build(w: Path, assets) -> None:
        data = assets.json(asset)
        edit(data)
        (w / name).write_text(json.dumps(data))
    return build


def tiny_table(edit: Callable[[dict], object] = lambda data: None) -> Setup:
    """A latency table for the tiny model ``m`` on this machine (batch 4), as tt.json."""
    return table(edit, "tt.json", "tiny-table.json")


def as_int8(data: dict) -> None:
    """A table's metadata saying it was measured on INT8 graphs."""
    data["metadata"]["precision"] = "int8"


def file(name: str, content: bytes | str | dict | list) -> Setup:
    def build(w: Path, assets) -> None:
        path = w / name
        path.parent.mkdir(parents=True, exist_ok=True)
        data = json.dumps(content) if isinstance(content, (dict, list)) else content
        path.write_bytes(data.encode() if isinstance(data, str) else data)
    return build


def directory(name: str) -> Setup:
    return lambda w, assets: (w / name).mkdir(parents=True)


def torch_file(name: str, make: Callable[[], object]) -> Setup:
    return lambda w, assets: torch.save(make(), w / name)


def truncated(name: str, setup: Setup) -> Setup:
    """``setup``'s file cut to half its length."""
    def build(w: Path, assets) -> None:
        setup(w, assets)
        data = (w / name).read_bytes()
        (w / name).write_bytes(data[: len(data) // 2])
    return build


def nan_weights(name: str = "m") -> Setup:
    def build(w: Path, assets) -> None:
        assets.put("tiny", w, name)
        state = tiny_model().state_dict()
        state["head.weight"] = torch.full_like(state["head.weight"], float("nan"))
        save_file(state, str(w / name / "weights.safetensors"))
    return build


def spec_edit(name: str = "m", **changes) -> Setup:
    """The tiny model with fields of its spec.json changed (``blocks0`` edits the first block)."""
    def build(w: Path, assets) -> None:
        assets.put("tiny", w, name)
        spec = json.loads((w / name / "spec.json").read_text())
        spec["blocks"][0].update(changes.pop("blocks0", {}))
        spec.update(changes)
        (w / name / "spec.json").write_text(json.dumps(spec))
    return build


def tome_beside_cls_attn(name: str = "m") -> Setup:
    """A spec that merges tokens in block 1 and drops them by class attention in block 2."""
    def build(w: Path, assets) -> None:
        assets.put("tiny", w, name)
        spec = json.loads((w / name / "spec.json").read_text())
        spec["blocks"][0]["tokens"] = {"keep": 12, "selector": "tome"}
        spec["blocks"][1]["tokens"] = {"keep": 8, "selector": "cls_attn"}
        (w / name / "spec.json").write_text(json.dumps(spec))
    return build


def deit_with_config(**model_args) -> Setup:
    def build(w: Path, assets) -> None:
        assets.put("deit.safetensors", w, "m.safetensors")
        (w / "config.json").write_text(json.dumps(timm_config(**model_args)))
    return build


def hf_dir(name: str = "hf", then: Callable[[Path], object] = lambda d: None, **config) -> Setup:
    """The tiny model as a Hugging Face directory, its config.json fields changed by ``config``
    (None removes one) and the directory then changed by ``then``."""
    def build(w: Path, assets) -> None:
        save_hf_directory(tiny_model(), w / name)
        data = json.loads((w / name / "config.json").read_text())
        data.update(config)
        (w / name / "config.json").write_text(json.dumps({k: v for k, v in data.items() if v is not None}))
        then(w / name)
    return build


def without_classifier(directory: Path) -> None:
    weights = directory / "model.safetensors"
    save_file({k: v for k, v in load_file(str(weights)).items() if not k.startswith("classifier.")}, str(weights))


def shard_index(shard: str) -> Callable[[Path], object]:
    def edit(directory: Path) -> None:
        (directory / "model.safetensors").unlink()
        (directory / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"x": shard}}))
    return edit


def tiny_onnx(name: str = "g.onnx") -> Setup:
    """A valid one-node ONNX graph (y = x + x)."""
    def build(w: Path, assets) -> None:
        x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 32, 32])
        y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 32, 32])
        graph = helper.make_graph([helper.make_node("Add", ["x", "x"], ["y"])], "g", [x], [y])
        onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), w / name)
    return build


def unsigned_int8_onnx(name: str = "q.onnx") -> Setup:
    """A Q/DQ graph quantized the way ONNX Runtime's x86 kernels prefer: uint8 with a zero point of 128."""
    def build(w: Path, assets) -> None:
        x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, 32, 32])
        y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3, 32, 32])
        scale = helper.make_tensor("scale", TensorProto.FLOAT, [], [0.05])
        zero_point = helper.make_tensor("zero_point", TensorProto.UINT8, [], [128])
        nodes = [helper.make_node("QuantizeLinear", ["x", "scale", "zero_point"], ["q"], name="quantize"),
                 helper.make_node("DequantizeLinear", ["q", "scale", "zero_point"], ["y"], name="dequantize")]
        graph = helper.make_graph(nodes, "g", [x], [y], initializer=[scale, zero_point])
        onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), w / name)
    return build


def image_folder(root: str, classes: int, image: bytes | None = None) -> Setup:
    """``root/test/<class>/0.png`` for each class; ``image`` replaces the valid PNG."""
    def build(w: Path, assets) -> None:
        from PIL import Image

        for index in range(classes):
            folder = w / root / "test" / f"class{index}"
            folder.mkdir(parents=True)
            if image is None:
                Image.new("RGB", (40, 40), (index * 40, 0, 0)).save(folder / "0.png")
            else:
                (folder / "0.png").write_bytes(image)
    return build


def recipe(name: str = "r.json", **fields) -> Setup:
    base = {"name": "r", "model": "m", "variants": [{"name": "keep70", "keep": "2:0.7"}],
            "export": {"selection": "topk", "target": "onnxruntime", "opset": 18}, "data": "fashion-mnist"}
    return file(name, {**base, **fields})


def jpeg_folder(root: str, classes: int = 2, per_class: int = 4, bad: str | None = None,
                empty_class: bool = False) -> Setup:
    """``root/train/class<i>/<n>.jpg``; ``bad`` names one more file holding no image, and
    ``empty_class`` adds a class folder without images."""
    def build(w: Path, assets) -> None:
        from PIL import Image

        for index in range(classes):
            folder = w / root / "train" / f"class{index}"
            folder.mkdir(parents=True)
            for n in range(per_class):
                Image.new("RGB", (40, 40), (index * 40, n * 20, 0)).save(folder / f"{n}.jpg")
        if bad:
            (w / root / "train" / "class0" / bad).write_bytes(b"\xff\xd8 not a jpeg")
        if empty_class:
            (w / root / "train" / f"class{classes}").mkdir()
    return build


def spvit_checkpoint(out: str, payload=None) -> Setup:
    """A checkpoint in ``out``'s SPViT work directory: by default one of another run."""
    def build(w: Path, assets) -> None:
        (w / f"{out}.spvit-work").mkdir()
        checkpoint = payload if payload is not None else {"format": 2, "identity": {"config": {"budget_flops": 0.3}}}
        torch.save(checkpoint, w / f"{out}.spvit-work" / "checkpoint.pt")
    return build


def old_outputs(*names: str) -> Setup:
    """Pre-existing outputs a failed command must leave byte-identical."""
    return lambda w, assets: [file(name, f"OLD {name}")(w, assets) for name in names] and None


def deep_json(depth: int = 100_000) -> str:
    return "[" * depth + "]" * depth


# --- faults: OS errors a full disk or read-only file system raises ------------------------------------

def disk_full_on_replace(monkeypatch: pytest.MonkeyPatch, call: int = 1) -> None:
    """The ``call``-th ``os.replace`` (counting from 1) fails with ENOSPC; the others work."""
    calls, replace = [], os.replace

    def full(*args, **kwargs):
        calls.append(args)
        if len(calls) == call:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return replace(*args, **kwargs)
    monkeypatch.setattr(os, "replace", full)


def read_only_on_mkdir(monkeypatch: pytest.MonkeyPatch) -> None:
    def read_only(self, *args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(self))
    monkeypatch.setattr(Path, "mkdir", read_only)


def pickled_object() -> dict:
    import datetime

    return {"model": {"w": torch.zeros(2)}, "created": datetime.date(2024, 1, 1)}


def timm_training_checkpoint(**args) -> dict:
    """What timm's train.py saves (checkpoint-N.pth.tar / model_best.pth.tar)."""
    return {"epoch": 3, "arch": "vit_custom_patch8_32", "state_dict": deit_shaped_state(), "version": 2,
            "args": argparse.Namespace(model="vit_custom_patch8_32", mean=None, std=None, **args)}


NAN = float("nan")
TRAIN = "train --out o --limit 8 --quiet"
PRUNE = "prune uniform m --out o --rate 0.5"

CASES = [
    # options: range, finiteness, digits (argparse refuses before any work)
    Case("train-epochs-negative", "option", f"{TRAIN} --epochs -1"),
    Case("train-batch-size-huge", "option", f"{TRAIN} --batch-size 1000000000000"),
    Case("train-batch-size-zero", "option", f"{TRAIN} --batch-size 0"),
    Case("train-lr-nan", "option", f"{TRAIN} --lr nan"),
    Case("train-lr-zero", "option", f"{TRAIN} --lr 0"),
    Case("train-label-smoothing-above-1", "option", f"{TRAIN} --label-smoothing 1.5"),
    Case("train-threads-huge", "option", f"{TRAIN} --threads 100000000"),
    Case("train-epochs-arabic-digit", "option", f"{TRAIN} --epochs ٣"),
    Case("train-seed-negative", "option", f"{TRAIN} --seed -1"),
    Case("train-limit-zero", "option", "train --out o --limit 0"),
    Case("train-epochs-5000-digits", "option", f"{TRAIN} --epochs {'9' * 5000}"),
    Case("eval-limit-negative", "option", "eval m --limit -5 --no-onnx", (model(),)),
    Case("inspect-keep-superscript-digit", "option", "inspect m --keep 2:²", (model(),)),
    Case("inspect-keep-nan", "option", "inspect m --keep 2:nan", (model(),)),
    Case("inspect-keep-block-out-of-range", "option", "inspect m --keep 9:0.5", (model(),)),
    Case("inspect-package-without-keep", "option", "inspect m --package", (model(),)),
    Case("inspect-strict-checkpoint-that-needs-assumptions", "checkpoint", "inspect m.safetensors --strict", (deit(),)),
    Case("prune-nvit-eta-nan", "option", "prune nvit m --out o --calib fashion-mnist --eta nan", (model(),)),
    Case("prune-spvit-lambda-ratio-nan", "option", "prune spvit m --out o --data fashion-mnist --lambda-ratio nan",
         (model(),)),
    Case("prune-threads-zero", "option", f"{PRUNE} --threads 0", (model(),)),
    Case("prune-threads-huge", "option", f"{PRUNE} --threads 99999999", (model(),)),
    Case("prune-rate-above-1", "option", "prune uniform m --out o --rate 1.5", (model(),)),
    Case("prune-eval-limit-zero", "option", f"{PRUNE} --eval fashion-mnist --eval-limit 0", (model(),)),
    Case("export-opset-out-of-range", "option", "export m --out x.onnx --opset 99", (model(),)),
    Case("bench-batch-huge", "option", "bench m --batch 1000000000", (model(),)),
    Case("quantize-max-drop-nan", "option", "quantize m --calib fashion-mnist --out q.onnx --max-drop nan", (model(),)),
    Case("quantize-max-drop-negative", "option", "quantize m --calib fashion-mnist --out q.onnx --max-drop -1",
         (model(),)),
    Case("quantize-calib-batch-larger-than-the-images", "option",
         "quantize m --calib fashion-mnist --out q.onnx --calib-images 8 --calib-batch 16", (model(),)),
    Case("quantize-unknown-part", "option", "quantize m --calib fashion-mnist --out q.onnx --parts linear,softmax",
         (model(),)),
    Case("quantize-out-not-onnx", "output", "quantize m --calib fashion-mnist --out q.txt", (model(),)),
    Case("quantize-fine-tune-without-the-linear-part", "option",
         "quantize m --calib fashion-mnist --out q.onnx --parts attention --qat-steps 5", (model(),)),
    Case("quantize-fine-tune-negative-steps", "option", "quantize m --calib fashion-mnist --out q.onnx --qat-steps -1",
         (model(),)),
    Case("bench-batch-arabic-digit", "option", "bench m --batch 1,٨", (model(),)),
    Case("bench-threads-huge", "option", "bench m --threads 100000000", (model(),)),
    Case("bench-iters-zero", "option", "bench m --iters 0", (model(),)),
    Case("bench-warmup-negative", "option", "bench m --warmup -1", (model(),)),
    Case("lut-build-batch-zero", "option", "lut build --batch 0 --out tables"),
    Case("lut-build-threads-huge", "option", "lut build --threads 100000000 --out tables"),
    Case("lut-build-int8-on-a-backend-without-qdq", "option",
         "lut build --backend torch --precision int8 --grid quick --out tables"),
    Case("run-limit-zero", "option", "run r.json --out o --limit 0", (model(), recipe())),
    Case("triton-repo-max-batch-zero", "option", "triton-repo m --out repo --max-batch 0", (model(),)),
    Case("serve-http-port-out-of-range", "option", "serve m --http-port 70000", (model(),)),
    Case("loadtest-duration-nan", "option", "loadtest localhost:1 --model m --duration nan"),
    Case("loadtest-batch-zero", "option", "loadtest localhost:1 --model m --batch 0"),
    Case("triton-repo-huge-instances", "option", "triton-repo m --out repo --instances 99999999999", (model(),)),
    Case("triton-repo-huge-max-batch", "option", "triton-repo m --out repo --max-batch 10000000000", (model(),)),
    Case("serve-huge-max-batch", "option", "serve m --max-batch 10000000", (model(),)),
    Case("serve-log-file-in-a-missing-directory", "output", "serve m --log-file no/such/dir/triton.log", (model(),)),
    Case("loadtest-port-out-of-range", "option", "loadtest grpc://127.0.0.1:99999 --model m"),
    Case("loadtest-port-not-a-number", "option", "loadtest http://127.0.0.1:abc --model m"),
    Case("loadtest-metrics-port-not-a-number", "option",
         "loadtest 127.0.0.1:8001 --model m --metrics-url http://127.0.0.1:x/metrics"),
    Case("loadtest-timeout-nan", "option", "loadtest localhost:1 --model m --timeout nan"),
    Case("loadtest-warmup-inf", "option", "loadtest localhost:1 --model m --warmup inf"),
    Case("model-arg-not-key-value", "option", "inspect m.safetensors --model-arg num_heads", (deit(),)),
    Case("train-label-smoothing-entry-point", "option", f"{TRAIN} --label-smoothing 2", subprocess=True),

    # checkpoints: files that are not what they claim, configs the ViT does not implement
    Case("pth-garbage", "checkpoint", "inspect m.pth", (file("m.pth", b"not a checkpoint at all"),)),
    Case("pth-empty", "checkpoint", "inspect m.pth", (file("m.pth", b""),)),
    Case("pth-truncated", "checkpoint", "export m.pth --out x.onnx",
         (truncated("m.pth", torch_file("m.pth", deit_shaped_state)),)),
    Case("pth-pickled-object", "checkpoint", "inspect m.pth", (torch_file("m.pth", pickled_object),),
         subprocess=True),
    Case("pth-list-of-tensors", "checkpoint", "inspect m.pth", (torch_file("m.pth", lambda: [torch.zeros(2)]),)),
    Case("pth-tar-timm-global-pool-avg", "checkpoint", "export model_best.pth.tar --out x.onnx",
         (torch_file("model_best.pth.tar", lambda: timm_training_checkpoint(gp="avg")),)),
    Case("pth-tar-timm-kwargs-quick-gelu", "checkpoint", "export checkpoint-3.pth.tar --out x.onnx",
         (torch_file("checkpoint-3.pth.tar",
                     lambda: timm_training_checkpoint(model_kwargs={"act_layer": "quick_gelu"})),)),
    Case("pth-deit-training-args-mean-nan", "checkpoint", "inspect m.pth",
         (torch_file("m.pth", lambda: training_checkpoint(mean=(NAN, 0.5, 0.5), std=(0.5, 0.5, 0.5))),)),
    Case("safetensors-garbage", "checkpoint", "inspect m.safetensors", (file("m.safetensors", b"\x08garbage"),)),
    Case("safetensors-truncated", "checkpoint", "inspect m.safetensors", (truncated("m.safetensors", deit()),)),
    Case("checkpoint-is-a-directory", "checkpoint", "inspect m.pth", (directory("m.pth"),)),
    Case("checkpoint-unsupported-suffix", "checkpoint", "inspect m.ckpt", (file("m.ckpt", b"x"),)),
    Case("checkpoint-missing", "checkpoint", "export nothing.pth --out x.onnx"),
    Case("checkpoint-nan-weights", "checkpoint", "export m.safetensors --out x.onnx",
         (lambda w, a: save_file({k: v.fill_(NAN) if k == "head.weight" else v
                                  for k, v in deit_shaped_state().items()}, str(w / "m.safetensors")),)),
    Case("checkpoint-nonstandard-width", "checkpoint", "inspect m.safetensors",
         (lambda w, a: save_file(dict(tiny_model().state_dict()), str(w / "m.safetensors")),)),
    Case("config-global-pool-avg", "config.json", "export m.safetensors --out x.onnx",
         (deit_with_config(global_pool="avg", fc_norm=False),)),
    Case("config-fc-norm", "config.json", "export m.safetensors --out x.onnx", (deit_with_config(fc_norm=True),)),
    Case("config-act-quick-gelu", "config.json", "export m.safetensors --out x.onnx",
         (deit_with_config(act_layer="quick_gelu"),)),
    Case("config-heads-do-not-divide-width", "config.json", "inspect m.safetensors",
         (deit_with_config(num_heads=5),)),
    Case("config-contradicts-depth", "config.json", "inspect m.safetensors", (deit_with_config(depth=12),)),
    Case("config-unknown-model-arg", "config.json", "inspect m.safetensors",
         (deit_with_config(mlp_layer="swiglu"),)),
    Case("config-wrong-type", "config.json", "inspect m.safetensors", (deit_with_config(num_heads="six"),)),
    Case("config-invalid-json", "config.json", "inspect m.safetensors",
         (deit(), file("config.json", '{"architecture": ')),),
    Case("config-invalid-utf8", "config.json", "inspect m.safetensors",
         (deit(), file("config.json", b'{"architecture": "\xff\xfe"}')),),
    Case("config-mean-nan", "config.json", "inspect m.safetensors",
         (deit(), file("config.json", '{"pretrained_cfg": {"mean": [NaN, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}}')),),
    Case("model-arg-global-pool-avg", "checkpoint", "export m.safetensors --out x.onnx --model-arg global_pool=avg",
         (deit(),)),
    Case("model-arg-unknown", "checkpoint", "inspect m.safetensors --model-arg wibble=1", (deit(),)),
    Case("model-arg-std-zero", "checkpoint", "inspect m.safetensors --model-arg std=[0,0.5,0.5]", (deit(),)),
    Case("model-arg-on-a-directory", "checkpoint", "inspect m --model-arg num_heads=2", (model(),)),
    Case("arch-unknown", "checkpoint", "inspect m.safetensors --arch nope", (deit(),)),

    # Hugging Face directories
    Case("hf-model-type-swin", "hf config.json", "inspect hf", (hf_dir(model_type="swin"),)),
    Case("hf-masked-image-modeling", "hf config.json", "export hf --out x.onnx",
         (hf_dir(architectures=["ViTForMaskedImageModeling"]),)),
    Case("hf-quick-gelu", "hf config.json", "export hf --out x.onnx", (hf_dir(hidden_act="quick_gelu"),)),
    Case("hf-image-not-square", "hf config.json", "inspect hf", (hf_dir(image_size=[32, 48]),)),
    Case("hf-heads-do-not-divide", "hf config.json", "inspect hf", (hf_dir(num_attention_heads=5),)),
    Case("hf-hidden-size-text", "hf config.json", "inspect hf", (hf_dir(hidden_size="32"),)),
    Case("hf-eps-nan", "hf config.json", "inspect hf", (hf_dir(), file("hf/config.json", '{"model_type": "vit", '
                                                                     '"layer_norm_eps": NaN}'))),
    Case("hf-id2label-not-indices", "hf config.json", "inspect hf", (hf_dir(id2label={"a": "x"}),)),
    Case("hf-config-contradicts-weights", "hf config.json", "inspect hf", (hf_dir(num_hidden_layers=6),)),
    Case("hf-base-model-without-classifier", "hf config.json", "export hf --out x.onnx",
         (hf_dir(architectures=None, then=without_classifier),)),
    Case("hf-no-weights", "hf config.json", "inspect hf",
         (hf_dir(then=lambda d: (d / "model.safetensors").unlink()),)),
    Case("hf-shard-outside-the-directory", "hf config.json", "inspect hf",
         (hf_dir(then=shard_index("../x.safetensors")),)),
    Case("hf-processor-std-zero", "hf config.json", "inspect hf",
         (hf_dir(), file("hf/preprocessor_config.json", {"image_mean": [0.5] * 3, "image_std": [0, 1, 1]}))),
    Case("hf-arch-option", "hf config.json", "inspect hf --arch deit_tiny_patch16_224", (hf_dir(),)),
    Case("hf-model-arg-num-heads", "hf config.json", "inspect hf --model-arg num_heads=4", (hf_dir(),)),
    Case("hf-strict-without-normalisation", "hf config.json", "export hf --out x.onnx --strict",
         (hf_dir(then=lambda d: (d / "preprocessor_config.json").unlink()),)),
    Case("bench-strict-bare-checkpoint", "checkpoint", "bench m.safetensors --strict", (deit(),)),
    Case("serve-strict-bare-checkpoint", "checkpoint", "serve m.safetensors --strict", (deit(),)),
    Case("triton-repo-strict-bare-checkpoint", "checkpoint", "triton-repo m.safetensors --out r --strict",
         (deit(),)),
    Case("to-hf-token-plan", "hf config.json", "export m --keep 2:0.5 --to-hf --out hf", (model(),)),
    Case("to-hf-onnx-name", "hf config.json", "export m --to-hf --out x.onnx", (model(),)),
    Case("to-hf-over-foreign-directory", "hf config.json", "export m --to-hf --out d",
         (model(), file("d/notes.txt", "mine"))),

    # model directories and their spec.json
    Case("spec-invalid-json", "spec.json", "inspect m", (model(), file("m/spec.json", "{"))),
    Case("spec-invalid-utf8", "spec.json", "inspect m", (model(), file("m/spec.json", b'{"name": "\xc3\x28"}'))),
    Case("spec-wrong-type", "spec.json", "inspect m", (spec_edit(img_size="32"),)),
    Case("spec-unknown-key", "spec.json", "inspect m", (spec_edit(dropout=0.1),)),
    Case("spec-deep-nesting", "spec.json", "inspect m", (model(), file("m/spec.json", deep_json()))),
    Case("spec-billion-wide-layer", "spec.json", "export m --out x.onnx", (spec_edit(blocks0={"mlp_dim": 10**9}),)),
    Case("spec-nan", "spec.json", "inspect m", (spec_edit(norm_eps=NAN),)),
    Case("spec-is-a-directory", "spec.json", "inspect m", (model(), lambda w, a: (w / "m/spec.json").unlink(),
                                                          directory("m/spec.json"))),
    Case("spec-weights-missing", "spec.json", "inspect m",
         (model(), lambda w, a: (w / "m/weights.safetensors").unlink())),
    Case("spec-does-not-match-weights", "spec.json", "inspect m", (spec_edit(blocks0={"mlp_dim": 7}),)),
    Case("artifact-nan-weights", "spec.json", "export m --out x.onnx", (nan_weights(),)),

    # recipes
    Case("recipe-missing", "recipe", "run nothing.json --out o"),
    Case("recipe-invalid-json", "recipe", "run r.json --out o", (file("r.json", "{"),)),
    Case("recipe-invalid-utf8", "recipe", "run r.json --out o", (file("r.json", b"\xff"),)),
    Case("recipe-wrong-type", "recipe", "run r.json --out o", (model(), recipe(variants="keep70"))),
    Case("recipe-wrong-typed-variant-field", "recipe", "run r.json --out o",
         (model(), recipe(variants=[{"name": "k", "keep": 5}]))),
    Case("recipe-unknown-key", "recipe", "run r.json --out o", (model(), recipe(colour="red"))),
    Case("recipe-deep-nesting", "recipe", "run r.json --out o", (file("r.json", deep_json()),)),
    Case("recipe-is-a-directory", "recipe", "run r.json --out o", (directory("r.json"),)),
    Case("recipe-unknown-model", "recipe", "run r.json --out o", (recipe(model="nope"),)),
    Case("recipe-keep-non-ascii-digit", "recipe", "run r.json --out o",
         (model(), recipe(variants=[{"name": "k", "keep": "2:²"}]))),
    Case("recipe-out-holds-other-files", "recipe", "run r.json --out o",
         (model(), recipe(), old_outputs("o/thesis.tex"))),
    Case("recipe-out-is-a-file", "recipe", "run r.json --out o", (model(), recipe(), old_outputs("o"))),
    Case("recipe-data-missing", "recipe", "run r.json --out o --limit 4", (model(), recipe(data="nodata"))),
    Case("recipe-fails-late-keeps-old-outputs", "recipe", "run r.json --out o --limit 4",
         (model(), recipe(data="d"), image_folder("d", 6), old_outputs("o/summary.json", "o/summary.md"))),

    # latency tables
    Case("lut-show-missing", "latency table", "lut show t.json"),
    Case("lut-show-invalid-json", "latency table", "lut show t.json", (file("t.json", "{"),)),
    Case("lut-show-invalid-utf8", "latency table", "lut show t.json", (file("t.json", b"\xff{}"),)),
    Case("lut-show-wrong-type", "latency table", "lut show t.json",
         (table(lambda data: data["metadata"].update(batch="8")),)),
    Case("lut-show-unknown-key", "latency table", "lut show t.json", (table(lambda data: data.update(owner="me")),)),
    Case("lut-show-negative-batch", "latency table", "lut show t.json",
         (table(lambda data: data["metadata"].update(batch=-8)),)),
    Case("lut-show-deep-nesting", "latency table", "lut show t.json", (file("t.json", deep_json()),)),
    Case("lut-show-is-a-directory", "latency table", "lut show t.json", (directory("t.json"),)),
    Case("lut-predict-nan-latency", "latency table", "lut predict t.json m",
         (model(), table(lambda data: data["mlp"]["ms"].__setitem__(0, NAN)))),
    Case("lut-predict-ragged-grid", "latency table", "lut predict t.json m",
         (model(), table(lambda data: data["mlp"]["ms"].pop()))),
    Case("lut-predict-missing-model", "latency table", "lut predict t.json nothing", (table(),)),
    Case("lut-refresh-garbage-table", "latency table", "lut refresh t.json", (file("t.json", "garbage"),)),
    Case("lut-refresh-table-with-an-unknown-build-setting", "latency table", "lut refresh tt.json",
         (tiny_table(lambda data: data["metadata"]["build_config"].update(turbo=True)),)),
    Case("lut-refresh-table-with-a-timing-plan-of-the-wrong-type", "latency table", "lut refresh tt.json",
         (tiny_table(lambda data: data["metadata"].update(timing_plan={"warmup": "three"})),)),
    Case("lut-refresh-grid-without-stem", "latency table", "lut refresh tt.json",
         (tiny_table(lambda data: data["metadata"].update(grid={})),)),
    Case("lut-refresh-grid-with-an-unknown-key", "latency table", "lut refresh tt.json",
         (tiny_table(lambda data: data["metadata"]["grid"].update(bogus=1)),)),
    Case("lut-refresh-grid-with-a-trillion-tokens", "latency table", "lut refresh tt.json",
         (tiny_table(lambda data: data["metadata"]["grid"].update(tokens=[16, 50, 10**12])),)),
    Case("lut-refresh-grid-stem-negative", "latency table", "lut refresh tt.json",
         (tiny_table(lambda data: data["metadata"]["grid"]["stem"].update(img_size=-1)),)),
    Case("lut-refresh-huge-batch", "latency table", "lut refresh tt.json",
         (tiny_table(lambda data: data["metadata"].update(batch=10**12)),)),
    Case("lut-refresh-huge-iters", "latency table", "lut refresh tt.json",
         (tiny_table(lambda data: data["metadata"]["timing_plan"].update(iters=10**12)),)),
    Case("lut-refresh-huge-build-threads", "latency table", "lut refresh tt.json",
         (tiny_table(lambda data: data["metadata"]["build_config"].update(threads=10**9)),)),
    Case("lut-predict-latencies-near-float-max", "latency table", "lut predict t.json m",
         (model(), table(lambda data: data["mlp"].update(ms=[1e308] * len(data["mlp"]["ms"])))),),
    Case("lut-predict-huge-calibration-offset", "latency table", "lut predict t.json m",
         (model(), table(lambda data: data.update(calibration={"scale": 1.0, "offset_ms": -1e12, "models": 0})))),
    Case("lut-show-stem-huge", "latency table", "lut show t.json",
         (table(lambda data: data["stem"].update(img_size=10**15)),)),
    Case("lut-show-endless-file", "latency table", "lut show /dev/zero"),
    Case("lut-build-calibrate-huge", "option", "lut build --for m --calibrate 99999999999 --out tables", (model(),)),
    Case("lut-build-round-to-huge", "option", "lut build --for m --round-to 99999999999 --out tables", (model(),)),
    Case("lut-build-empty-grid", "option", "lut build --grid= --out tables"),
    Case("lut-build-empty-for", "option", "lut build --for= --out tables"),
    Case("lut-predict-empty-keep", "option", "lut predict t.json m --keep=", (model(), table())),
    Case("triton-repo-empty-out", "option", "triton-repo m --out=", (model(),)),
    Case("bench-empty-out", "option", "bench m --out=", (model(),)),
    Case("loadtest-unclosed-ipv6-bracket", "option", "loadtest grpc://[::1 --model m"),
    Case("loadtest-ipv4-in-brackets", "option", "loadtest grpc://[127.0.0.1]:8001 --model m"),
    Case("loadtest-metrics-url-unclosed-bracket", "option",
         "loadtest localhost:8001 --model m --metrics-url http://[::1"),
    Case("loadtest-concurrency-huge", "option", "loadtest localhost:1 --model m --concurrency 99999999999"),
    Case("loadtest-concurrency-empty-item", "option", "loadtest localhost:1 --model m --concurrency 1,,2"),
    Case("loadtest-out-unwritable", "output", "loadtest localhost:1 --model m --out /proc/foo/x"),
    Case("triton-repo-tensorrt-without-tensorrt", "option", "triton-repo m --out repo --target tensorrt --device cuda",
         (model(),)),
    Case("lut-build-unknown-grid", "latency table", "lut build --grid huge --out tables"),
    Case("lut-build-unknown-backend", "latency table", "lut build --backend nope --out tables"),

    # .onnx files
    Case("bench-empty-onnx", "onnx", "bench g.onnx --iters 1 --warmup 0 --rounds 1", (file("g.onnx", b""),)),
    Case("bench-garbage-onnx", "onnx", "bench g.onnx --iters 1 --warmup 0 --rounds 1",
         (file("g.onnx", b"garbage bytes"),)),
    Case("bench-truncated-onnx", "onnx", "bench g.onnx --iters 1 --warmup 0 --rounds 1",
         (truncated("g.onnx", tiny_onnx()),)),
    Case("bench-onnx-is-a-directory", "onnx", "bench g.onnx --iters 1 --warmup 0 --rounds 1", (directory("g.onnx"),)),
    Case("eval-onnx-garbage", "onnx", "eval m --onnx g.onnx --limit 4", (model(), file("g.onnx", b"garbage"))),
    Case("rewrite-garbage-onnx", "onnx", "rewrite g.onnx --out y.onnx", (file("g.onnx", b"garbage"),)),
    Case("rewrite-missing-input", "onnx", "rewrite nothing.onnx --out y.onnx"),
    Case("rewrite-unknown-rule", "onnx", "rewrite g.onnx --out y.onnx --rules nope", (tiny_onnx(),)),
    Case("triton-repo-garbage-onnx", "onnx", "triton-repo g.onnx --out repo", (file("g.onnx", b"garbage"),)),

    # output locations
    Case("export-out-not-onnx", "output", "export m --out x.txt", (model(),)),
    Case("export-out-parent-is-a-file", "output", "export m --out f/x.onnx", (model(), old_outputs("f"))),
    Case("export-report-path-is-a-directory", "output", "export m --out x.onnx",
         (model(), old_outputs("x.onnx"), directory("x.export.json"))),
    Case("export-report-path-is-a-directory-after-export", "output", "export m --out x.onnx",
         (model(), old_outputs("x.onnx")), fault=lambda mp: disk_full_on_replace(mp, call=2)),
    Case("export-out-under-proc", "output", "export m --out /proc/vitdeploy-x.onnx", (model(),)),
    Case("export-disk-full-leaves-no-parents", "output", "export m --out new/dir/x.onnx", (model(),),
         fault=disk_full_on_replace),
    Case("export-read-only-fs", "output", "export m --out new/x.onnx", (model(),), fault=read_only_on_mkdir),
    Case("prune-disk-full", "output", f"{PRUNE}", (model(), old_outputs("o/spec.json")), fault=disk_full_on_replace),
    Case("prune-out-is-the-input-model", "output", "prune uniform m --out m --rate 0.5",
         (model(), old_outputs("m/train.json"))),
    Case("prune-out-dot-in-empty-cwd", "output", "prune uniform ../m --out . --rate 0.5", (model(), directory("e")),
         cwd="e"),
    Case("prune-out-holds-other-files", "output", PRUNE, (model(), old_outputs("o/thesis.tex"))),
    Case("train-out-parent-is-a-file", "output", "train --out f/o --limit 8 --epochs 1", (old_outputs("f"),)),
    Case("train-out-under-sys", "output", "train --out /sys/vitdeploy-o --limit 8 --epochs 1 --quiet"),
    Case("bench-report-json-is-a-directory", "output", "bench m --batch 1 --iters 1 --warmup 0 --rounds 1 --out b",
         (model(), old_outputs("b.md"), directory("b.json"))),
    Case("lut-build-out-is-a-file", "output", "lut build --grid quick --out tables", (old_outputs("tables"),)),
    Case("rewrite-report-path-is-a-directory", "output", "rewrite g.onnx --out y.onnx",
         (tiny_onnx(), old_outputs("y.onnx"), directory("y.rewrite.json"))),
    Case("triton-repo-out-is-a-file", "output", "triton-repo m --out repo", (model(), old_outputs("repo"))),
    Case("triton-repo-version-directory-holds-other-files", "output", "triton-repo m --name mm --out repo",
         (model(), old_outputs("repo/mm/1/model.onnx", "repo/mm/1/calibration.cache", "repo/mm/2/model.onnx"))),

    # data folders
    Case("eval-data-missing", "data", "eval m --data nodata --no-onnx", (model(),)),
    Case("eval-data-empty-folder", "data", "eval m --data d --no-onnx", (model(), directory("d"))),
    Case("eval-data-garbage-image", "data", "eval m --data d --no-onnx",
         (model(), image_folder("d", 5, image=b"not a png"))),
    Case("eval-data-more-classes-than-the-head", "data", "eval m --data d --no-onnx", (model(), image_folder("d", 6))),
    Case("eval-data-unknown-split", "data", "eval m --data d --split bogus --no-onnx",
         (model(), image_folder("d", 5))),
    Case("quantize-calib-fewer-images-than-a-batch", "data", "quantize m --calib d --resize --out q.onnx",
         (model(), jpeg_folder("d"))),
    Case("quantize-calib-missing", "data", "quantize m --calib nodata --out q.onnx", (model(),)),
    Case("bench-unsigned-int8-for-tensorrt", "onnx", "bench q.onnx --backend tensorrt", (unsigned_int8_onnx(),)),
    Case("prune-calib-missing", "data", "prune star m --out o --calib nodata --target-flops 0.7", (model(),)),
    Case("export-parity-data-missing", "data", "export m --out x.onnx --parity-data nodata", (model(),)),
    Case("train-data-missing", "data", "train --data nodata --out o --limit 8 --epochs 1"),
    Case("prune-calib-class-folder-without-images", "data",
         "prune nvit m --calib d --out o --target-flops 0.8 --quiet",
         (model(), jpeg_folder("d", empty_class=True))),
    Case("prune-calib-undecodable-jpeg", "data", "prune nvit m --calib d --out o --target-flops 0.8 --quiet",
         (model(), jpeg_folder("d", bad="broken.jpg"))),
    Case("train-undecodable-jpeg-in-a-loader-worker", "data",
         "train --data d --out o --epochs 1 --batch-size 4 --workers 1 --quiet", (jpeg_folder("d", bad="broken.jpg"),)),

    # devices, precision and processes
    *([] if torch.cuda.is_available() else [
        Case("train-device-cuda-without-a-gpu", "option", "train --out o --limit 8 --epochs 1 --device cuda")]),
    Case("train-amp-fp16-on-cpu", "option", "train --out o --limit 8 --epochs 1 --device cpu --amp fp16"),
    Case("prune-device-not-a-device", "option", "prune nvit m --calib fashion-mnist --out o --device tpu", (model(),)),
    Case("train-world-size-does-not-divide-the-batch", "option", "train --out o --limit 8 --epochs 1 --batch-size 30",
         subprocess=True, env=(("WORLD_SIZE", "4"), ("RANK", "0"), ("LOCAL_RANK", "0"))),
    Case("prune-spvit-resume-of-another-run", "checkpoint",
         "prune spvit m --out o --data fashion-mnist --epochs 1 --limit 64 --val-size 16",
         (model(), spvit_checkpoint("o"))),
    Case("prune-spvit-resume-of-a-checkpoint-of-the-wrong-type", "checkpoint",
         "prune spvit m --out o --data fashion-mnist --epochs 1 --limit 64 --val-size 16",
         (model(), spvit_checkpoint("o", payload=[1, 2, 3]))),

    # latency budgets: tables that do not fit the request, budgets no model reaches
    Case("optimize-no-budget", "option", "optimize m --lut tt.json --out o", (model(), tiny_table())),
    Case("optimize-two-budgets", "option", "optimize m --budget-ms 5 --budget-ratio 0.5 --lut tt.json --out o",
         (model(), tiny_table())),
    Case("optimize-budget-ratio-above-1", "option", "optimize m --budget-ratio 1.5 --lut tt.json --out o",
         (model(), tiny_table())),
    Case("optimize-budget-nan", "option", "optimize m --budget-ms nan --lut tt.json --out o", (model(), tiny_table())),
    Case("optimize-unknown-search", "option", "optimize m --budget-ms 5 --search all --lut tt.json --out o",
         (model(), tiny_table())),
    Case("optimize-unknown-token-method", "option", "optimize m --budget-ms 5 --tokens nvit --lut tt.json --out o",
         (model(), tiny_table())),
    Case("optimize-table-for-other-geometry", "latency table", "optimize m --budget-ms 5 --lut t.json --out o",
         (model(), table())),
    Case("optimize-table-for-other-batch", "latency table", "optimize m --budget-ms 5 --lut tt.json --batch 64 --out o",
         (model(), tiny_table())),
    Case("optimize-table-for-other-backend", "latency table",
         "optimize m --budget-ms 5 --lut tt.json --backend torch --out o", (model(), tiny_table())),
    Case("optimize-table-for-other-device", "latency table", "optimize m --budget-ms 5 --lut tt.json --out o",
         (model(), tiny_table(lambda data: data["metadata"].update(device="Another CPU @ 9.99GHz")))),
    Case("optimize-budget-below-reachable", "latency table", "optimize m --budget-ms 0.000001 --lut tt.json --out o",
         (model(), tiny_table())),
    Case("optimize-out-is-a-file", "output", "optimize m --budget-ms 5 --lut tt.json --out o",
         (model(), tiny_table(), old_outputs("o"))),
    Case("optimize-precisions-without-fp32", "option",
         "optimize m --budget-ms 5 --precisions int8 --lut tt.json --out o", (model(), tiny_table())),
    Case("optimize-int8-lut-without-int8", "option",
         "optimize m --budget-ms 5 --int8-lut tt.json --lut tt.json --out o",
         (model(), tiny_table())),
    Case("optimize-max-drop-negative", "option",
         "optimize m --budget-ms 5 --precisions fp32,int8 --max-drop -1 --lut tt.json --out o",
         (model(), tiny_table())),
    Case("optimize-float-table-as-the-int8-table", "latency table",
         "optimize m --budget-ms 5 --precisions fp32,int8 --int8-lut tt.json --lut tt.json --out o",
         (model(), tiny_table())),
    Case("optimize-int8-table-for-a-float-budget", "latency table", "optimize m --budget-ms 5 --lut tt.json --out o",
         (model(), tiny_table(as_int8))),
    Case("prune-nvit-int8-table-for-a-float-budget", "latency table",
         "prune nvit m --target-latency-ms 5 --lut tt.json --calib fashion-mnist --out o",
         (model(), tiny_table(as_int8))),
    Case("prune-nvit-float-table-for-an-int8-budget", "latency table",
         "prune nvit m --target-latency-ms 5 --lut tt.json --latency-precision int8 --calib fashion-mnist --out o",
         (model(), tiny_table())),
    Case("prune-nvit-int8-budget-without-a-latency-target", "option",
         "prune nvit m --target-flops 0.5 --latency-precision int8 --calib fashion-mnist --out o", (model(),)),
    Case("prune-nvit-latency-table-for-other-geometry", "latency table",
         "prune nvit m --target-latency-ms 5 --lut t.json --calib fashion-mnist --out o", (model(), table())),
    Case("prune-star-latency-without-table", "option",
         "prune star m --target-latency-ms 5 --calib fashion-mnist --out o", (model(),)),
    Case("prune-uniform-latency-unreachable", "latency table",
         "prune uniform m --target-latency-ms 0.000001 --lut tt.json --out o", (model(), tiny_table())),
    Case("prune-uniform-latency-table-for-other-geometry", "latency table",
         "prune uniform m --target-latency-ms 5 --lut t.json --out o", (model(), table())),
    Case("prune-tome-r-larger-than-the-blocks-can-merge", "option", "prune tome m --r 5 --out o", (model(),)),
    Case("prune-tome-r-negative", "option", "prune tome m --r -1 --out o", (model(),)),
    Case("prune-tome-r-nan", "option", "prune tome m --r nan --out o", (model(),)),
    Case("prune-tome-schedule-longer-than-the-depth", "option", "prune tome m --r-per-block 1,1,1,1 --out o",
         (model(),)),
    Case("prune-tome-block-merging-more-than-it-can", "option", "prune tome m --r-per-block 2,8 --out o", (model(),)),
    Case("prune-tome-on-a-model-with-a-token-plan", "spec", "prune tome m --r 2 --out o",
         (spec_edit(blocks0={"tokens": {"keep": 10, "selector": "cls_attn"}}),)),
    Case("spec-tome-merging-more-than-half", "spec", "export m --out x.onnx",
         (spec_edit(blocks0={"tokens": {"keep": 6, "selector": "tome"}}),)),
    Case("spec-tome-beside-another-selector", "spec", "export m --out x.onnx", (tome_beside_cls_attn(),)),
    Case("optimize-width-step-above-1", "option", "optimize m --budget-ms 5 --width-step 1.5 --lut tt.json --out o",
         (model(), tiny_table())),
    Case("optimize-unknown-method-alone", "option", "optimize m --budget-ms 5 --alone star,nope --lut tt.json --out o",
         (model(), tiny_table())),
    Case("optimize-zero-rung-steps", "option", "optimize m --budget-ms 5 --rung-steps 0 --lut tt.json --out o",
         (model(), tiny_table())),
    Case("prune-uniform-latency-target-zero", "option", "prune uniform m --target-latency-ms 0 --lut tt.json --out o",
         (model(), tiny_table())),
    Case("lut-build-round-to-without-for", "option", "lut build --grid quick --round-to 16 --out tables"),
    Case("lut-build-for-out-is-a-file", "output", "lut build --for m --batch 2 --out tables",
         (model(), old_outputs("tables"))),
    Case("lut-build-calibrate-without-for", "option", "lut build --grid quick --calibrate 3 --out tables"),
    Case("lut-build-for-unknown-model", "latency table", "lut build --for nothing --out tables"),
    Case("lut-build-for-and-grid", "option", "lut build --for m --grid quick --out tables", (model(),)),
    # signals
    Case("sigterm-during-export", "signal", "export m --out x.onnx", (model(), old_outputs("x.onnx")),
         subprocess=True, signal=signal.SIGTERM),
    Case("sigint-during-export", "signal", "export m --out x.onnx", (model(), old_outputs("x.onnx")),
         subprocess=True, signal=signal.SIGINT),
]


# --- running a case and checking the promise -----------------------------------------------------------

def snapshot(root: Path) -> dict[str, bytes | None]:
    """Every entry below ``root`` (hidden ones included): file bytes, or None for a directory."""
    return {str(p.relative_to(root)): None if p.is_dir() else p.read_bytes() for p in sorted(root.rglob("*"))}


def run_in_process(case: Case, cwd: Path, monkeypatch, capsys) -> tuple[int, str]:
    monkeypatch.chdir(cwd)
    if case.fault:
        case.fault(monkeypatch)
    threads = torch.get_num_threads()
    try:
        code = main(case.argv.split())
    except SystemExit as exc:
        code = exc.code
    finally:
        monkeypatch.undo()
        torch.set_num_threads(threads)
    return code, capsys.readouterr().err


# A signal row holds the command just before it moves its outputs into place, so the signal always
# lands while the work is staged: a tiny model's export can otherwise finish between the test
# seeing the temporary and sending the signal.
HOLD_BEFORE_COMMIT = (
    "import sys, time; import vitdeploy.io as io; io._replace_all = lambda *args: time.sleep(300); "
    "from vitdeploy.cli import main; sys.exit(main(sys.argv[1:]))"
)


def run_subprocess(case: Case, cwd: Path) -> tuple[int, str]:
    entry = ["-c", HOLD_BEFORE_COMMIT] if case.signal is not None else ["-m", "vitdeploy.cli"]
    command = [sys.executable, *entry, *case.argv.split()]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2]), **dict(case.env)}
    process = subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               text=True)
    if case.signal is not None:
        wait_for_temporary(cwd, process)
        process.send_signal(case.signal)
    _, err = process.communicate(timeout=300)
    return process.returncode, err


def wait_for_temporary(cwd: Path, process: subprocess.Popen, timeout: float = 300.0) -> None:
    """Block until the command has created its hidden .onnx temporary (it is exporting and checking)."""
    deadline = time.monotonic() + timeout
    while not any(p.name.startswith(".") and p.name.endswith(".onnx.tmp") for p in cwd.iterdir()):
        assert process.poll() is None, "the command ended before it started writing"
        assert time.monotonic() < deadline, "the command never started writing"
        time.sleep(0.01)


def expected_exit(case: Case) -> tuple[int, str]:
    if case.signal is not None:
        return 128 + case.signal, "vitdeploy: interrupted"
    return 2, "vitdeploy: error:"


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_bad_input_is_one_line_and_changes_nothing(case: Case, assets, tmp_path, monkeypatch, capsys):
    for setup in case.setup:
        setup(tmp_path, assets)
    before = snapshot(tmp_path)
    cwd = tmp_path / case.cwd
    code, err = run_subprocess(case, cwd) if case.subprocess else run_in_process(case, cwd, monkeypatch, capsys)
    want_code, want_start = expected_exit(case)
    assert "Traceback" not in err, err
    assert err.count("\n") == 1 and err.startswith(want_start), err
    assert code == want_code, err
    assert snapshot(tmp_path) == before


def test_the_catalogue_covers_every_command_and_file_type():
    from vitdeploy.cli import build_parser

    commands = {case.argv.split()[0] for case in CASES}
    lut_actions = {case.argv.split()[1] for case in CASES if case.argv.startswith("lut ")}
    kinds = {case.kind for case in CASES}
    parser_commands = set(build_parser()._subparsers._group_actions[0].choices)
    assert len(CASES) >= 60 and len({case.id for case in CASES}) == len(CASES)
    assert parser_commands <= commands
    assert lut_actions == {"build", "show", "predict", "refresh"}
    assert {"spec.json", "recipe", "latency table", "onnx", "checkpoint", "config.json", "data"} <= kinds


def test_temporaries_of_a_killed_writer_are_removed_by_the_next_write(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / f".x.json.{dead.stdout.strip()}-abc.tmp"
    stale.write_text("half-written")
    live = tmp_path / f".x.json.{os.getpid()}-def.tmp"
    live.write_text("being written")
    write_json_atomic(tmp_path / "x.json", {"ok": 1})
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["x.json", live.name])


def test_outputs_staged_together_stay_old_when_one_cannot_be_moved(tmp_path, monkeypatch):
    from vitdeploy.io import OutputError, atomic_paths

    for name in ("x.onnx", "x.export.json"):
        (tmp_path / name).write_text(f"OLD {name}")
    before = snapshot(tmp_path)
    disk_full_on_replace(monkeypatch, call=2)
    with pytest.raises(OutputError, match="cannot write"):
        with atomic_paths(tmp_path / "x.onnx", tmp_path / "x.export.json") as (onnx_tmp, report_tmp):
            onnx_tmp.write_text("NEW")
            report_tmp.write_text("NEW")
    assert snapshot(tmp_path) == before
