"""`vitdeploy serve`'s server: real Triton on loopback ports, real tritonclient clients."""

import asyncio

import numpy as np
import pytest

from tests.serve.conftest import MAX_BATCH
from vitdeploy.errors import VitDeployError
from vitdeploy.serve.triton import INPUT_NAME, OUTPUT_NAME, check_finite, model_names

pytest.importorskip("tritonclient.grpc")

import tritonclient.grpc as grpcclient  # noqa: E402
import tritonclient.grpc.aio as grpc_aio  # noqa: E402
import tritonclient.http as httpclient  # noqa: E402
from tritonclient.utils import InferenceServerException  # noqa: E402


def images_for(model, batch: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((batch, *model.input_shape), dtype=np.float32)


def infer(client_module, client, name: str, images: np.ndarray, input_name: str = INPUT_NAME, datatype: str = "FP32"):
    infer_input = client_module.InferInput(input_name, list(images.shape), datatype)
    infer_input.set_data_from_numpy(images)
    return client.infer(name, [infer_input]).as_numpy(OUTPUT_NAME)


@pytest.fixture
def grpc(server):
    config, _ = server
    with grpcclient.InferenceServerClient(f"127.0.0.1:{config.grpc_port}") as client:
        yield client


def assert_same_logits(served: np.ndarray, expected: np.ndarray) -> None:
    """Equal shapes, every byte there (pytriton under numpy 2 returned right shapes with 0 bytes), finite, close."""
    assert served.shape == expected.shape and served.dtype == np.float32
    assert served.nbytes == expected.size * 4
    assert np.isfinite(served).all() and np.isfinite(expected).all()
    np.testing.assert_allclose(served, expected, rtol=1e-5, atol=1e-5)


def test_both_models_are_served_and_answer_like_the_in_process_engine(server, grpc):
    _, models = server
    assert set(models) == {"fmnist_vit", "tiny"}
    for name, model in models.items():
        images = images_for(model, 5, seed=1)
        assert_same_logits(infer(grpcclient, grpc, name, images), model.engines[0].infer(images))


def test_http_answers_equal_grpc_answers(server, grpc):
    config, models = server
    images = images_for(models["fmnist_vit"], 3, seed=2)
    with httpclient.InferenceServerClient(f"127.0.0.1:{config.http_port}") as http:
        over_http = infer(httpclient, http, "fmnist_vit", images)
    assert_same_logits(over_http, infer(grpcclient, grpc, "fmnist_vit", images))


def test_model_metadata_names_images_and_logits(server, grpc):
    _, models = server
    metadata = grpc.get_model_metadata("tiny", as_json=True)
    assert [(t["name"], t["datatype"], [int(d) for d in t["shape"]]) for t in metadata["inputs"]] == [
        (INPUT_NAME, "FP32", [-1, *models["tiny"].input_shape])]
    assert [(t["name"], [int(d) for d in t["shape"]]) for t in metadata["outputs"]] == [
        (OUTPUT_NAME, [-1, models["tiny"].num_classes])]


BAD_REQUESTS = {
    "wrong image size": (lambda m: np.zeros((1, 3, 16, 16), np.float32), INPUT_NAME, "FP32", "unexpected shape"),
    "batch above max": (lambda m: np.zeros((MAX_BATCH + 1, *m.input_shape), np.float32), INPUT_NAME, "FP32",
                        f"batch-size must be <= {MAX_BATCH}"),
    "wrong dtype": (lambda m: np.zeros((1, *m.input_shape), np.float64), INPUT_NAME, "FP64", "FP32"),
    "wrong input name": (lambda m: np.zeros((1, *m.input_shape), np.float32), "pixels", "FP32", "pixels"),
    "NaN pixel": (lambda m: np.full((2, *m.input_shape), np.nan, np.float32), INPUT_NAME, "FP32", "NaN or infinite"),
    "infinite pixel": (lambda m: np.where(np.arange(np.prod(m.input_shape)).reshape(1, *m.input_shape) == 7,
                                          np.float32(np.inf), np.float32(0)), INPUT_NAME, "FP32", "NaN or infinite"),
}


@pytest.mark.parametrize("case", BAD_REQUESTS)
def test_bad_requests_get_a_clear_error_and_the_server_keeps_serving(server, grpc, case):
    _, models = server
    make, input_name, datatype, message = BAD_REQUESTS[case]
    with pytest.raises(InferenceServerException, match=message):
        infer(grpcclient, grpc, "tiny", make(models["tiny"]), input_name, datatype)
    assert grpc.is_server_live() and grpc.is_model_ready("tiny")
    images = images_for(models["tiny"], 2, seed=3)
    assert_same_logits(infer(grpcclient, grpc, "tiny", images), models["tiny"].engines[0].infer(images))


async def send_all(port: int, requests: list[tuple[str, np.ndarray]], concurrency: int) -> list:
    """Send ``requests`` from ``concurrency`` clients; each result is the logits or the exception."""
    queue = list(enumerate(requests))
    results: list = [None] * len(requests)

    async with grpc_aio.InferenceServerClient(f"127.0.0.1:{port}") as client:
        async def one_client():
            while queue:
                index, (name, images) = queue.pop()
                infer_input = grpcclient.InferInput(INPUT_NAME, list(images.shape), "FP32")
                infer_input.set_data_from_numpy(images)
                try:
                    result = await asyncio.wait_for(client.infer(name, [infer_input]), 60)
                    results[index] = result.as_numpy(OUTPUT_NAME)
                except InferenceServerException as exc:
                    results[index] = exc

        await asyncio.gather(*(one_client() for _ in range(concurrency)))
    return results


def test_many_concurrent_clients_get_exactly_one_correct_answer_each(server, grpc):
    """120 good requests (distinct images, 1-3 each, both models) and 12 malformed ones from 16 clients:
    every good one gets its own images' logits despite dynamic batching, every bad one an error."""
    config, models = server
    rng = np.random.default_rng(4)
    good = [(name, images_for(models[name], int(rng.integers(1, 4)), seed=100 + i))
            for i, name in enumerate(["fmnist_vit", "tiny"] * 60)]
    bad = [("tiny", np.zeros((1, 3, 8, 8), np.float32)), ("tiny", np.zeros((MAX_BATCH + 2, 3, 32, 32), np.float32)),
           ("fmnist_vit", np.zeros((1, 3, 32, 32), np.float32))] * 4
    requests = good + bad
    order = rng.permutation(len(requests))
    results = asyncio.run(send_all(config.grpc_port, [requests[i] for i in order], concurrency=16))
    by_request = dict(zip(order.tolist(), results))
    for index, (name, images) in enumerate(good):
        assert isinstance(by_request[index], np.ndarray), by_request[index]
        assert_same_logits(by_request[index], models[name].engines[0].infer(images))
    assert all(isinstance(by_request[len(good) + i], InferenceServerException) for i in range(len(bad)))
    assert grpc.is_server_live() and grpc.is_model_ready("fmnist_vit") and grpc.is_model_ready("tiny")


def test_check_finite_counts_the_bad_images():
    images = np.zeros((4, 1, 2, 2), np.float32)
    check_finite(images)
    images[1, 0, 0, 0], images[3, 0, 1, 1] = np.nan, -np.inf
    with pytest.raises(ValueError, match="2 of 4 image"):
        check_finite(images)


def test_model_names_default_to_the_models_own_and_must_be_distinct_and_valid():
    assert model_names(["a", "b"], None) == ["a", "b"]
    assert model_names(["a", "a"], ["x", "y"]) == ["x", "y"]
    for own, given, message in ((["a", "a"], None, "both be served as 'a'"), (["a"], ["x", "y"], "one per model"),
                                (["a"], ["bad/name"], "not a valid Triton model name")):
        with pytest.raises(VitDeployError, match=message):
            model_names(own, given)

