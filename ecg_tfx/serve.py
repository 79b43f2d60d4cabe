"""Serves exports over TF Serving's REST API on this machine (see `ecg_tfx.serving.rest`).

    python -m ecg_tfx.serve --model_base_path=workspace/exports/ecg [--model_name=ecg] [--port=8501]
                            [--host=127.0.0.1] [--max_request_bytes=33554432] [--version_labels=stable:1,canary:2]
"""

from __future__ import annotations

import os
import signal
import threading

from absl import app, flags

from ecg_tfx.core import storage
from ecg_tfx.serving.rest.http import DEFAULT_MAX_REQUEST_BYTES, Server
from ecg_tfx.serving.rest.servables import Model, parse_version_labels

_MODEL_BASE_PATH = flags.DEFINE_string("model_base_path", None, "Folder holding integer version folders.",
                                       required=True)
_MODEL_NAME = flags.DEFINE_string("model_name", "ecg", "Name the model is served under (/v1/models/<name>).")
_HOST = flags.DEFINE_string("host", "127.0.0.1", "Address to bind; 0.0.0.0 exposes the server to the network.")
_PORT = flags.DEFINE_integer("port", 8501, "REST port (0: any free port, printed at start).", lower_bound=0)
_MAX_REQUEST_BYTES = flags.DEFINE_integer("max_request_bytes", DEFAULT_MAX_REQUEST_BYTES,
                                          "Larger request bodies are refused with 413.", lower_bound=1)
_VERSION_LABELS = flags.DEFINE_string("version_labels", "", "Version labels, e.g. stable:1,canary:2.")
_NUM_THREADS = flags.DEFINE_integer("num_threads", os.cpu_count() or 1, "Worker threads running model calls in "
                                    "parallel; more than the cores only adds queueing jitter.", lower_bound=1)


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    try:
        labels = parse_version_labels(_VERSION_LABELS.value)
    except ValueError as error:
        raise app.UsageError(str(error)) from None
    model = Model.load(_MODEL_NAME.value, _MODEL_BASE_PATH.value, labels)
    server = Server({model.name: model}, _HOST.value, _PORT.value, _MAX_REQUEST_BYTES.value, _NUM_THREADS.value)
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    server.start()
    print(f"serving model {model.name} versions {sorted(model.servables)} labels {dict(model.labels)} at "
          f"{server.url}/v1/models/{model.name}", flush=True)
    stop.wait()
    server.stop()


if __name__ == "__main__":
    storage.run_app(main)
