"""The gRPC server of `ecg_tfx.serve` (TF Serving's port 8500), within the same `ServerLimits` as the REST one."""

from __future__ import annotations

import concurrent.futures
from collections.abc import Mapping

import grpc
from tensorflow_serving.apis import model_service_pb2_grpc, prediction_service_pb2_grpc

from ecg_tfx.serving.grpc.service import ModelService, PredictionService
from ecg_tfx.serving.limits import RequestSlots, ServerLimits
from ecg_tfx.serving.servables import Model


class GrpcServer:
    """PredictionService and ModelService on `host:port` (0: a free port): `with GrpcServer(models) as s: s.target`.

    Messages over `limits.max_request_bytes` and calls beyond `limits.max_concurrent_requests` (queued ones
    included) are refused by gRPC itself with RESOURCE_EXHAUSTED, Predict inputs that would decode larger than a
    message may be with INVALID_ARGUMENT; `slots` may be shared with the REST server so the cap on requests in
    flight covers both.
    """

    def __init__(self, models: Mapping[str, Model], host: str = "127.0.0.1", port: int = 0,
                 limits: ServerLimits | None = None, num_threads: int = 4, slots: RequestSlots | None = None):
        limits = limits or ServerLimits()
        self.host = host
        self.slots = slots or RequestSlots(limits.max_concurrent_requests)
        self._server = grpc.server(
            concurrent.futures.ThreadPoolExecutor(num_threads, thread_name_prefix="grpc"),
            maximum_concurrent_rpcs=limits.max_concurrent_requests,
            options=[("grpc.max_receive_message_length", limits.max_request_bytes),
                     ("grpc.max_send_message_length", -1)])
        prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
            PredictionService(models, self.slots, limits.max_request_bytes), self._server)
        model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelService(models, self.slots), self._server)
        self.port = self._server.add_insecure_port(f"{host}:{port}")
        if not self.port:
            raise OSError(f"cannot bind the gRPC port {host}:{port}")

    @property
    def target(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self) -> GrpcServer:
        self._server.start()
        return self

    def stop(self) -> None:
        self._server.stop(grace=None).wait()

    def __enter__(self) -> GrpcServer:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()
