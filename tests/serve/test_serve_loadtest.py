"""`vitdeploy loadtest` against the shared real Triton server, and its report files."""

import json

import pytest

from tests.serve.conftest import MAX_BATCH
from vitdeploy.errors import VitDeployError
from vitdeploy.schema import validated
from vitdeploy.serve.loadtest import LoadPlan, metric_totals, parse_endpoint, run_loadtest
from vitdeploy.serve.report import load_result, markdown_report, write_load_result


def endpoint_for(config, protocol: str = "grpc"):
    port = config.grpc_port if protocol == "grpc" else config.http_port
    return parse_endpoint(f"{protocol}://127.0.0.1:{port}", f"http://127.0.0.1:{config.metrics_port}/metrics")


def assert_consistent(row: dict, plan: LoadPlan) -> None:
    assert row["requests"] > 0 and row["errors"] == 0, row["error_samples"]
    assert row["requests"] <= plan.max_requests
    assert row["requests_per_s"] == pytest.approx(row["requests"] / row["seconds"])
    assert row["throughput"] == pytest.approx(row["requests_per_s"] * plan.batch)
    assert 0 < row["median_ms"] <= row["p90_ms"] <= row["p99_ms"]
    assert row["seconds"] < plan.duration_s + plan.request_timeout_s


def test_loadtest_measures_each_level_and_reads_the_server_batch(server):
    config, _ = server
    plan = LoadPlan(concurrency=(1, 12), duration_s=1.5, warmup_s=0.3, max_requests=2000, request_timeout_s=20)
    rows = run_loadtest(endpoint_for(config), ["tiny"], plan)
    assert [(row["model"], row["concurrency"], row["protocol"]) for row in rows] == [("tiny", 1, "grpc"),
                                                                                    ("tiny", 12, "grpc")]
    for row in rows:
        assert_consistent(row, plan)
    # One client waiting for each answer can only ever be batched with itself; twelve clients
    # with a 2 ms queue delay get batched together.
    assert rows[0]["mean_server_batch"] == pytest.approx(1.0)
    assert 1.0 < rows[1]["mean_server_batch"] <= MAX_BATCH


def test_loadtest_over_http_with_several_images_per_request(server):
    config, _ = server
    plan = LoadPlan(concurrency=(2,), duration_s=0.5, warmup_s=0, batch=3, request_timeout_s=20)
    (row,) = run_loadtest(endpoint_for(config, "http"), ["fmnist_vit"], plan)
    assert row["protocol"] == "http"
    assert_consistent(row, plan)
    assert row["mean_server_batch"] >= plan.batch


def test_loadtest_stops_at_the_request_cap(server):
    config, _ = server
    plan = LoadPlan(concurrency=(4,), duration_s=60, warmup_s=0, max_requests=9, request_timeout_s=20)
    (row,) = run_loadtest(endpoint_for(config), ["tiny"], plan)
    assert row["requests"] + row["errors"] == 9
    assert row["seconds"] < 30


def test_loadtest_counts_refused_requests_as_errors(server):
    config, _ = server
    plan = LoadPlan(concurrency=(2,), duration_s=0.5, warmup_s=0, max_requests=6, batch=MAX_BATCH + 1)
    (row,) = run_loadtest(endpoint_for(config), ["tiny"], plan)
    assert (row["requests"], row["errors"]) == (0, 6)
    assert row["median_ms"] is None and row["throughput"] == 0
    assert any("batch-size" in message for message in row["error_samples"])


def test_loadtest_of_an_unknown_model_is_a_user_error(server):
    config, _ = server
    with pytest.raises(VitDeployError, match="no_such_model"):
        run_loadtest(endpoint_for(config), ["no_such_model"], LoadPlan(concurrency=(1,), duration_s=0.1))


def test_report_files_round_trip(tmp_path):
    row = {"model": "m", "protocol": "grpc", "backend": None, "precision": None, "batch": 1, "concurrency": 8,
           "requests": 50, "errors": 1, "seconds": 2.0, "requests_per_s": 25.0, "throughput": 25.0,
           "median_ms": 3.25, "p90_ms": 4.5, "p99_ms": 9.75, "mean_server_batch": 2.5, "error_samples": ["x"]}
    result = load_result("title", [row, {**row, "concurrency": 1, "mean_server_batch": None}], {"url": "u"})
    paths = write_load_result(result, tmp_path / "serve-test")
    assert [p.name for p in paths] == ["serve-test.json", "serve-test.md", "serve-test.png"]
    assert json.loads(paths[0].read_text())["rows"][0] == row
    assert paths[2].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert paths[1].read_text() == markdown_report(result)
    assert "| m     | 8       | 25.0  | 25.0  | 3.25     | 4.50     | 9.75     | 1      | 2.50         |" in \
        paths[1].read_text()


METRICS_TEXT = """# HELP nv_inference_count Number of inferences performed
# TYPE nv_inference_count counter
nv_inference_count{model="tiny",version="1"} 30
nv_inference_count{model="tiny",version="2"} 6
nv_inference_count{model="tiny_big",version="1"} 1000
nv_inference_exec_count{model="tiny",version="1"} 12
nv_inference_request_success{model="tiny",version="1"} 30
"""


def test_metric_totals_sum_one_models_samples_only():
    assert metric_totals(METRICS_TEXT, "tiny") == {"nv_inference_count": 36.0, "nv_inference_exec_count": 12.0}
    assert metric_totals(METRICS_TEXT, "other") == {"nv_inference_count": 0.0, "nv_inference_exec_count": 0.0}


@pytest.mark.parametrize("url, message", [
    ("grpc://10.1.2.3:8001", "loopback"), ("http://example.invalid:8000", "cannot resolve"),
    ("ftp://127.0.0.1:8001", "grpc://HOST:PORT"), ("127.0.0.1", "grpc://HOST:PORT"),
])
def test_endpoints_must_be_loopback_grpc_or_http(url, message):
    with pytest.raises(VitDeployError, match=message):
        parse_endpoint(url)


def test_endpoint_defaults_follow_tritons_port_layout():
    endpoint = parse_endpoint("localhost:9001")
    assert (endpoint.protocol, endpoint.address, endpoint.metrics_url) == (
        "grpc", "localhost:9001", "http://localhost:9002/metrics")
    assert parse_endpoint("http://127.0.0.1:9000").metrics_url == "http://127.0.0.1:9002/metrics"
    assert parse_endpoint("127.0.0.1:8001").metrics_url == "http://127.0.0.1:8002/metrics"
    with pytest.raises(VitDeployError, match="loopback"):
        parse_endpoint("grpc://127.0.0.1:9001", "http://192.168.1.1:8002/metrics")


@pytest.fixture
def silent_server():
    """A loopback port that accepts connections and never answers; yields the port."""
    import socket
    import threading

    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.1)
    stop, accepted = threading.Event(), []

    def accept():
        while not stop.is_set():
            try:
                accepted.append(listener.accept()[0])
            except TimeoutError:
                pass

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield listener.getsockname()[1]
    stop.set()
    thread.join()
    for connection in accepted:
        connection.close()
    listener.close()


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_a_server_that_never_answers_is_one_line_within_the_timeout(silent_server, protocol):
    import time

    from tests.conftest import run_cli

    started = time.monotonic()
    result = run_cli("loadtest", f"{protocol}://127.0.0.1:{silent_server}", "--model", "m", "--timeout", "1",
                     "--duration", "1", "--metrics-url", f"http://127.0.0.1:{silent_server}/metrics")
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith("vitdeploy: error: the server did not answer within --timeout 1 s")
    assert time.monotonic() - started < 30


@pytest.mark.parametrize("fields, on_the_command_line, elsewhere", [
    ({"duration_s": 0.0}, "^--duration: Input should be greater than 0", "^duration_s: Input should be greater than 0"),
    ({"request_timeout_s": 4000.0}, "^--timeout: Input should be less than or equal to 3600",
     "^request_timeout_s: Input should be less than or equal to 3600"),
    ({"concurrency": (1, 0)}, "^--concurrency.1: Input should be greater than or equal to 1",
     "^concurrency.1: Input should be greater than or equal to 1"),
    ({"concurrency": ()}, "^--concurrency: ", "^concurrency: "),
])
def test_a_bad_plan_names_the_flag_on_the_command_line_and_the_field_elsewhere(fields, on_the_command_line, elsewhere):
    with pytest.raises(VitDeployError, match=on_the_command_line):
        validated(LoadPlan(**fields), LoadPlan.flag)
    with pytest.raises(VitDeployError, match=elsewhere):
        LoadPlan(**fields).validate()
