"""``vitdeploy serve``: vitdeploy engines behind a real Triton Inference Server, started by pytriton.

pytriton runs ``tritonserver`` as a child process and binds each Triton model to Python callables
in this process, so every model runs on an engine that ``vitdeploy.backends`` builds (one engine
per Triton instance). Triton itself speaks KServe v2 over HTTP and gRPC, batches dynamically and
publishes Prometheus metrics; every endpoint binds the loopback address only.

A model takes ``images`` FP32 [-1, C, H, W], already normalised with the model's mean/std (as the
engines take them), and returns ``logits`` FP32 [-1, classes]. Triton rejects wrong names, shapes,
dtypes and batches above ``max_batch`` before they reach an engine; non-finite images are refused
here. pytriton answers a failing call with one error for every request Triton batched into it, so
a non-finite request also fails the requests that shared its batch.

Two facts about pytriton 0.7 on this project's machines shape the start-up:

- its python-backend stub links the first ``libpython3.X.so`` on the library path, which can be a
  system Python's rather than the running interpreter's (it then crashes on start), so the running
  interpreter's ``LIBDIR`` goes first on ``LD_LIBRARY_PATH``, which pytriton passes to Triton;
- by default pytriton starts Triton with an empty model repository and loads the models after
  Triton answers ready, so ``/v2/health/ready`` says "ready" seconds before any model can answer.
  Its local model store writes every model into the repository before Triton starts, which then
  loads them before it opens its endpoints: ready means every model is loaded;
- Triton waits up to its exit timeout (30 s by default) for models to unload and client
  connections to close when it stops. ``EXIT_TIMEOUT_S`` bounds that; it leaves the python-backend
  models (~2 s on 2 busy cores) time to unload, or Triton leaves their /tmp/folderXXXXXX behind.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import re
import signal
import socket
import sysconfig
import tempfile
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from vitdeploy.backends import BuildConfig, Engine, ModelSource, get_backend
from vitdeploy.errors import VitDeployError
from vitdeploy.io import check_output_files

INPUT_NAME, OUTPUT_NAME = "images", "logits"
LOOPBACK = "127.0.0.1"
EXIT_TIMEOUT_S = 5
KILL_WAIT_S = 5
"""How long a killed, half-started server and its stubs get to disappear before their shared memory goes."""
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
HEALTH_POLL_S = 1.0
MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
"""Names Triton accepts as model directories and URL path parts."""


@dataclass
class ServeConfig:
    """How the models are served: engine build settings, dynamic batching and ports."""

    backend: str = "onnxruntime"
    device: str = "cpu"
    precision: str = "fp32"
    threads: int | None = 2
    max_batch: int = 32
    max_queue_delay_us: int = 1000
    instances: int = 1
    http_port: int = 8000
    grpc_port: int = 8001
    metrics_port: int = 8002
    log_file: Path | None = None
    """Where Triton writes its log (default: this process's stdout and stderr)."""

    def validate(self) -> "ServeConfig":
        if self.max_batch < 1:
            raise VitDeployError("--max-batch must be at least 1")
        if self.max_queue_delay_us < 0:
            raise VitDeployError("--max-queue-delay-us must be 0 or more")
        if self.instances < 1:
            raise VitDeployError("--instances must be at least 1")
        ports = (self.http_port, self.grpc_port, self.metrics_port)
        if not all(1 <= port <= 65535 for port in ports) or len(set(ports)) < len(ports):
            raise VitDeployError(f"--http-port, --grpc-port and --metrics-port must be three different ports "
                                 f"in 1..65535, got {', '.join(map(str, ports))}")
        if self.log_file is not None:
            if not self.log_file.absolute().parent.is_dir():
                raise VitDeployError(f"--log-file {self.log_file}: {self.log_file.parent} is not a directory "
                                     "(Triton does not create it)")
            check_output_files(self.log_file)
        self.build_config()
        return self

    def build_config(self) -> BuildConfig:
        """The engine build settings: every batch from 1 to ``max_batch`` must run."""
        return BuildConfig(precision=self.precision, device=self.device, batch_sizes=(1, self.max_batch),
                           threads=self.threads).validate()


@dataclass
class ServedModel:
    """One Triton model: its name, the engines behind its instances and its tensor shapes."""

    name: str
    ref: str
    engines: list[Engine]
    input_shape: tuple[int, int, int]
    num_classes: int


def build_models(refs: list[str], names: list[str] | None, config: ServeConfig, work_dir: Path,
                 loaded: dict | None = None) -> list[ServedModel]:
    """Build ``config.instances`` engines per model reference, named ``names`` or by the models' own names.
    ``loaded`` maps references to models already loaded (with the user's checkpoint options)."""
    config.validate()
    backend = get_backend(config.backend, require_available=False)
    if not backend.available(config.device):
        raise VitDeployError(f"backend {config.backend} is not available here: "
                             f"{backend.unavailable_reason(config.device)}")
    sources = [ModelSource(ref, work_dir, model=(loaded or {}).get(ref)) for ref in refs]
    names = model_names([source.name for source in sources], names)
    return [build_model(name, source, backend, config) for name, source in zip(names, sources)]


def model_names(own_names: list[str], given: list[str] | None) -> list[str]:
    """``given`` (one per model) or the models' own names, checked to be distinct Triton names."""
    if given and len(given) != len(own_names):
        raise VitDeployError(f"--name given {len(given)} time(s) for {len(own_names)} model(s): give one per model")
    names = given or own_names
    for name in names:
        if not MODEL_NAME.fullmatch(name):
            raise VitDeployError(f"{name!r} is not a valid Triton model name (letters, digits, '_', '.', '-'; "
                                 "starting with a letter or digit): pass --name")
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise VitDeployError(f"two models would both be served as {duplicates[0]!r}: give each one a --name")
    return names


def build_model(name: str, source: ModelSource, backend, config: ServeConfig) -> ServedModel:
    build_config = config.build_config()
    engines = [backend.build(source, build_config) for _ in range(config.instances)]
    shape = source.input_shape()
    logits = engines[0].infer(np.zeros((1, *shape), np.float32))  # a warm-up that also gives the class count
    return ServedModel(name, source.ref, engines, shape, int(logits.shape[1]))


def infer_function(engine: Engine) -> Callable:
    """A pytriton inference callable: Triton's batched requests in, one engine call, logits out."""
    from pytriton.decorators import batch

    @batch
    def infer(**inputs: np.ndarray) -> dict[str, np.ndarray]:
        images = inputs[INPUT_NAME]
        check_finite(images)
        return {OUTPUT_NAME: engine.infer(images)}

    return infer


def check_finite(images: np.ndarray) -> None:
    """Refuse NaN or infinite pixels: they would come back as NaN logits that look like an answer."""
    finite = np.isfinite(images.reshape(len(images), -1)).all(axis=1)
    if not finite.all():
        raise ValueError(f"{int((~finite).sum())} of {len(images)} image(s) in this batch hold NaN or "
                         "infinite values; send finite, normalised pixels")


def bind_model(triton, model: ServedModel, config: ServeConfig) -> None:
    from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor

    triton.bind(
        model_name=model.name,
        infer_func=[infer_function(engine) for engine in model.engines],
        inputs=[Tensor(name=INPUT_NAME, dtype=np.float32, shape=model.input_shape)],
        outputs=[Tensor(name=OUTPUT_NAME, dtype=np.float32, shape=(model.num_classes,))],
        config=ModelConfig(max_batch_size=config.max_batch,
                           batcher=DynamicBatcher(max_queue_delay_microseconds=config.max_queue_delay_us)),
        strict=True,
    )


def triton_config(config: ServeConfig):
    from pytriton.triton import TritonConfig

    return TritonConfig(http_address=LOOPBACK, http_port=config.http_port,
                        grpc_address=LOOPBACK, grpc_port=config.grpc_port,
                        metrics_address=LOOPBACK, metrics_port=config.metrics_port,
                        allow_gpu_metrics=config.device == "cuda", exit_timeout_secs=EXIT_TIMEOUT_S,
                        log_file=config.log_file)


@contextlib.contextmanager
def running_server(models: list[ServedModel], config: ServeConfig) -> Iterator:
    """A started Triton serving ``models``; stopped, with its workspace removed, on exit."""
    from pytriton.exceptions import PyTritonError
    from pytriton.triton import Triton, TritonLifecyclePolicy

    with tempfile.TemporaryDirectory(prefix="vitdeploy-triton-") as tmp, _gevent_passes_interrupts_quietly():
        workspace = Path(tmp) / "workspace"
        triton = Triton(config=triton_config(config), workspace=workspace,
                        triton_lifecycle_policy=TritonLifecyclePolicy(local_model_store=True))  # see the module notes
        try:
            for model in models:
                bind_model(triton, model, config)
            try:
                with running_libpython_first():
                    triton.run()
            except PyTritonError as exc:
                raise VitDeployError(f"Triton Inference Server did not start ({exc}); see its log") from None
            yield triton
        finally:
            with _quiet_pytriton():
                if not triton.is_connected():
                    _kill_starting_servers()
                triton.stop()
                _wait_until_removed(workspace)


def _wait_until_removed(workspace: Path) -> None:
    """pytriton also stops a server from a thread of its own when its models die (as they do when a
    signal stops a server mid-start-up); ``stop`` then returns at once while that thread is still
    removing the workspace, which must not race the removal of the folder around it."""
    deadline = time.monotonic() + KILL_WAIT_S
    while workspace.exists() and time.monotonic() < deadline:
        time.sleep(0.02)


@contextlib.contextmanager
def _gevent_passes_interrupts_quietly() -> Iterator[None]:
    """pytriton waits for the server through an HTTP client that runs on gevent. A signal that arrives
    inside gevent's event loop reaches the main thread as it should, but gevent first prints it with
    a traceback. Listed as "not an error" by this thread's hub, it is passed on without the print."""
    import gevent

    hub = gevent.get_hub()
    added = not issubclass(KeyboardInterrupt, hub.NOT_ERROR)
    if added:
        hub.NOT_ERROR = (*hub.NOT_ERROR, KeyboardInterrupt)
    try:
        yield
    finally:
        if added:  # what else joined the list meanwhile (gevent adds to it) stays
            hub.NOT_ERROR = tuple(kind for kind in hub.NOT_ERROR if kind is not KeyboardInterrupt)


def _kill_starting_servers() -> None:
    """SIGKILL this process's tritonserver children and their python-backend stubs. While it loads its
    models, tritonserver loses the SIGINT that pytriton stops it with (pytriton then waits 30 s), and
    a stub whose server died before it was fully started never exits. Nothing has been served yet.
    The stubs' shared memory (named by pytriton after this process) goes with them."""
    children = _child_processes()
    servers = [pid for pid, name in children.get(os.getpid(), []) if name == "tritonserver"]
    stubs = [pid for server in servers for pid, _ in children.get(server, [])]
    for pid in stubs + servers:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + KILL_WAIT_S
    while any(_running(pid) for pid in stubs + servers) and time.monotonic() < deadline:
        time.sleep(0.02)
    for region in Path("/dev/shm").glob(f"pytrtion{os.getpid()}-*"):
        region.unlink(missing_ok=True)


def _running(pid: int) -> bool:
    """Not exited: a zombie (dead, not yet reaped) does not count."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _child_processes() -> dict[int, list[tuple[int, str]]]:
    """Parent pid → [(pid, command name)] of every process, from /proc."""
    children: dict[int, list[tuple[int, str]]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            name, fields = stat.read_text().rsplit(")", 1)
        except OSError:
            continue
        children.setdefault(int(fields.split()[1]), []).append((int(stat.parent.name), name.split("(", 1)[1]))
    return children


@contextlib.contextmanager
def _quiet_pytriton() -> Iterator[None]:
    """pytriton's warnings while it stops a server killed mid-start-up ("exited with failure", a
    workspace it cannot clean twice): the one line a user sees is "vitdeploy: interrupted"."""
    logger = logging.getLogger("pytriton")
    previous = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(previous)


def require_free_ports(config: ServeConfig) -> None:
    """Refuse ports already taken on the loopback address (Triton would fail, and pytriton wait 2 minutes)."""
    for flag, port in (("--http-port", config.http_port), ("--grpc-port", config.grpc_port),
                       ("--metrics-port", config.metrics_port)):
        with socket.socket() as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((LOOPBACK, port))
            except OSError as exc:
                raise VitDeployError(f"{flag} {port}: cannot listen on {LOOPBACK}:{port} ({exc.strerror}); "
                                     "choose another port") from None


@contextlib.contextmanager
def running_libpython_first() -> Iterator[None]:
    """This interpreter's libpython first on ``LD_LIBRARY_PATH`` while Triton starts (it copies the
    environment then; see the module notes), and the caller's value back afterwards."""
    previous = os.environ.get("LD_LIBRARY_PATH")
    libdir = sysconfig.get_config_var("LIBDIR")
    paths = (previous or "").split(os.pathsep)
    if libdir and paths[0] != libdir:
        os.environ["LD_LIBRARY_PATH"] = os.pathsep.join([libdir, *filter(None, paths)])
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("LD_LIBRARY_PATH", None)
        else:
            os.environ["LD_LIBRARY_PATH"] = previous


def wait_for_stop_signal(triton, on_ready: Callable[[], None] = lambda: None) -> None:
    """Block until SIGINT or SIGTERM; raise if Triton dies first."""
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in STOP_SIGNALS}
    try:
        on_ready()
        while not stop.wait(HEALTH_POLL_S):
            if not triton.is_alive():
                raise RuntimeError("Triton Inference Server stopped unexpectedly; see its log above")
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def serve(refs: list[str], names: list[str] | None, config: ServeConfig,
          on_ready: Callable[[list[ServedModel]], None] = lambda models: None, loaded: dict | None = None) -> None:
    """Build the engines, serve them until SIGINT/SIGTERM, then stop Triton and clean up."""
    require_free_ports(config)
    with tempfile.TemporaryDirectory(prefix="vitdeploy-serve-") as work_dir:
        models = build_models(refs, names, config, Path(work_dir), loaded)
        # Loading and exporting leaves ~400k long-lived objects (torch, the exporter). Frozen, the
        # collector skips them: no full-heap pauses while serving, and exit takes 0.5 s instead of 4.
        gc.freeze()
        with running_server(models, config) as triton:
            wait_for_stop_signal(triton, lambda: on_ready(models))
