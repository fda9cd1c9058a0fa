"""TensorRT backend without TensorRT: its pure parts, and its call sequence against a strict fake.

The fake ``tensorrt`` module (``make_fake_tensorrt``) has only attributes that exist in the
TensorRT 10 Python API (see docs/tensorrt10-api-notes.md). Reading any other attribute, including
the TensorRT 8 names removed in 10 (``build_engine``, ``max_workspace_size``,
``execute_async_v2``, ``get_binding_index``, ``EXPLICIT_BATCH`` flags), or setting an unknown
attribute, raises ``AttributeError``. Each fake call is recorded, so the tests can pin the exact
order.
"""

import enum
import json
import sys
import types

import pytest
import torch

from vitdeploy.backends import tensorrt as trt_backend
from vitdeploy.backends._base import BuildConfig, ModelSource
from vitdeploy.backends._cache import EngineCache
from vitdeploy.errors import VitDeployError

VERSION = "10.8.0.43"
PLAN = b"serialized-plan"
INPUT, OUTPUT = "input", "logits"
REMOVED_IN_TRT10 = ("build_engine", "max_workspace_size", "execute_async_v2", "execute_v2", "get_binding_index",
                    "num_bindings", "binding_is_input", "set_binding_shape", "max_batch_size", "EXPLICIT_BATCH")


# ------------------------------------------------------------------ the strict fake


class Strict:
    """Instances accept only the public attributes named in ``SETTABLE``; methods come from the class."""

    SETTABLE: frozenset = frozenset()

    def __setattr__(self, name, value):
        if not name.startswith("_") and name not in self.SETTABLE:
            raise AttributeError(f"{type(self).__name__}.{name} cannot be set in TensorRT 10")
        object.__setattr__(self, name, value)


def make_fake_tensorrt(calls: list, *, version=VERSION, parse_ok=True, plan=PLAN,
                       input_shape=(-1, 3, 32, 32), build_log=()):
    """A fake ``tensorrt`` module that records ``(api, args)`` for every call into ``calls``."""

    def record(api, *args):
        calls.append((api, args))

    class Severity(enum.Enum):
        INTERNAL_ERROR = 0
        ERROR = 1
        WARNING = 2
        INFO = 3
        VERBOSE = 4

    class ILogger:
        def __init__(self):
            record("ILogger.__init__")

        def log(self, severity, msg):
            raise NotImplementedError

    ILogger.Severity = Severity

    BuilderFlag = enum.Enum("BuilderFlag", "FP16 BF16 INT8 DEBUG GPU_FALLBACK REFIT DISABLE_TIMING_CACHE TF32 "
                                           "SPARSE_WEIGHTS SAFETY_SCOPE OBEY_PRECISION_CONSTRAINTS "
                                           "PREFER_PRECISION_CONSTRAINTS DIRECT_IO VERSION_COMPATIBLE FP8")
    MemoryPoolType = enum.Enum("MemoryPoolType", "WORKSPACE DLA_MANAGED_SRAM DLA_LOCAL_DRAM DLA_GLOBAL_DRAM "
                                                 "TACTIC_DRAM TACTIC_SHARED_MEMORY")
    NetworkDefinitionCreationFlag = enum.Enum("NetworkDefinitionCreationFlag", "STRONGLY_TYPED")
    TensorIOMode = enum.Enum("TensorIOMode", "NONE INPUT OUTPUT")
    DataType = enum.Enum("DataType", "FLOAT HALF BF16 INT8 INT32 INT64 BOOL UINT8")

    class ITensor(Strict):
        def __init__(self, name, shape):
            self._name, self._shape = name, shape

        name = property(lambda self: self._name)
        shape = property(lambda self: self._shape)
        dtype = property(lambda self: DataType.FLOAT)

    class INetworkDefinition(Strict):
        num_inputs = property(lambda self: 1)

        def get_input(self, index):
            record("INetworkDefinition.get_input", index)
            return ITensor(INPUT, input_shape)

    class ParserError(Strict):
        def code(self):
            return "UNSUPPORTED_NODE"

        def desc(self):
            return "Unsupported operator\nSort"

        def node(self):
            return 7

        def node_name(self):
            return "/blocks.0/Sort"

        def node_operator(self):
            return "Sort"

    class OnnxParser(Strict):
        def __init__(self, network, logger):
            record("OnnxParser", type(network).__name__)
            self._logger = logger

        def parse_from_file(self, model):
            record("OnnxParser.parse_from_file", model)
            return parse_ok

        def parse(self, model, path=None):
            record("OnnxParser.parse")
            return parse_ok

        num_errors = property(lambda self: 0 if parse_ok else 4)

        def get_error(self, index):
            return ParserError()

    class IOptimizationProfile(Strict):
        def set_shape(self, input, min, opt, max):
            record("IOptimizationProfile.set_shape", input, tuple(min), tuple(opt), tuple(max))

    class ITimingCache(Strict):
        def __init__(self, data):
            self._data = data

        def serialize(self):
            record("ITimingCache.serialize")
            return memoryview(b"timing:" + self._data)

    class IBuilderConfig(Strict):
        SETTABLE = frozenset({"builder_optimization_level", "profiling_verbosity", "avg_timing_iterations"})

        def __init__(self):
            self._cache = None
            self._flags = []

        def set_memory_pool_limit(self, pool, pool_size):
            record("IBuilderConfig.set_memory_pool_limit", pool, pool_size)

        def set_flag(self, flag):
            record("IBuilderConfig.set_flag", flag)
            self._flags.append(flag)

        def clear_flag(self, flag):
            record("IBuilderConfig.clear_flag", flag)

        def get_flag(self, flag):
            return flag in self._flags

        def add_optimization_profile(self, profile):
            record("IBuilderConfig.add_optimization_profile")
            return 0

        def create_timing_cache(self, serialized_timing_cache):
            record("IBuilderConfig.create_timing_cache", bytes(serialized_timing_cache))
            return ITimingCache(bytes(serialized_timing_cache))

        def set_timing_cache(self, cache, ignore_mismatch):
            record("IBuilderConfig.set_timing_cache", ignore_mismatch)
            self._cache = cache
            return True

        def get_timing_cache(self):
            record("IBuilderConfig.get_timing_cache")
            return self._cache

    class Builder(Strict):
        def __init__(self, logger):
            assert isinstance(logger, ILogger), "TensorRT needs an ILogger"
            record("Builder")
            self._logger = logger
            self._config = None

        def create_network(self, flags=0):
            record("Builder.create_network", flags)
            return INetworkDefinition()

        def create_builder_config(self):
            record("Builder.create_builder_config")
            self._config = IBuilderConfig()
            return self._config

        def create_optimization_profile(self):
            record("Builder.create_optimization_profile")
            return IOptimizationProfile()

        def build_serialized_network(self, network, config):
            record("Builder.build_serialized_network")
            for severity, message in build_log:
                self._logger.log(Severity[severity], message)
            if BuilderFlag.SPARSE_WEIGHTS in config._flags:
                self._logger.log(Severity.INFO, "(Sparsity) TRT inference plan picked sparse implementation for "
                                                "layers: /blocks.0/mlp/fc1/MatMul")
            return memoryview(plan) if plan is not None else None

    class IExecutionContext(Strict):
        def __init__(self):
            self._batch = None

        def set_input_shape(self, name, shape):
            record("IExecutionContext.set_input_shape", name, tuple(shape))
            self._batch = shape[0]
            return True

        def infer_shapes(self):
            record("IExecutionContext.infer_shapes")
            return []

        def get_tensor_shape(self, name):
            record("IExecutionContext.get_tensor_shape", name)
            return (self._batch, 5)

        def set_tensor_address(self, name, memory):
            record("IExecutionContext.set_tensor_address", name, memory)
            return True

        def execute_async_v3(self, stream_handle):
            record("IExecutionContext.execute_async_v3", stream_handle)
            return True

    class ICudaEngine(Strict):
        num_io_tensors = property(lambda self: 2)

        def get_tensor_name(self, index):
            return (INPUT, OUTPUT)[index]

        def get_tensor_mode(self, name):
            return TensorIOMode.INPUT if name == INPUT else TensorIOMode.OUTPUT

        def get_tensor_dtype(self, name):
            return DataType.FLOAT

        def create_execution_context(self):
            record("ICudaEngine.create_execution_context")
            return IExecutionContext()

    class Runtime(Strict):
        def __init__(self, logger):
            assert isinstance(logger, ILogger)
            record("Runtime")

        def deserialize_cuda_engine(self, serialized_engine):
            record("Runtime.deserialize_cuda_engine")
            return ICudaEngine() if bytes(serialized_engine) == PLAN else None

    module = types.ModuleType("tensorrt")
    for name, value in dict(
        __version__=version, ILogger=ILogger, Logger=ILogger, Builder=Builder, OnnxParser=OnnxParser,
        Runtime=Runtime, BuilderFlag=BuilderFlag, MemoryPoolType=MemoryPoolType, TensorIOMode=TensorIOMode,
        DataType=DataType, NetworkDefinitionCreationFlag=NetworkDefinitionCreationFlag,
    ).items():
        setattr(module, name, value)
    return module


@pytest.fixture
def calls():
    return []


@pytest.fixture
def fake_trt(monkeypatch, calls):
    """Install a fake ``tensorrt``; call it with options to replace the default one."""

    def install(**options):
        module = make_fake_tensorrt(calls, **options)
        monkeypatch.setitem(sys.modules, "tensorrt", module)
        return module

    install()
    return install


@pytest.fixture(scope="module")
def exported_source(tmp_path_factory):
    """A tiny model exported to ONNX before any fake ``tensorrt`` is installed (torch.export inspects it)."""
    from tests.conftest import tiny_model

    source = ModelSource("tiny", tmp_path_factory.mktemp("work"), model=tiny_model())
    source.onnx_path("tensorrt")
    return source


def api_names(calls):
    return [api for api, _ in calls]


class FakeCudaTensor:
    def __init__(self, shape, address):
        self.shape, self._address = shape, address

    def data_ptr(self):
        return self._address


# ------------------------------------------------------------------ pure parts


def test_profile_spans_smallest_to_largest_batch():
    assert trt_backend.profile_shapes(INPUT, (-1, 3, 32, 32), (4, 1, 8)) == (
        (1, 3, 32, 32), (8, 3, 32, 32), (8, 3, 32, 32))


def test_profile_of_a_static_batch_serves_only_that_batch():
    assert trt_backend.profile_shapes(INPUT, (2, 3, 32, 32), (2,)) == ((2, 3, 32, 32),) * 3
    with pytest.raises(VitDeployError, match="fixed batch of 2"):
        trt_backend.profile_shapes(INPUT, (2, 3, 32, 32), (1, 8))


def test_profile_rejects_dynamic_image_dims():
    with pytest.raises(VitDeployError, match="only its batch axis may be dynamic"):
        trt_backend.profile_shapes(INPUT, (-1, 3, -1, -1), (1, 8))


@pytest.mark.parametrize("precision, flags", [("fp32", []), ("fp16", ["FP16"]), ("bf16", ["BF16"])])
def test_precision_flags(precision, flags):
    assert trt_backend.builder_flags(BuildConfig(precision=precision, device="cuda"), None, VERSION) == flags


def test_fp32_leaves_tf32_alone():
    flags = trt_backend.builder_flags(BuildConfig(precision="fp32", device="cuda"), None, VERSION)
    assert "TF32" not in flags


def test_bf16_needs_tensorrt_9():
    with pytest.raises(VitDeployError, match="TensorRT 9"):
        trt_backend.builder_flags(BuildConfig(precision="bf16"), None, "8.6.1.6")
    assert trt_backend.builder_flags(BuildConfig(precision="bf16"), None, "9.3.0.1") == ["BF16"]


@pytest.mark.parametrize("spec_sparsity", ["2:4", trt_backend.SPARSITY_UNKNOWN])
def test_sparse_weights_flag(spec_sparsity):
    config = BuildConfig(precision="fp16", device="cuda", sparse_weights=True)
    assert trt_backend.builder_flags(config, spec_sparsity, VERSION) == ["FP16", "SPARSE_WEIGHTS"]


def test_sparse_weights_need_two_four_weights_and_reduced_precision():
    with pytest.raises(VitDeployError, match="prune with `vitdeploy prune sparse24 MODEL"):
        trt_backend.builder_flags(BuildConfig(precision="fp16", sparse_weights=True), None, VERSION)
    with pytest.raises(VitDeployError, match="--precision fp16"):
        trt_backend.builder_flags(BuildConfig(precision="fp32", sparse_weights=True), "2:4", VERSION)


def test_dense_build_of_a_sparse_spec_sets_no_sparse_flag():
    assert trt_backend.builder_flags(BuildConfig(precision="fp16"), "2:4", VERSION) == ["FP16"]


def test_unknown_precision_is_a_user_error():
    with pytest.raises(VitDeployError, match="unknown precision 'int4'"):
        trt_backend.builder_flags(BuildConfig(precision="int4"), None, VERSION)


def test_engine_cache_key_is_stable_and_tied_to_gpu_and_version():
    config = BuildConfig(precision="fp16", device="cuda")
    key = trt_backend.engine_cache_key("a" * 64, config, "NVIDIA H100", "9.0", VERSION)
    assert key == trt_backend.engine_cache_key("a" * 64, BuildConfig(precision="fp16", device="cuda"),
                                               "NVIDIA H100", "9.0", VERSION)
    others = {
        trt_backend.engine_cache_key("b" * 64, config, "NVIDIA H100", "9.0", VERSION),
        trt_backend.engine_cache_key("a" * 64, BuildConfig(precision="bf16", device="cuda"), "NVIDIA H100", "9.0",
                                     VERSION),
        trt_backend.engine_cache_key("a" * 64, config, "NVIDIA A100", "8.0", VERSION),
        trt_backend.engine_cache_key("a" * 64, config, "NVIDIA H100", "9.0", "10.9.0.34"),
    }
    assert key not in others and len(others) == 4


def test_engine_metadata_records_what_made_the_engine():
    config = BuildConfig(precision="fp16", device="cuda", batch_sizes=(1, 8))
    metadata = trt_backend.engine_metadata(config, ["FP16"], "c" * 64, VERSION, "NVIDIA H100", "9.0", [])
    assert json.loads(json.dumps(metadata))["build_config"]["batch_sizes"] == [1, 8]
    assert metadata["tensorrt"] == VERSION and metadata["gpu"] == "NVIDIA H100"
    assert metadata["compute_capability"] == "9.0" and metadata["onnx_sha256"] == "c" * 64
    assert metadata["builder_flags"] == ["FP16"] and metadata["build_config"]["precision"] == "fp16"
    assert "TF32" in metadata["tf32"]


def test_parser_errors_name_the_failing_nodes(fake_trt):
    error = sys.modules["tensorrt"].OnnxParser(None, None).get_error(0)
    message = str(trt_backend.parser_error("m.onnx", [error] * 5))
    assert "/blocks.0/Sort (Sort)" in message and "and 2 more" in message and "\n" not in message
    assert message.startswith("m.onnx: TensorRT cannot parse")


def test_build_errors_are_one_line():
    message = str(trt_backend.build_error("m.onnx", ["first", "out of\nmemory"]))
    assert "out of memory" in message and "\n" not in message
    assert "no error logged" in str(trt_backend.build_error("m.onnx", []))


def test_dtype_mapping_and_batch_range():
    assert trt_backend.torch_dtype_name(types.SimpleNamespace(name="BF16")) == "bfloat16"
    with pytest.raises(VitDeployError, match="FP8"):
        trt_backend.torch_dtype_name(types.SimpleNamespace(name="FP8"))
    trt_backend.check_batch(8, [1, 8])
    with pytest.raises(VitDeployError, match="outside this engine's profile 1..8"):
        trt_backend.check_batch(9, [1, 8])


# ------------------------------------------------------------------ availability


def test_without_tensorrt_the_backend_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # makes `import tensorrt` raise ImportError
    reason = trt_backend.TensorRTBackend().unavailable_reason()
    assert reason.startswith("TensorRT is not installed (pip install vitdeploy[trt]")


def test_with_tensorrt_but_no_gpu_the_backend_says_so(fake_trt, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert trt_backend.TensorRTBackend().unavailable_reason().startswith("no CUDA GPU")
    assert "NVIDIA GPUs only" in trt_backend.TensorRTBackend().unavailable_reason("cpu")


def test_tensorrt_8_is_refused(fake_trt):
    fake_trt(version="8.6.1.6")
    assert "too old" in trt_backend.TensorRTBackend().unavailable_reason()


# ------------------------------------------------------------------ call sequence against the fake

BUILD_SEQUENCE = [
    "ILogger.__init__", "Builder", "Builder.create_network", "OnnxParser", "OnnxParser.parse_from_file",
    "Builder.create_builder_config", "IBuilderConfig.set_memory_pool_limit", "IBuilderConfig.set_flag",
    "IBuilderConfig.set_flag", "INetworkDefinition.get_input", "Builder.create_optimization_profile",
    "IOptimizationProfile.set_shape", "IBuilderConfig.add_optimization_profile", "IBuilderConfig.create_timing_cache",
    "IBuilderConfig.set_timing_cache", "Builder.build_serialized_network", "IBuilderConfig.get_timing_cache",
    "ITimingCache.serialize",
]


def test_build_makes_exactly_the_tensorrt_10_calls(fake_trt, calls, tmp_path):
    trt = sys.modules["tensorrt"]
    config = BuildConfig(precision="fp16", device="cuda", batch_sizes=(1, 8), workspace_mb=512, sparse_weights=True)
    timing_cache = tmp_path / "timing.cache"
    plan, sparsity_log = trt_backend.build_serialized_engine(tmp_path / "m.onnx", config, ["FP16", "SPARSE_WEIGHTS"],
                                                             timing_cache)
    assert api_names(calls) == BUILD_SEQUENCE
    arguments = dict(calls)
    assert arguments["Builder.create_network"] == (0,)
    assert arguments["OnnxParser.parse_from_file"] == (str(tmp_path / "m.onnx"),)
    assert arguments["IBuilderConfig.set_memory_pool_limit"] == (trt.MemoryPoolType.WORKSPACE, 512 << 20)
    assert [args for api, args in calls if api == "IBuilderConfig.set_flag"] == [
        (trt.BuilderFlag.FP16,), (trt.BuilderFlag.SPARSE_WEIGHTS,)]
    assert arguments["IOptimizationProfile.set_shape"] == (INPUT, (1, 3, 32, 32), (8, 3, 32, 32), (8, 3, 32, 32))
    assert arguments["IBuilderConfig.create_timing_cache"] == (b"",)
    assert arguments["IBuilderConfig.set_timing_cache"] == (False,)
    assert plan == PLAN and isinstance(plan, bytes)
    assert sparsity_log and sparsity_log[0].startswith("(Sparsity)")
    assert timing_cache.read_bytes() == b"timing:"
    assert [p.name for p in tmp_path.iterdir()] == ["timing.cache"], "no temporary files are left behind"
    assert not any(removed in api for api in api_names(calls) for removed in REMOVED_IN_TRT10)


def test_build_reuses_the_timing_cache(fake_trt, calls, tmp_path):
    timing_cache = tmp_path / "timing.cache"
    timing_cache.write_bytes(b"previous")
    trt_backend.build_serialized_engine(tmp_path / "m.onnx", BuildConfig(device="cuda"), [], timing_cache)
    assert dict(calls)["IBuilderConfig.create_timing_cache"] == (b"previous",)
    assert timing_cache.read_bytes() == b"timing:previous"
    assert "IBuilderConfig.set_flag" not in api_names(calls)


def test_static_batch_needs_no_profile(fake_trt, calls, tmp_path):
    fake_trt(input_shape=(2, 3, 32, 32))
    trt_backend.build_serialized_engine(tmp_path / "m.onnx", BuildConfig(device="cuda", batch_sizes=(2,)), [],
                                        tmp_path / "timing.cache")
    assert "Builder.create_optimization_profile" not in api_names(calls)


def test_parse_failure_becomes_a_user_error_naming_nodes(fake_trt, calls, tmp_path):
    fake_trt(parse_ok=False)
    with pytest.raises(VitDeployError, match=r"node /blocks\.0/Sort \(Sort\): Unsupported operator Sort"):
        trt_backend.build_serialized_engine(tmp_path / "m.onnx", BuildConfig(device="cuda"), [], tmp_path / "t.cache")
    assert "Builder.create_builder_config" not in api_names(calls)


def test_build_failure_reports_logged_errors_and_keeps_no_cache(fake_trt, tmp_path):
    fake_trt(plan=None, build_log=[("INFO", "tactic search"), ("ERROR", "Insufficient workspace")])
    with pytest.raises(VitDeployError, match="could not build an engine: Insufficient workspace"):
        trt_backend.build_serialized_engine(tmp_path / "m.onnx", BuildConfig(device="cuda"), [], tmp_path / "t.cache")
    assert not (tmp_path / "t.cache").exists()


def test_run_side_makes_exactly_the_tensorrt_10_calls(fake_trt, calls):
    trt = sys.modules["tensorrt"]
    logger = trt_backend.capturing_logger(trt)
    _runtime, engine, context = trt_backend.load_engine(PLAN, logger)
    inputs, outputs = trt_backend.io_tensor_names(engine)
    shapes = trt_backend.output_shapes(context, INPUT, (4, 3, 32, 32), outputs)
    trt_backend.bind_tensors(context, INPUT, FakeCudaTensor((4, 3, 32, 32), 1000), {OUTPUT: FakeCudaTensor((4, 5), 2000)})
    trt_backend.execute(context, 77)
    assert (inputs, outputs, shapes) == ([INPUT], [OUTPUT], {OUTPUT: (4, 5)})
    assert api_names(calls) == [
        "ILogger.__init__", "Runtime", "Runtime.deserialize_cuda_engine", "ICudaEngine.create_execution_context",
        "IExecutionContext.set_input_shape", "IExecutionContext.infer_shapes", "IExecutionContext.get_tensor_shape",
        "IExecutionContext.set_input_shape", "IExecutionContext.set_tensor_address",
        "IExecutionContext.set_tensor_address", "IExecutionContext.execute_async_v3",
    ]
    addresses = [args for api, args in calls if api == "IExecutionContext.set_tensor_address"]
    assert addresses == [(INPUT, 1000), (OUTPUT, 2000)]
    assert calls[-1] == ("IExecutionContext.execute_async_v3", (77,))


def test_an_engine_from_another_version_is_a_user_error(fake_trt):
    logger = trt_backend.capturing_logger(sys.modules["tensorrt"])
    with pytest.raises(VitDeployError, match="another TensorRT version"):
        trt_backend.load_engine(b"not-this-version", logger)


def test_the_strict_fake_refuses_tensorrt_8_apis(fake_trt):
    trt = sys.modules["tensorrt"]
    builder = trt.Builder(trt_backend.capturing_logger(trt))
    config = builder.create_builder_config()
    with pytest.raises(AttributeError):
        builder.build_engine
    with pytest.raises(AttributeError):
        config.max_workspace_size = 1 << 30
    with pytest.raises(AttributeError):
        trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH
    with pytest.raises(AttributeError):
        trt.BuilderFlag.STRICT_TYPES
    context = trt.Runtime(trt_backend.capturing_logger(trt)).deserialize_cuda_engine(PLAN).create_execution_context()
    with pytest.raises(AttributeError):
        context.execute_async_v2
    with pytest.raises(AttributeError):
        trt.Runtime(trt_backend.capturing_logger(trt)).deserialize_cuda_engine(PLAN).get_binding_index


def test_backend_build_caches_the_engine(exported_source, fake_trt, calls, monkeypatch, tmp_path):
    """Full ``TensorRTBackend.build`` on the fake, with torch's GPU queries faked: build once, then hit the cache."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "Stream", lambda: types.SimpleNamespace(cuda_stream=77))
    monkeypatch.setattr(trt_backend, "gpu_identity", lambda: ("NVIDIA H100", "9.0"))
    cache = EngineCache(tmp_path / "engines")
    config = BuildConfig(precision="fp16", device="cuda", batch_sizes=(1, 8))
    engine = trt_backend.TensorRTBackend(cache).build(exported_source, config)
    assert engine.device == "cuda" and engine.device_name == "NVIDIA H100"
    assert engine.input_name == INPUT and engine.output_names == [OUTPUT]
    assert engine.build_metadata["builder_flags"] == ["FP16"] and engine.build_metadata["tensorrt"] == VERSION
    assert "Builder.build_serialized_network" in api_names(calls)
    stored = sorted(p.suffix for p in cache.root.iterdir())
    assert stored == [".cache", ".engine", ".json"]
    calls.clear()
    trt_backend.TensorRTBackend(cache).build(exported_source, config)
    assert "Builder" not in api_names(calls) and "Runtime.deserialize_cuda_engine" in api_names(calls)


def test_backend_build_refuses_cpu(fake_trt, tmp_path):
    from tests.conftest import tiny_model

    with pytest.raises(VitDeployError, match="NVIDIA GPUs only"):
        trt_backend.TensorRTBackend(EngineCache(tmp_path)).build(ModelSource("tiny", tmp_path, model=tiny_model()),
                                                                 BuildConfig(device="cpu"))
