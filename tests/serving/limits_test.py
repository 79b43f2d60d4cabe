"""The bounds a server puts on its clients, each crossed over real sockets: the cap on requests in flight (REST
and gRPC together), the read timeout for slow senders, the JSON nesting limit, message size on gRPC, and 500s that
show no internals.

The server holds a model with no loaded version (which `Model.load` never builds): every limit here acts before a
model call, and a predict on it fails inside our code, which is how the internal-error answer is reached.
"""

from __future__ import annotations

import http.client
import json
import socket
import time

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import (
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from ecg_tfx.serving.errors import INTERNAL_MESSAGE, ServingError
from ecg_tfx.serving.grpc.server import GrpcServer
from ecg_tfx.serving.limits import RequestSlots, ServerLimits
from ecg_tfx.serving.rest.http import Server
from ecg_tfx.serving.rest.json_tensors import MAX_JSON_DEPTH, parse_json_object
from ecg_tfx.serving.servables import Model

CAP = 3
LIMITS = ServerLimits(max_request_bytes=64 * 1024, max_concurrent_requests=CAP, read_timeout_s=60)


@pytest.fixture
def servers():
    models = {"ecg": Model("ecg", servables={}, labels={})}
    slots = RequestSlots(CAP)
    with Server(models, limits=LIMITS, slots=slots) as rest, GrpcServer(models, limits=LIMITS, slots=slots) as rpc:
        yield rest, rpc


def call(server: Server, method: str, path: str, body: str | None = None) -> tuple[int, dict]:
    connection = http.client.HTTPConnection(server.host, server.port, timeout=60)
    try:
        connection.request(method, path, body=body)
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


def start_slow_request(server: Server, declared_bytes: int = 1000) -> socket.socket:
    """A predict whose headers arrive but whose body stops after one byte."""
    sock = socket.create_connection((server.host, server.port), timeout=60)
    sock.sendall(f"POST /v1/models/ecg:predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 f"Content-Length: {declared_bytes}\r\n\r\n{{".encode())
    return sock


def wait_for_in_flight(server: Server, count: int) -> None:
    """Waits (up to 60 s: the machine is loaded) until the server counts `count` requests in flight."""
    deadline = time.monotonic() + 60
    while server.slots.in_flight != count:
        assert time.monotonic() < deadline, f"{server.slots.in_flight} requests in flight, expected {count}"
        time.sleep(0.01)


def grpc_status(target: str) -> grpc.RpcError | None:
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = "ecg"
    with grpc.insecure_channel(target) as channel:
        try:
            model_service_pb2_grpc.ModelServiceStub(channel).GetModelStatus(request, timeout=60)
        except grpc.RpcError as error:
            return error
    return None


def test_requests_beyond_the_cap_are_refused_on_both_protocols_until_one_finishes(servers):
    rest, rpc = servers
    slow = [start_slow_request(rest) for _ in range(CAP)]
    try:
        wait_for_in_flight(rest, CAP)
        status, body = call(rest, "GET", "/v1/models/ecg")
        assert status == 429 and "--max_concurrent_requests" in body["error"], body
        error = grpc_status(rpc.target)
        assert error is not None and error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, error
        slow.pop().close()  # one sender gives up: its slot frees
        wait_for_in_flight(rest, CAP - 1)
        assert call(rest, "GET", "/v1/models/ecg") == (200, {"model_version_status": []})
        assert grpc_status(rpc.target) is None
    finally:
        for sock in slow:
            sock.close()
    wait_for_in_flight(rest, 0)


def test_a_slow_sender_gets_408_after_the_read_timeout():
    models = {"ecg": Model("ecg", servables={}, labels={})}
    with Server(models, limits=ServerLimits(read_timeout_s=0.5)) as rest:
        with start_slow_request(rest) as sock:
            answer = b""
            while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
                chunk = sock.recv(4096)  # blocks (socket timeout 60 s) until the server gives up on the body
                assert chunk, answer
                answer += chunk
        head, body = answer.split(b"\r\n\r\n", 1)
        assert head.startswith(b"HTTP/1.1 408"), head
        assert json.loads(body) == {"error": "Request body not received within 0.5 s (--read_timeout_s)"}
        wait_for_in_flight(rest, 0)


@pytest.mark.parametrize("depth", [MAX_JSON_DEPTH, 30_000])  # 30,000: past Python's own recursion limit
def test_json_nested_deeper_than_the_limit_is_a_400(servers, depth):
    rest, _ = servers
    status, body = call(rest, "POST", "/v1/models/ecg:predict", '{"inputs": ' + "[" * depth + "]" * depth + "}")
    assert status == 400, body
    assert body == {"error": f"JSON Parse error: nested deeper than {MAX_JSON_DEPTH} arrays and objects"}


def test_json_nesting_up_to_the_limit_parses_and_brackets_in_strings_do_not_count():
    limit = MAX_JSON_DEPTH - 1  # the object around it is one level
    assert parse_json_object(('{"a": ' + "[" * limit + "]" * limit + "}").encode())
    deep_text = "[" * (MAX_JSON_DEPTH + 1)
    assert parse_json_object(json.dumps({"a": deep_text, "b": '"]\\'}).encode())["a"] == deep_text
    with pytest.raises(ServingError, match="nested deeper"):
        parse_json_object(('{"a": ' + "[" * (limit + 1) + "]" * (limit + 1) + "}").encode())


def test_internal_errors_answer_500_and_internal_without_their_text(servers):
    """Predict on a model with no version fails inside our code (max() of no versions)."""
    rest, rpc = servers
    status, body = call(rest, "POST", "/v1/models/ecg:predict", '{"instances": [1.0]}')
    assert (status, body) == (500, {"error": INTERNAL_MESSAGE})
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "ecg"
    with grpc.insecure_channel(rpc.target) as channel:
        with pytest.raises(grpc.RpcError) as raised:
            prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout=60)
    assert raised.value.code() == grpc.StatusCode.INTERNAL and raised.value.details() == INTERNAL_MESSAGE
    wait_for_in_flight(rest, 0)


def test_grpc_messages_over_the_size_limit_are_refused(servers):
    _, rpc = servers
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "ecg"
    request.inputs["ecg"].CopyFrom(tf.make_tensor_proto(np.zeros(LIMITS.max_request_bytes // 4 + 1, np.float32)))
    with grpc.insecure_channel(rpc.target) as channel:
        with pytest.raises(grpc.RpcError) as raised:
            prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout=60)
    assert raised.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, raised.value.details()
