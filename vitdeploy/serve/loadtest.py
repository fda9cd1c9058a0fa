"""``vitdeploy loadtest``: a closed-loop load generator for a Triton server on this machine.

At each concurrency level, that many clients (coroutines sharing one ``tritonclient`` asyncio
client, gRPC or HTTP) each send a request, wait for its answer and send the next, until the level's
time or request budget runs out. Every answer is checked: it must hold ``batch`` rows of finite
logits of the model's class count, or it counts as an error. The server's mean batch size comes
from its Prometheus metrics, read before and after each level:
Δ``nv_inference_count`` ÷ Δ``nv_inference_exec_count`` for the model.

Only loopback addresses are accepted: this is a tool for measuring a server on this machine,
not for sending load elsewhere.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
import time
import urllib.request
from dataclasses import asdict, dataclass
from typing import Annotated, ClassVar
from urllib.parse import urlsplit

import numpy as np
from pydantic import Field

from vitdeploy.errors import VitDeployError
from vitdeploy.schema import check_fields, flag_name, schema

PROTOCOLS = ("grpc", "http")
METRICS_PORT_OFFSET = {"http": 2, "grpc": 1}
"""Triton's (and ``vitdeploy serve``'s) port layout: HTTP 8000, gRPC 8001, metrics 8002. Without
--metrics-url the metrics port is the URL's port moved by this offset."""
METRICS = ("nv_inference_count", "nv_inference_exec_count")
METRIC_LINE = re.compile(r"^(\w+)\{([^}]*)\}\s+(\S+)")
MAX_CONCURRENCY = 4096
"""Clients per level: each is an open connection and a task in one event loop."""
ERRORS_KEPT = 3
"""Distinct error messages kept per level, to say what went wrong without flooding the report."""


MAX_SECONDS = 3600
"""The longest duration, warm-up and request timeout a load test accepts."""


@schema
@dataclass
class LoadPlan:
    concurrency: Annotated[tuple[Annotated[int, Field(ge=1)], ...], Field(min_length=1)] = (1, 8, 32)
    duration_s: Annotated[float, Field(gt=0, le=MAX_SECONDS)] = 10.0
    """Time per concurrency level; the level also ends after ``max_requests``."""
    max_requests: Annotated[int, Field(ge=1)] = 100_000
    batch: Annotated[int, Field(ge=1)] = 1
    """Images per request."""
    warmup_s: Annotated[float, Field(ge=0, le=MAX_SECONDS)] = 1.0
    """Untimed load at each level before the timed part."""
    request_timeout_s: Annotated[float, Field(gt=0, le=MAX_SECONDS)] = 30.0
    seed: int = 0

    FLAGS: ClassVar[dict[str, str]] = {"duration_s": "--duration", "warmup_s": "--warmup",
                                       "request_timeout_s": "--timeout"}
    """The command-line flags whose names differ from their fields'."""

    def validate(self) -> "LoadPlan":
        check_fields(self)
        return self

    @classmethod
    def flag(cls, field: str) -> str:
        """The flag of a field (or of a field's item, such as ``concurrency.1``)."""
        head, dot, rest = field.partition(".")
        return cls.FLAGS.get(head, flag_name(head)) + dot + rest


@dataclass
class Endpoint:
    protocol: str
    address: str
    """host:port, as tritonclient takes it."""
    metrics_url: str


@dataclass
class LevelResult:
    """What one concurrency level measured; latencies in ms, throughput in images/s."""

    concurrency: int
    requests: int
    errors: int
    seconds: float
    requests_per_s: float
    throughput: float
    median_ms: float | None
    p90_ms: float | None
    p99_ms: float | None
    mean_server_batch: float | None
    error_samples: list[str]


def default_metrics_url(protocol: str, host: str, port: int) -> str:
    """Where Triton's metrics are when its ports follow its default layout (see METRICS_PORT_OFFSET)."""
    return f"http://{_host(host)}:{min(port + METRICS_PORT_OFFSET[protocol], 65535)}/metrics"


def parse_endpoint(url: str, metrics_url: str | None = None) -> Endpoint:
    """``grpc://host:port``, ``http://host:port`` or ``host:port`` (gRPC); the host must be loopback."""
    parts = _split(url if "://" in url else f"grpc://{url}", url)
    if parts.scheme not in PROTOCOLS or not parts.hostname or _port(parts, url) is None \
            or parts.path not in ("", "/"):
        raise VitDeployError(f"{url}: give the server as grpc://HOST:PORT or http://HOST:PORT")
    require_loopback(parts.hostname, url)
    metrics_url = metrics_url or default_metrics_url(parts.scheme, parts.hostname, parts.port)
    metrics = _split(metrics_url, metrics_url)
    if metrics.scheme != "http" or not metrics.hostname:
        raise VitDeployError(f"--metrics-url {metrics_url}: give http://HOST:PORT/metrics")
    _port(metrics, metrics_url)
    require_loopback(metrics.hostname, metrics_url)
    return Endpoint(parts.scheme, f"{_host(parts.hostname)}:{parts.port}", metrics_url)


def _split(text: str, url: str):
    """``urlsplit`` with its host read, so that a malformed one ("[::1", "[127.0.0.1]") is one line."""
    try:
        parts = urlsplit(text)
        parts.hostname  # noqa: B018 - raises for a malformed bracketed host
    except ValueError as exc:
        raise VitDeployError(f"{url}: not a valid URL ({exc})") from None
    return parts


def _host(hostname: str) -> str:
    """``hostname`` as a URL writes it: an IPv6 address in brackets."""
    return f"[{hostname}]" if ":" in hostname else hostname


def _port(parts, url: str) -> int | None:
    """The URL's port; one line for a port that is not a number in 1..65535."""
    try:
        port = parts.port
    except ValueError:
        raise VitDeployError(f"{url}: the port must be a whole number in 1..65535") from None
    if port == 0:
        raise VitDeployError(f"{url}: the port must be a whole number in 1..65535")
    return port


def require_loopback(host: str, url: str) -> None:
    try:
        address = ipaddress.ip_address(socket.getaddrinfo(host, None)[0][4][0])
    except (OSError, ValueError, IndexError):
        raise VitDeployError(f"{url}: cannot resolve {host}") from None
    if not address.is_loopback:
        raise VitDeployError(f"{url}: loadtest only sends load to this machine (a loopback address such as "
                             f"127.0.0.1), not to {address}")


def client_module(protocol: str):
    """tritonclient's asyncio client module for ``protocol``."""
    if protocol == "grpc":
        import tritonclient.grpc.aio as module
    else:
        import tritonclient.http.aio as module
    return module


def open_client(endpoint: Endpoint, concurrency: int):
    module = client_module(endpoint.protocol)
    if endpoint.protocol == "http":
        return module.InferenceServerClient(endpoint.address, conn_limit=max(concurrency, 1))
    return module.InferenceServerClient(endpoint.address)


async def model_io(client, protocol: str, model: str, timeout_s: float) -> tuple[dict, dict]:
    """The model's (single) input and output as metadata dicts with int shapes; a ``VitDeployError`` if
    absent, or if the server does not answer within ``timeout_s``."""
    from tritonclient.utils import InferenceServerException

    try:
        as_dict = {"as_json": True} if protocol == "grpc" else {}  # HTTP answers with a dict anyway
        metadata = await asyncio.wait_for(client.get_model_metadata(model, **as_dict), timeout_s)
    except asyncio.TimeoutError:
        raise VitDeployError(f"the server did not answer within --timeout {timeout_s:g} s") from None
    except InferenceServerException as exc:
        raise VitDeployError(f"model {model!r}: {exc.message()}") from None
    except OSError as exc:  # the HTTP client's connection errors
        raise VitDeployError(f"cannot reach the server: {exc.strerror or type(exc).__name__}") from None
    tensors = [{**t, "shape": [int(d) for d in t["shape"]]} for t in (metadata["inputs"][0], metadata["outputs"][0])]
    return tensors[0], tensors[1]


def request_inputs(module, tensor: dict, batch: int, seed: int) -> list:
    """One request's input: ``batch`` seeded standard-normal images in the model's shape."""
    if tensor["datatype"] != "FP32":
        raise VitDeployError(f"input {tensor['name']} is {tensor['datatype']}; loadtest sends FP32 images")
    shape = [batch, *tensor["shape"][1:]]
    images = np.random.default_rng(seed).standard_normal(shape, dtype=np.float32)
    infer_input = module.InferInput(tensor["name"], shape, "FP32")
    infer_input.set_data_from_numpy(images)
    return [infer_input]


def check_answer(result, output: dict, batch: int) -> None:
    """Raise ``ValueError`` unless the answer holds ``batch`` rows of finite logits of the output's width."""
    logits = result.as_numpy(output["name"])
    expected = (batch, *output["shape"][1:])
    if logits is None or logits.shape != expected:
        raise ValueError(f"answer {output['name']} has shape {None if logits is None else logits.shape}, "
                         f"expected {expected}")
    if not np.isfinite(logits).all():
        raise ValueError(f"answer {output['name']} holds NaN or infinite values")


async def closed_loop(client, model: str, inputs: list, output: dict, concurrency: int, seconds: float,
                      max_requests: int, plan: LoadPlan) -> tuple[list[float], list[str], float]:
    """``concurrency`` clients, each sending its next request when the last one is answered.

    Returns the latencies (s) of correct answers, the errors' messages and the elapsed time.
    """
    from tritonclient.utils import InferenceServerException

    latencies: list[float] = []
    errors: list[str] = []
    issued = 0
    started = time.perf_counter()
    deadline = started + seconds

    async def one_client() -> None:
        nonlocal issued
        while issued < max_requests and time.perf_counter() < deadline:
            issued += 1
            sent = time.perf_counter()
            try:
                result = await asyncio.wait_for(client.infer(model, inputs), plan.request_timeout_s)
                check_answer(result, output, plan.batch)
            except (InferenceServerException, asyncio.TimeoutError, ValueError, OSError) as exc:
                errors.append(error_text(exc))
                continue
            latencies.append(time.perf_counter() - sent)

    await asyncio.gather(*(one_client() for _ in range(concurrency)))
    return latencies, errors, time.perf_counter() - started


def error_text(exc: Exception) -> str:
    from tritonclient.utils import InferenceServerException

    if isinstance(exc, InferenceServerException):
        return exc.message() or str(exc)
    if isinstance(exc, asyncio.TimeoutError):
        return "no answer within the request timeout"
    return str(exc)


def server_counts(metrics_url: str, model: str) -> dict[str, float]:
    """The model's ``nv_inference_count`` and ``nv_inference_exec_count`` (summed over versions) from /metrics."""
    try:
        with urllib.request.urlopen(metrics_url, timeout=10) as response:
            text = response.read().decode()
    except OSError as exc:
        raise VitDeployError(f"cannot read the server's metrics at {metrics_url} ({exc}): pass --metrics-url") from None
    return metric_totals(text, model)


def metric_totals(text: str, model: str) -> dict[str, float]:
    """Sum each of ``METRICS`` over the samples labelled ``model="<model>"`` in Prometheus text format."""
    totals = dict.fromkeys(METRICS, 0.0)
    for line in text.splitlines():
        match = METRIC_LINE.match(line)
        if match and match[1] in totals and f'model="{model}"' in match[2].split(","):
            totals[match[1]] += float(match[3])
    return totals


def level_result(concurrency: int, latencies: list[float], errors: list[str], seconds: float, batch: int,
                 before: dict[str, float], after: dict[str, float]) -> LevelResult:
    executions = after["nv_inference_exec_count"] - before["nv_inference_exec_count"]
    inferences = after["nv_inference_count"] - before["nv_inference_count"]
    ms = np.percentile(np.array(latencies) * 1e3, [50, 90, 99]).tolist() if latencies else [None] * 3
    return LevelResult(
        concurrency=concurrency, requests=len(latencies), errors=len(errors), seconds=seconds,
        requests_per_s=len(latencies) / seconds, throughput=len(latencies) * batch / seconds,
        median_ms=ms[0], p90_ms=ms[1], p99_ms=ms[2],
        mean_server_batch=inferences / executions if executions > 0 else None,
        error_samples=list(dict.fromkeys(errors))[:ERRORS_KEPT],
    )


async def load_levels(endpoint: Endpoint, model: str, plan: LoadPlan) -> list[LevelResult]:
    module = client_module(endpoint.protocol)
    client = open_client(endpoint, max(plan.concurrency))
    try:
        model_input, model_output = await model_io(client, endpoint.protocol, model, plan.request_timeout_s)
        inputs = request_inputs(module, model_input, plan.batch, plan.seed)
        results = []
        for concurrency in plan.concurrency:
            if plan.warmup_s:
                await closed_loop(client, model, inputs, model_output, concurrency, plan.warmup_s,
                                  plan.max_requests, plan)
            before = server_counts(endpoint.metrics_url, model)
            latencies, errors, seconds = await closed_loop(client, model, inputs, model_output, concurrency,
                                                           plan.duration_s, plan.max_requests, plan)
            after = server_counts(endpoint.metrics_url, model)
            results.append(level_result(concurrency, latencies, errors, seconds, plan.batch, before, after))
        return results
    finally:
        await client.close()


def run_loadtest(endpoint: Endpoint, models: list[str], plan: LoadPlan) -> list[dict]:
    """One report row per (model, concurrency level), models measured one after the other."""
    plan.validate()
    rows = []
    for model in models:
        for level in asyncio.run(load_levels(endpoint, model, plan)):
            rows.append({"model": model, "protocol": endpoint.protocol, "backend": None, "precision": None,
                         "batch": plan.batch, **asdict(level)})
    return rows
