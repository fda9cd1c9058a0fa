"""``vitdeploy triton-repo``: a model repository for a standalone Triton Inference Server.

Each model becomes ``REPO/<name>/config.pbtxt`` plus ``REPO/<name>/1/model.onnx`` (platform
``onnxruntime_onnx``) or ``REPO/<name>/1/model.plan`` (``tensorrt_plan``, built by vitdeploy's
TensorRT backend on this machine's GPU; a plan only loads in a Triton with the same TensorRT
version and GPU architecture). The config is a ``tritonclient`` ``ModelConfig`` protobuf message
written in text format, parsed back and checked against the ONNX graph it describes.

The tensors are named as ``vitdeploy serve`` names them (``images`` in, ``logits`` out), so the
same clients work with both: the exported graph gets an ``Identity`` from ``images`` to its own
input name. Every model is assembled in a temporary directory first; then each model's version
directory ``1/`` and its ``config.pbtxt`` replace their old copies. Nothing else in the repository
is touched: other models, other versions and other files in a model's directory stay, and a
version directory holding files this command does not write is refused before any work.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

from pydantic import Field

from vitdeploy.backends import BACKENDS, BuildConfig, ModelSource, get_backend
from vitdeploy.errors import VitDeployError
from vitdeploy.io import atomic_dir, check_output_dir, write_bytes_atomic
from vitdeploy.schema import check_fields, named, schema
from vitdeploy.serve.triton import INPUT_NAME, OUTPUT_NAME, model_names

VERSION = "1"
CONFIG_NAME = "config.pbtxt"
ORT_TENSORRT_PRECISIONS = ("fp32", "fp16")


@schema
@dataclass
class RepoConfig:
    """What goes into every model's config.pbtxt, and which engine file is written."""

    target: str = "onnxruntime"
    device: str = "cpu"
    max_batch: Annotated[int, Field(ge=1)] = 32
    preferred_batch: tuple[Annotated[int, Field(ge=1)], ...] = ()
    max_queue_delay_us: Annotated[int, Field(ge=0)] = 1000
    instances: Annotated[int, Field(ge=1)] = 1
    ort_tensorrt: str | None = None
    """Precision of ONNX Runtime's TensorRT execution accelerator (fp32 or fp16); None leaves it off."""

    def validate(self) -> "RepoConfig":
        check_fields(self)
        if self.target not in served_backends():
            raise VitDeployError(f"unknown {named('target')} {self.target!r}: choose {' or '.join(served_backends())}")
        if any(b > self.max_batch for b in self.preferred_batch):
            raise VitDeployError(f"{named('preferred_batch')} sizes must lie in 1..{named('max_batch')} "
                                 f"({self.max_batch})")
        if self.target == "tensorrt" and self.device != "cuda":
            raise VitDeployError(f"{named('target')} tensorrt builds a TensorRT plan, which runs on GPUs only: "
                                 f"pass {named('device')} cuda")
        if self.ort_tensorrt is not None:
            if self.ort_tensorrt not in ORT_TENSORRT_PRECISIONS:
                raise VitDeployError(f"{named('ort_tensorrt')} {self.ort_tensorrt}: choose fp32 or fp16")
            if self.target != "onnxruntime" or self.device != "cuda":
                raise VitDeployError(f"{named('ort_tensorrt')} applies to {named('target')} onnxruntime with "
                                     f"{named('device')} cuda")
        return self


def served_backends() -> dict[str, tuple[str, str]]:
    """Backend name → (Triton platform, model file) for every backend whose engines Triton serves."""
    backends = (get_backend(name, require_available=False) for name in BACKENDS.names())
    return {backend.name: backend.triton for backend in backends if backend.triton is not None}


def engine_files() -> tuple[str, ...]:
    """What a version directory written here holds."""
    return tuple(file for _, file in served_backends().values())


def write_repository(refs: list[str], names: list[str] | None, config: RepoConfig, out: Path,
                     loaded: dict | None = None) -> list[dict]:
    """Write (or update) a Triton model repository at ``out`` for ``refs``; one summary dict per model.
    ``loaded`` maps references to models already loaded (with the user's checkpoint options)."""
    config.validate()
    if config.target == "tensorrt":
        get_backend("tensorrt")  # before any export: a VitDeployError saying what is missing for TensorRT here
    with tempfile.TemporaryDirectory(prefix="vitdeploy-triton-repo-") as work_dir:
        sources = [ModelSource(ref, work_dir, model=(loaded or {}).get(ref)) for ref in refs]
        names = model_names([source.name for source in sources], names)
        for name in names:
            _require_own(out / name)
        staged = Path(work_dir) / "repo"
        written = [write_model(staged / name, name, source, config, Path(work_dir))
                   for name, source in zip(names, sources)]
        for name in names:
            _install(staged / name, out / name)
        return written


def _require_own(model_dir: Path) -> None:
    """Refuse, before any work, a model directory whose version directory or config this would not replace."""
    if model_dir.is_file():
        raise VitDeployError(f"{model_dir} is a file; Triton needs a directory per model there")
    if (model_dir / CONFIG_NAME).is_dir():
        raise VitDeployError(f"{model_dir / CONFIG_NAME} is a directory; remove it or choose another --name")
    check_output_dir(model_dir / VERSION, engine_files())


def _install(staged: Path, model_dir: Path) -> None:
    """Move a staged model's version directory and config into ``model_dir``, each replaced atomically."""
    with atomic_dir(model_dir / VERSION, owned_names=engine_files()) as version_dir:
        for engine in (staged / VERSION).iterdir():
            shutil.copyfile(engine, version_dir / engine.name)
    write_bytes_atomic(model_dir / CONFIG_NAME, (staged / CONFIG_NAME).read_bytes())


def write_model(model_dir: Path, name: str, source: ModelSource, config: RepoConfig, work_dir: Path) -> dict:
    """``model_dir``/config.pbtxt and ``model_dir``/1/<engine file>; the config is checked on the way."""
    import onnx

    platform, file_name = served_backends()[config.target]
    version_dir = model_dir / VERSION
    version_dir.mkdir(parents=True)
    graph = with_input_name(onnx.load(str(source.onnx_path(config.target))), INPUT_NAME)
    onnx_path = (version_dir if config.target == "onnxruntime" else work_dir) / "model.onnx"
    onnx.save(graph, str(onnx_path))
    if config.target == "tensorrt":
        (version_dir / file_name).write_bytes(tensorrt_plan(ModelSource(str(onnx_path), work_dir), config))
    model_config = build_model_config(name, platform, graph_dims(graph), config)
    text = config_text(model_config)
    (model_dir / CONFIG_NAME).write_text(text)
    check_config(parse_config(text), graph)
    return {"name": name, "model": source.ref, "platform": platform, "file": f"{name}/{VERSION}/{file_name}",
            "input": [-1, *model_config.input[0].dims], "output": [-1, *model_config.output[0].dims]}


def with_input_name(graph, name: str):
    """``graph`` with its (single) input renamed to ``name``, through an ``Identity`` to the old name."""
    from onnx import helper

    graph_input = graph.graph.input[0]
    if graph_input.name != name:
        graph.graph.node.insert(0, helper.make_node("Identity", [name], [graph_input.name]))
        graph_input.name = name
    return graph


def graph_dims(graph) -> tuple[list[int], list[int]]:
    """(C, H, W) of the input and (classes,) of the output; ``VitDeployError`` unless both are static past the batch."""
    dims = [[d.dim_value for d in value.type.tensor_type.shape.dim[1:]]
            for value in (graph.graph.input[0], graph.graph.output[0])]
    if len(dims[0]) != 3 or len(dims[1]) != 1 or not all(dims[0] + dims[1]):
        raise VitDeployError(f"expected an image input (batch, C, H, W) and logits (batch, classes) with static "
                             f"sizes past the batch, got {dims[0]} and {dims[1]}")
    return dims[0], dims[1]


def build_model_config(name: str, platform: str, dims: tuple[list[int], list[int]], config: RepoConfig):
    from tritonclient.grpc import model_config_pb2 as pb

    message = pb.ModelConfig(name=name, platform=platform, max_batch_size=config.max_batch)
    message.input.add(name=INPUT_NAME, data_type=pb.TYPE_FP32, dims=dims[0])
    message.output.add(name=OUTPUT_NAME, data_type=pb.TYPE_FP32, dims=dims[1])
    message.dynamic_batching.preferred_batch_size.extend(config.preferred_batch)
    message.dynamic_batching.max_queue_delay_microseconds = config.max_queue_delay_us
    kind = pb.ModelInstanceGroup.KIND_GPU if config.device == "cuda" else pb.ModelInstanceGroup.KIND_CPU
    message.instance_group.add(count=config.instances, kind=kind)
    if config.ort_tensorrt:
        accelerators = message.optimization.execution_accelerators.gpu_execution_accelerator
        accelerators.add(name="tensorrt", parameters={"precision_mode": config.ort_tensorrt.upper()})
    return message


def config_text(message) -> str:
    from google.protobuf import text_format

    return text_format.MessageToString(message)


def parse_config(text: str):
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2 as pb

    return text_format.Parse(text, pb.ModelConfig())


def check_config(message, graph) -> None:
    """Raise unless ``message``'s tensors have the names, FP32 type and dims of ``graph``'s input and output."""
    import onnx
    from tritonclient.grpc import model_config_pb2 as pb

    input_dims, output_dims = graph_dims(graph)
    expected = {"input": (graph.graph.input[0], input_dims), "output": (graph.graph.output[0], output_dims)}
    for kind, tensors in (("input", message.input), ("output", message.output)):
        value, dims = expected[kind]
        if len(tensors) != 1 or tensors[0].name != value.name or list(tensors[0].dims) != dims:
            raise RuntimeError(f"config.pbtxt {kind} {[(t.name, list(t.dims)) for t in tensors]} does not match the "
                               f"ONNX graph's {value.name} {dims}")
        if tensors[0].data_type != pb.TYPE_FP32 or value.type.tensor_type.elem_type != onnx.TensorProto.FLOAT:
            raise RuntimeError(f"config.pbtxt {kind} {value.name}: expected FP32 in both the config and the graph")


def tensorrt_plan(source: ModelSource, config: RepoConfig) -> bytes:
    """A serialized TensorRT engine for ``source``, from vitdeploy's TensorRT backend with a throwaway cache."""
    from vitdeploy.backends import ENGINE_SUFFIX, EngineCache
    from vitdeploy.backends.tensorrt import TensorRTBackend

    with tempfile.TemporaryDirectory(prefix="vitdeploy-plan-") as cache_dir:
        build = BuildConfig(device="cuda", batch_sizes=(1, config.max_batch), threads=None)
        TensorRTBackend(EngineCache(cache_dir)).build(source, build)
        (plan,) = Path(cache_dir).glob(f"*{ENGINE_SUFFIX}")
        return plan.read_bytes()
