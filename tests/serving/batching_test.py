"""Server-side batching on the real tiny export, over real HTTP and the official gRPC stubs: concurrent requests
of REST and gRPC merge into shared model calls, each answered with its own rows; batches stay within
max_batch_size (read from the server's metrics); one bad request fails alone; requests that do not batch still
work; a full batch queue answers 429 / RESOURCE_EXHAUSTED. The defaults are serving/batching.config's."""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import pathlib
import re
import threading
import urllib.request

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from ecg_tfx.core import schema
from ecg_tfx.core.model_spec import ModelSpec
from ecg_tfx.serving import client
from ecg_tfx.serving.batching import Batcher, BatchingParameters
from ecg_tfx.serving.grpc.server import GrpcServer
from ecg_tfx.serving.limits import RequestSlots, ServerLimits
from ecg_tfx.serving.model_requests import run_signature
from ecg_tfx.serving.rest.http import METRICS_PATH, Server
from ecg_tfx.serving.servables import Model, Servable

CONFIG = pathlib.Path(__file__).resolve().parents[2] / "serving" / "batching.config"
LIMITS = ServerLimits(max_request_bytes=4 * 1024 * 1024)


@contextlib.contextmanager
def batching_servers(servable: Servable, parameters: BatchingParameters):
    """REST and gRPC servers sharing one Batcher, as `ecg_tfx.serve` runs them: (rest, grpc stub, batcher)."""
    batcher = Batcher(parameters)
    model = Model("ecg", {1: dataclasses.replace(servable, batcher=batcher)}, {})
    slots = RequestSlots(LIMITS.max_concurrent_requests)
    try:
        with Server({"ecg": model}, limits=LIMITS, num_threads=LIMITS.max_concurrent_requests, slots=slots) as rest, \
                GrpcServer({"ecg": model}, limits=LIMITS, num_threads=LIMITS.max_concurrent_requests,
                           slots=slots) as rpc, grpc.insecure_channel(rpc.target) as channel:
            yield rest, prediction_service_pb2_grpc.PredictionServiceStub(channel), batcher
    finally:
        batcher.close()


def batch_sizes(rest: Server) -> dict[str, int]:
    """The batch-size histogram's cumulative buckets from the server's metrics page, and the refusals."""
    with urllib.request.urlopen(rest.url + METRICS_PATH, timeout=60) as response:
        text = response.read().decode()
    buckets = dict(re.findall(r'ecg_tfx_batching_processed_batch_size_bucket\{le="([^"]+)"\} (\d+)', text))
    return {**{le: int(count) for le, count in buckets.items()},
            "sum": int(re.search(r"processed_batch_size_sum (\d+)", text).group(1)),
            "rejected": int(re.search(r"ecg_tfx_batching_rejected_total (\d+)", text).group(1))}


def windows(spec: ModelSpec, count: int, seed: int) -> list[bytes]:
    signal = np.random.default_rng(seed).normal(scale=0.3, size=(count, spec.window_samples, len(spec.leads)))
    return [schema.make_example(s.astype(np.float32), spec.leads, spec.sample_rate_hz, [], [], f"r{i}", "p", 0)
            for i, s in enumerate(signal)]


def recordings(spec: ModelSpec, count: int, seed: int, seconds: float = 10.0) -> np.ndarray:
    samples = int(seconds * spec.sample_rate_hz)
    return np.random.default_rng(seed).normal(scale=0.3, size=(count, samples, len(spec.leads))).astype(np.float32)


def grpc_predict_examples(stub, examples: list[bytes]) -> np.ndarray:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "ecg"
    request.model_spec.signature_name = "serve_examples"
    request.inputs["examples"].CopyFrom(tf.make_tensor_proto(np.array(examples, dtype=object)))
    return tf.make_ndarray(stub.Predict(request, timeout=60).outputs["probabilities"])


def client_predict(stub, ecg: np.ndarray, spec: ModelSpec) -> np.ndarray:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "ecg"
    request.inputs["ecg"].CopyFrom(tf.make_tensor_proto(ecg))
    request.inputs["sample_rate"].CopyFrom(tf.make_tensor_proto(np.float32([spec.sample_rate_hz] * len(ecg))))
    return tf.make_ndarray(stub.Predict(request, timeout=60).outputs["probabilities"])


def test_batching_config_holds_the_servers_defaults():
    assert BatchingParameters.from_text(CONFIG.read_text()) == BatchingParameters()
    assert BatchingParameters.from_text(BatchingParameters(8, 0, 3, 1).to_text()) == BatchingParameters(8, 0, 3, 1)
    with pytest.raises(ValueError, match="unsupported batching parameter allowed_batch_sizes"):
        BatchingParameters.from_text("max_batch_size { value: 4 }\nallowed_batch_sizes { value: 4 }")
    with pytest.raises(ValueError, match="unsupported batching parameter pad_variable_length_inputs"):
        BatchingParameters.from_text("pad_variable_length_inputs { value: true }")


def test_concurrent_requests_share_batches_and_each_gets_its_own_rows(tiny_servable, tiny_spec):
    """18 rows in requests of 1-4 rows over REST and gRPC, three signatures; batches of at most 4 rows."""
    examples = windows(tiny_spec, 10, seed=5)
    ecg = recordings(tiny_spec, 4, seed=6, seconds=5.0)
    parts = [examples[0:1], examples[1:3], examples[3:6], examples[6:7], examples[7:10]]
    with batching_servers(tiny_servable, BatchingParameters(4, 1_000_000, 64, 2)) as (rest_server, stub, _):
        rest = client.RestClient(rest_server.url, "ecg")
        jobs = [lambda p=p: rest.predict_examples(p)["probabilities"] for p in parts[:3]]
        jobs += [lambda p=p: grpc_predict_examples(stub, p) for p in parts[3:]]
        jobs += [lambda i=i: rest.predict(ecg[i:i + 1], tiny_spec.sample_rate_hz)["probabilities"] for i in range(2)]
        jobs += [lambda i=i: client_predict(stub, ecg[i:i + 1], tiny_spec) for i in range(2, 4)]
        jobs += [lambda: np.array([[s for _, s in row] for row in rest.classify(examples[:4])])]
        with concurrent.futures.ThreadPoolExecutor(len(jobs)) as pool:
            answers = list(pool.map(lambda job: job(), jobs))
        sizes = batch_sizes(rest_server)
    for part, answer in zip(parts, answers[:5]):
        alone = run_signature(tiny_servable, "serve_examples", {"examples": np.array(part, dtype=object)})
        np.testing.assert_allclose(answer, alone["probabilities"], atol=1e-5)
    for i, answer in enumerate(answers[5:9]):
        alone = run_signature(tiny_servable, "serving_default", {
            "ecg": ecg[i:i + 1], "sample_rate": np.float32([tiny_spec.sample_rate_hz])})
        np.testing.assert_allclose(answer, alone["probabilities"], atol=1e-5)
    classify_alone = run_signature(tiny_servable, "classify", {"inputs": np.array(examples[:4], dtype=object)})
    np.testing.assert_allclose(answers[9], classify_alone["scores"], atol=1e-5)
    assert sizes["sum"] == 10 + 4 + 4  # every row ran exactly once
    assert sizes["4"] == sizes["+Inf"], sizes  # no batch above max_batch_size
    assert sizes["1"] < sizes["+Inf"], sizes  # and requests were merged


def test_a_bad_request_fails_alone_in_its_batch(tiny_servable, tiny_spec):
    good = windows(tiny_spec, 3, seed=7)
    leads = list(reversed(tiny_spec.leads))
    bad = schema.make_example(np.zeros((tiny_spec.window_samples, len(leads)), np.float32), leads,
                              tiny_spec.sample_rate_hz, [], [], "bad", "p", 0)
    with batching_servers(tiny_servable, BatchingParameters(4, 10_000_000, 64, 1)) as (rest_server, _, _):
        rest = client.RestClient(rest_server.url, "ecg")

        def ask(example: bytes) -> np.ndarray | client.ServingError:
            try:
                return rest.predict_examples([example])["probabilities"]
            except client.ServingError as error:
                return error

        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            answers = list(pool.map(ask, [good[0], bad, good[1], good[2]]))
        sizes = batch_sizes(rest_server)
    assert sizes["4"] - sizes["3"] == 1, sizes  # the four were merged into one call, which failed,
    assert sizes["1"] == sizes["+Inf"] - 1 == 4, sizes  # so each then ran alone
    assert isinstance(answers[1], client.ServingError) and answers[1].status == 400, answers[1]
    assert "ecg/leads" in answers[1].message
    for example, answer in zip(good, answers[:1] + answers[2:]):
        alone = run_signature(tiny_servable, "serve_examples", {"examples": np.array([example], dtype=object)})
        np.testing.assert_allclose(answer, alone["probabilities"], atol=1e-5)


def test_requests_that_do_not_batch_still_work(tiny_servable, tiny_spec):
    """More rows than max_batch_size and mixed sample rates run alone; a length of its own batches alone."""
    examples = windows(tiny_spec, 5, seed=8)
    ecg = recordings(tiny_spec, 2, seed=9, seconds=4.0)
    with batching_servers(tiny_servable, BatchingParameters(4, 1000, 64, 2)) as (rest_server, stub, _):
        rest = client.RestClient(rest_server.url, "ecg")
        large = grpc_predict_examples(stub, examples)
        own_length = rest.predict(ecg, tiny_spec.sample_rate_hz)["probabilities"]
        with pytest.raises(client.ServingError, match="must share one sample_rate"):
            rest.predict(ecg, np.float32([tiny_spec.sample_rate_hz, 2 * tiny_spec.sample_rate_hz]))
        sizes = batch_sizes(rest_server)
    alone = run_signature(tiny_servable, "serve_examples", {"examples": np.array(examples, dtype=object)})
    np.testing.assert_allclose(large, alone["probabilities"], atol=1e-5)
    alone = run_signature(tiny_servable, "serving_default",
                          {"ecg": ecg, "sample_rate": np.float32([tiny_spec.sample_rate_hz] * 2)})
    np.testing.assert_allclose(own_length, alone["probabilities"], atol=1e-5)
    assert sizes["+Inf"] == sizes["2"] == 1 and sizes["1"] == 0, sizes  # only the 4-s pair went through a batch


def test_a_full_batch_queue_answers_429_and_resource_exhausted(tiny_servable, tiny_spec):
    """One batch may wait (max_enqueued_batches=1): a request that needs a second one is refused at once."""
    first, refused = windows(tiny_spec, 1, seed=10), windows(tiny_spec, 2, seed=11)
    filler = windows(tiny_spec, 1, seed=12)
    with batching_servers(tiny_servable, BatchingParameters(2, 600_000_000, 1, 1)) as (rest_server, stub, batcher):
        rest = client.RestClient(rest_server.url, "ecg")
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            waiting = pool.submit(rest.predict_examples, first)
            while batcher.queued_rows() < 1 and not waiting.done():
                threading.Event().wait(0.01)
            with pytest.raises(client.ServingError) as rest_refusal:
                rest.predict_examples(refused)
            with pytest.raises(grpc.RpcError) as grpc_refusal:
                grpc_predict_examples(stub, refused)
            filled = rest.predict_examples(filler)["probabilities"]  # fills the waiting batch, which then runs
            answered = waiting.result(timeout=120)["probabilities"]
        sizes = batch_sizes(rest_server)
    assert rest_refusal.value.status == 429 and "queue" in rest_refusal.value.message
    assert grpc_refusal.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert sizes["rejected"] == 2 and sizes["+Inf"] == sizes["2"] - sizes["1"] == 1, sizes
    both = run_signature(tiny_servable, "serve_examples", {"examples": np.array(first + filler, dtype=object)})
    np.testing.assert_allclose(np.concatenate([answered, filled]), both["probabilities"], atol=1e-5)
