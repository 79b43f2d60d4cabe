"""Serves exports over TF Serving's REST and gRPC APIs on this machine (see `ecg_tfx.serving.rest` and `.grpc`).

    python -m ecg_tfx.serve --model_base_path=workspace/exports/ecg [--model_name=ecg] [--port=8501]
                            [--grpc_port=8500] [--host=127.0.0.1] [--max_request_bytes=33554432]
                            [--max_concurrent_requests=32] [--read_timeout_s=30] [--version_labels=stable:1,canary:2]
                            [--enable_batching=true] [--max_batch_size=32] [--batch_timeout_micros=2000]
                            [--max_enqueued_batches=64] [--num_batch_threads=2]
                            [--batching_parameters_file=serving/batching.config]
"""

from __future__ import annotations

import gc
import os
import signal
import threading

from absl import app, flags

from ecg_tfx.core import storage
from ecg_tfx.serving.batching import Batcher, BatchingParameters
from ecg_tfx.serving.grpc.server import GrpcServer
from ecg_tfx.serving.limits import DEFAULT_MAX_REQUEST_BYTES, RequestSlots, ServerLimits
from ecg_tfx.serving.rest.http import Server
from ecg_tfx.serving.servables import Model, parse_version_labels

_DEFAULTS = ServerLimits()
_BATCHING = BatchingParameters()
_MODEL_BASE_PATH = flags.DEFINE_string("model_base_path", None, "Folder holding integer version folders.",
                                       required=True)
_MODEL_NAME = flags.DEFINE_string("model_name", "ecg", "Name the model is served under (/v1/models/<name>).")
_HOST = flags.DEFINE_string("host", "127.0.0.1", "Address to bind (REST and gRPC); 0.0.0.0 exposes the server to "
                            "the network.")
_PORT = flags.DEFINE_integer("port", 8501, "REST port (0: any free port, printed at start).", lower_bound=0)
_GRPC_PORT = flags.DEFINE_integer("grpc_port", 8500, "gRPC port, TF Serving's PredictionService and ModelService "
                                  "(0: any free port, printed at start; -1: no gRPC).", lower_bound=-1)
_MAX_REQUEST_BYTES = flags.DEFINE_integer("max_request_bytes", DEFAULT_MAX_REQUEST_BYTES,
                                          "Larger request bodies are refused: 413 (REST), RESOURCE_EXHAUSTED (gRPC).",
                                          lower_bound=1)
_MAX_CONCURRENT_REQUESTS = flags.DEFINE_integer(
    "max_concurrent_requests", _DEFAULTS.max_concurrent_requests, "Requests in flight at once, REST and gRPC "
    "together (reading their body, queued or running); more are refused at once with 429 / RESOURCE_EXHAUSTED. "
    "Buffered bodies take at most this times --max_request_bytes of memory.", lower_bound=1)
_READ_TIMEOUT_S = flags.DEFINE_float("read_timeout_s", _DEFAULTS.read_timeout_s, "Seconds a REST client may take "
                                     "to send its request body; slower ones get 408.", lower_bound=0.001)
_VERSION_LABELS = flags.DEFINE_string("version_labels", "", "Version labels, e.g. stable:1,canary:2.")
_NUM_THREADS = flags.DEFINE_integer("num_threads", os.cpu_count() or 1, "Without batching: worker threads running "
                                    "model calls in parallel (per protocol); more than the cores only adds queueing "
                                    "jitter. With batching every request in flight has a thread that waits for its "
                                    "batch, and --num_batch_threads run the model.", lower_bound=1)
_ENABLE_BATCHING = flags.DEFINE_boolean(
    "enable_batching", True, "Merge concurrent requests of one kind (same signature, shapes and, for "
    "serving_default, sample rate) into one model call, like TF Serving's --enable_batching; other requests run "
    "alone. The settings below are serving/batching.config's.")
_MAX_BATCH_SIZE = flags.DEFINE_integer("max_batch_size", _BATCHING.max_batch_size, "Rows (recordings or examples) "
                                       "per merged model call; a request with more runs alone.", lower_bound=1)
_BATCH_TIMEOUT_MICROS = flags.DEFINE_integer(
    "batch_timeout_micros", _BATCHING.batch_timeout_micros, "Microseconds a batch waits for more requests after its "
    "first one.", lower_bound=0)
_MAX_ENQUEUED_BATCHES = flags.DEFINE_integer(
    "max_enqueued_batches", _BATCHING.max_enqueued_batches, "Batches waiting per kind of request; a request that "
    "needs one more is refused with 429 / RESOURCE_EXHAUSTED.", lower_bound=1)
_NUM_BATCH_THREADS = flags.DEFINE_integer("num_batch_threads", _BATCHING.num_batch_threads,
                                          "Batches run at once.", lower_bound=1)
_BATCHING_FLAGS = ("max_batch_size", "batch_timeout_micros", "max_enqueued_batches", "num_batch_threads")
_BATCHING_PARAMETERS_FILE = flags.DEFINE_string(
    "batching_parameters_file", "", "TF Serving's BatchingParameters text proto (e.g. serving/batching.config), "
    "as `tensorflow_model_server --batching_parameters_file` reads it; replaces the four settings above, which may "
    "then not be given. Fields it leaves out keep their defaults.")


def batching_parameters() -> BatchingParameters | None:
    """The batcher's settings from the flags or --batching_parameters_file; None without batching."""
    path = _BATCHING_PARAMETERS_FILE.value
    if not _ENABLE_BATCHING.value:
        if path:
            raise app.UsageError("--batching_parameters_file needs --enable_batching")
        return None
    if not path:
        return BatchingParameters(_MAX_BATCH_SIZE.value, _BATCH_TIMEOUT_MICROS.value, _MAX_ENQUEUED_BATCHES.value,
                                  _NUM_BATCH_THREADS.value)
    both = [f"--{name}" for name in _BATCHING_FLAGS if flags.FLAGS[name].present]
    if both:
        raise app.UsageError(f"pass either --batching_parameters_file or {', '.join(both)}, not both")
    try:
        return BatchingParameters.from_text(storage.read_text(path))
    except (OSError, ValueError, TypeError) as error:
        raise app.UsageError(f"--batching_parameters_file {path}: {error}") from None


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    try:
        labels = parse_version_labels(_VERSION_LABELS.value)
    except ValueError as error:
        raise app.UsageError(str(error)) from None
    parameters = batching_parameters()
    batcher = Batcher(parameters) if parameters else None
    model = Model.load(_MODEL_NAME.value, _MODEL_BASE_PATH.value, labels, batcher)
    # Keep the loaded TensorFlow and Keras objects (~600k) out of the garbage collector's full passes: each pass
    # over them held the GIL ~0.85 s and stalled every request in flight (measured in serving/README.md).
    gc.freeze()
    models = {model.name: model}
    limits = ServerLimits(_MAX_REQUEST_BYTES.value, _MAX_CONCURRENT_REQUESTS.value, _READ_TIMEOUT_S.value)
    slots = RequestSlots(limits.max_concurrent_requests)  # one cap for both protocols: they share the model
    threads = limits.max_concurrent_requests if batcher else _NUM_THREADS.value  # batched requests mostly wait
    servers = [Server(models, _HOST.value, _PORT.value, limits, threads, slots)]
    if _GRPC_PORT.value >= 0:
        servers.append(GrpcServer(models, _HOST.value, _GRPC_PORT.value, limits, threads, slots))
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    for server in servers:
        server.start()
    grpc_text = f" and gRPC {servers[1].target}" if len(servers) > 1 else ""
    print(f"serving model {model.name} versions {sorted(model.servables)} labels {dict(model.labels)} at "
          f"{servers[0].url}/v1/models/{model.name}{grpc_text}", flush=True)
    stop.wait()
    for server in servers:
        server.stop()
    if batcher is not None:
        batcher.close()


if __name__ == "__main__":
    storage.run_app(main)
