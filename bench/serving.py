"""Section 5, serving: the local server (`python -m ecg_tfx.serve`, started and stopped here, bound to 127.0.0.1
only) under 1, 4 and 8 concurrent keep-alive REST clients posting one 10-s 12-lead window each to `:predict`
(`serving_default`), with its default server-side batching, and 8 clients against a second server started with
`--enable_batching=false`. Levels are run in interleaved rounds; every round is bounded in requests and seconds.
Reports requests/s, p50/p99 latency and errors per level, the batch sizes the server ran, and the latency of the
same request over gRPC and REST (one client, interleaved)."""

from __future__ import annotations

import http.client
import json
import os
import re
import subprocess
import sys
import threading
import time
import urllib.request

import grpc
import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from bench import data, timing

HOST = "127.0.0.1"
LEVELS = (1, 4, 8)


def start_server(version_dir: str, log_path: str, *flags: str) -> tuple[subprocess.Popen, int, str]:
    """Starts the server on free loopback ports; returns the process, the REST port and the gRPC target once it
    is serving."""
    log = open(log_path, "w", encoding="utf-8")  # noqa: SIM115 - owned by the server process until it ends
    command = [sys.executable, "-m", "ecg_tfx.serve", f"--model_base_path={os.path.dirname(version_dir)}",
               "--model_name=ecg", f"--host={HOST}", "--port=0", "--grpc_port=0", *flags]
    process = subprocess.Popen(command, cwd=timing.REPO, stdout=subprocess.PIPE, stderr=log, text=True)
    deadline = time.time() + 180
    while time.time() < deadline:
        line = process.stdout.readline()
        if not line and process.poll() is not None:
            break
        found = re.search(rf"http://{re.escape(HOST)}:(\d+)/.* and gRPC (\S+)", line)
        if found:
            return process, int(found.group(1)), found.group(2)
    stop_server(process)
    raise RuntimeError(f"the server did not start; see {log_path}")


def stop_server(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def request_body(window: np.ndarray, rate: int) -> bytes:
    """A `:predict` body in TF Serving's columnar form: one recording and its sample rate."""
    ecg = np.round(window.astype(np.float64), 4)[None].tolist()  # float64: short reprs in the JSON
    return json.dumps({"inputs": {"ecg": ecg, "sample_rate": [float(rate)]}}).encode()


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds a process has used so far (Linux /proc)."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def burst(port: int, body: bytes, clients: int, max_requests: int, max_seconds: float, server_pid: int) -> dict:
    """`clients` threads post `body` until `max_requests` in all or `max_seconds` have passed; also the cores the
    server and this process (the clients) kept busy meanwhile."""
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    issued = [0]
    deadline = time.perf_counter() + max_seconds

    def client() -> None:
        connection = http.client.HTTPConnection(HOST, port, timeout=60)
        try:
            while time.perf_counter() < deadline:
                with lock:
                    if issued[0] >= max_requests:
                        return
                    issued[0] += 1
                started = time.perf_counter()
                try:
                    connection.request("POST", "/v1/models/ecg:predict", body, {"Content-Type": "application/json"})
                    response = connection.getresponse()
                    payload = response.read()
                    ok = response.status == 200 and b"probabilities" in payload
                    error = None if ok else f"HTTP {response.status}: {payload[:120]!r}"
                except (OSError, http.client.HTTPException) as failure:
                    error = f"{type(failure).__name__}: {failure}"
                    connection.close()
                    connection = http.client.HTTPConnection(HOST, port, timeout=60)
                with lock:
                    (errors.append(error) if error else latencies.append(time.perf_counter() - started))
        finally:
            connection.close()

    started, server_cpu, client_cpu = time.perf_counter(), process_cpu_s(server_pid), time.process_time()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "latencies": latencies, "errors": errors,
            "server_cores": (process_cpu_s(server_pid) - server_cpu) / seconds,
            "client_cores": (time.process_time() - client_cpu) / seconds}


def grpc_request(window: np.ndarray, rate: int) -> predict_pb2.PredictRequest:
    """The same `serving_default` request as `request_body`, as a PredictRequest (float32 tensors)."""
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "ecg"
    request.inputs["ecg"].CopyFrom(tf.make_tensor_proto(window.astype(np.float32)[None]))
    request.inputs["sample_rate"].CopyFrom(tf.make_tensor_proto(np.float32([rate])))
    return request


def grpc_vs_rest(port: int, target: str, body: bytes, request: predict_pb2.PredictRequest,
                 calls: int) -> dict[str, float]:
    """Median ms of the same request over REST and gRPC, one client, interleaved; both bodies are encoded once."""
    times: dict[str, list[float]] = {"rest": [], "grpc": []}
    connection = http.client.HTTPConnection(HOST, port, timeout=60)
    with grpc.insecure_channel(target) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        stub.Predict(request, timeout=60)
        for _ in range(calls):
            started = time.perf_counter()
            connection.request("POST", "/v1/models/ecg:predict", body, {"Content-Type": "application/json"})
            response = connection.getresponse()
            if response.status != 200 or b"probabilities" not in response.read():
                raise RuntimeError(f"REST request failed: HTTP {response.status}")
            times["rest"].append(time.perf_counter() - started)
            started = time.perf_counter()
            stub.Predict(request, timeout=60)
            times["grpc"].append(time.perf_counter() - started)
    connection.close()
    return {name: float(np.median(values)) * 1e3 for name, values in times.items()}


def batch_sizes(port: int) -> dict[int, int]:
    """Model calls per batch size, from the server's metrics page (its cumulative histogram)."""
    with urllib.request.urlopen(f"http://{HOST}:{port}/monitoring/prometheus/metrics", timeout=60) as response:
        text = response.read().decode()
    cumulative = [(int(le), int(count)) for le, count in
                  re.findall(r'processed_batch_size_bucket\{le="(\d+)"\} (\d+)', text)]
    return {size: count - previous for (size, count), (_, previous) in zip(cumulative, [(0, 0), *cumulative])
            if count > previous}


def model_alone(version_dir: str, window: np.ndarray, rate: int, calls: int, reps: int) -> dict[str, float]:
    """The SavedModel's `serving_default` in this process, no server: the time of `calls` recordings sent as
    batch-1 calls from one thread, as batch-1 calls from two threads at once, and as batch-2 and batch-8 calls
    (the most the 8 clients can have waiting) from one thread (interleaved rounds; medians). What the hardware
    allows more clients to gain."""
    signature = tf.saved_model.load(version_dir).signatures["serving_default"]
    one = {"ecg": tf.constant(window.astype(np.float32)[None]), "sample_rate": tf.constant([float(rate)])}
    two = {name: tf.concat([value] * 2, 0) for name, value in one.items()}
    top = {name: tf.concat([value] * LEVELS[-1], 0) for name, value in one.items()}

    def sequential(inputs: dict, count: int) -> None:
        for _ in range(count):
            signature(**inputs)

    def two_threads() -> None:
        threads = [threading.Thread(target=sequential, args=(one, calls // 2)) for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    times = timing.interleaved({"batch 1, 1 thread": lambda: sequential(one, calls),
                                "batch 1, 2 threads": two_threads,
                                "batch 2, 1 thread": lambda: sequential(two, calls // 2),
                                f"batch {LEVELS[-1]}, 1 thread": lambda: sequential(top, calls // LEVELS[-1])}, reps)
    return {name: calls / timing.median(values) for name, values in times.items()}


def profile_request(version_dir: str, body: bytes, calls: int = 5, top: int = 8) -> tuple[list[str], dict]:
    """cProfile of the server's request handler (`serving.rest.api.RestApi.handle`) in this process.

    Returns the functions with the most own time, and the milliseconds per request (under the profiler) of
    the whole handler, of the JSON -> tensor conversion and of the model call.
    """
    import cProfile
    import pstats

    from ecg_tfx.serving.rest.api import RestApi
    from ecg_tfx.serving.servables import Model

    api = RestApi({"ecg": Model.load("ecg", os.path.dirname(version_dir))})
    api.handle("POST", "/v1/models/ecg:predict", body)
    profiler = cProfile.Profile()
    for _ in range(calls):
        profiler.runcall(api.handle, "POST", "/v1/models/ecg:predict", body)
    stats = pstats.Stats(profiler).stats
    total = sum(entry[2] for entry in stats.values())
    rows = sorted(stats.items(), key=lambda kv: -kv[1][2])[:top]
    lines = [f"{own / total:5.1%} own, {cumulative / calls * 1e3:7.1f} ms cum/request, {n // calls:6d} calls/request  "
             f"{os.path.basename(file)}:{line}({name})" for (file, line, name), (_, n, own, cumulative, _) in rows]
    cumulative = {name: sum(entry[3] for (_, _, function), entry in stats.items() if function == name) / calls * 1e3
                  for name in ("handle", "tensor_from_json", "run_signature")}
    return lines, {"handler": cumulative["handle"], "json_to_tensor": cumulative["tensor_from_json"],
                   "model_call": cumulative["run_signature"]}


def run(quick: bool = False) -> dict:
    """Measures the section and returns its results."""
    from ecg_tfx.serving.tflite import read_windows

    rounds, per_client, seconds = (2, 6, 8.0) if quick else (3, 10, 12.0)
    dataset = data.converted()
    spec = data.spec(dataset.manifest)
    version, _ = data.exported()
    window = read_windows(dataset.data_dir, "train", spec, 1)[0][0]
    body = request_body(window, spec.sample_rate_hz)
    process, port, target = start_server(version, str(data.WORKSPACE / "serve.log"))
    unbatched, unbatched_port, _ = start_server(version, str(data.WORKSPACE / "serve_unbatched.log"),
                                                "--enable_batching=false")
    levels = [(clients, port, process.pid) for clients in LEVELS] + [(LEVELS[-1], unbatched_port, unbatched.pid)]
    names = [f"{clients} clients" for clients in LEVELS] + [f"{LEVELS[-1]} clients, no batching"]
    try:
        for _, warm_port, pid in levels[-2:]:  # warm-up: first calls trace nothing (SavedModel) but fill caches
            burst(warm_port, body, 2, 4, 30.0, pid)
        results: dict[str, list[dict]] = {name: [] for name in names}
        for rep in range(rounds):
            for index in [(rep + i) % len(levels) for i in range(len(levels))]:
                clients, level_port, pid = levels[index]
                results[names[index]].append(burst(level_port, body, clients, per_client * clients, seconds, pid))
        sizes = batch_sizes(port)
        latency = grpc_vs_rest(port, target, body, grpc_request(window, spec.sample_rate_hz), 10 if quick else 20)
    finally:
        stop_server(process)
        stop_server(unbatched)
    metrics = {}
    for name, bursts in results.items():
        latencies = np.array([x for b in bursts for x in b["latencies"]])
        errors = [e for b in bursts for e in b["errors"]]
        done = len(latencies) + len(errors)
        metrics[name] = {
            "requests": done, "errors": len(errors), "first_error": errors[0] if errors else None,
            "requests_per_s": round(timing.median([(len(b["latencies"]) + len(b["errors"])) / b["seconds"]
                                                   for b in bursts]), 2),
            "p50_ms": round(float(np.percentile(latencies, 50)) * 1e3, 1) if len(latencies) else None,
            "p99_ms": round(float(np.percentile(latencies, 99)) * 1e3, 1) if len(latencies) else None,
            "server_cores": round(timing.median([b["server_cores"] for b in bursts]), 2),
            "client_cores": round(timing.median([b["client_cores"] for b in bursts]), 2),
        }
    profile, split = profile_request(version, body)
    alone = model_alone(version, window, spec.sample_rate_hz, 20 if quick else 40, rounds)
    metrics["model alone, recordings/s"] = {name: round(value, 1) for name, value in alone.items()}
    metrics["profiled ms per request"] = {key: round(value, 1) for key, value in split.items()}
    metrics["model calls per batch size (batched server, all levels)"] = sizes
    metrics["median ms, same request, 1 client"] = {name: round(value, 1) for name, value in latency.items()}
    top, single = metrics[f"{LEVELS[-1]} clients"], metrics["1 clients"]
    plain = metrics[f"{LEVELS[-1]} clients, no batching"]
    tail = top["p99_ms"] / top["p50_ms"] if top["p50_ms"] else float("inf")
    scaling = top["requests_per_s"] / single["requests_per_s"]
    calls, rows = sum(sizes.values()), sum(size * count for size, count in sizes.items())
    cores, busy = os.cpu_count() or 1, single["server_cores"] + single["client_cores"]
    best = alone[f"batch {LEVELS[-1]}, 1 thread"]
    findings = [
        f"CPU: at 1 client the server kept {single['server_cores']:.2f} cores busy and the client "
        f"{single['client_cores']:.2f}; at {LEVELS[-1]} clients {top['server_cores']:.2f} and "
        f"{top['client_cores']:.2f}, of {cores}. With the clients on the same machine, more clients can at best "
        f"multiply one client's requests/s by {cores / busy:.2f} ({cores} / {busy:.2f} cores), less whatever "
        "per-request work batching does not share (JSON parsing, the event loop).",
        f"The model alone (no server, recordings/s): {alone['batch 1, 1 thread']:.1f} as batch-1 calls from one "
        f"thread, {alone['batch 1, 2 threads']:.1f} from two threads at once "
        f"({alone['batch 1, 2 threads'] / alone['batch 1, 1 thread']:.2f}x), {alone['batch 2, 1 thread']:.1f} as "
        f"batch-2 calls ({alone['batch 2, 1 thread'] / alone['batch 1, 1 thread']:.2f}x), {best:.1f} as "
        f"batch-{LEVELS[-1]} calls ({best / alone['batch 1, 1 thread']:.2f}x): on {cores} cores that bounds what "
        f"{LEVELS[-1]} clients can gain over one, before any per-request work (JSON, HTTP); the server at "
        f"{LEVELS[-1]} clients reached {top['requests_per_s'] / max(alone.values()):.0%} of the best.",
        f"Where a request's time goes (profiled handler, unbatched, ms per request under cProfile): JSON -> tensor "
        f"{split['json_to_tensor']:.0f} ms, model call {split['model_call']:.0f} ms, of {split['handler']:.0f} ms.",
        f"The batched server ran {rows} recordings in {calls} model calls (mean {rows / max(calls, 1):.2f} per call, "
        f"largest {max(sizes, default=0)}); at {LEVELS[-1]} clients it answered {top['requests_per_s']:g} "
        f"requests/s against {plain['requests_per_s']:g} without batching (p50 {top['p50_ms']} vs "
        f"{plain['p50_ms']} ms, p99 {top['p99_ms']} vs {plain['p99_ms']} ms).",
        f"The same request over gRPC and REST, one client: median {latency['grpc']:.1f} vs {latency['rest']:.1f} ms "
        "(REST carries the window as JSON text the server parses; gRPC as one float32 tensor)."]
    if not (tail <= 2.0 and top["errors"] == 0):
        findings.append(f"missed: p99/p50 {tail:.2f} with {top['errors']} errors at {LEVELS[-1]} clients.")
    if scaling < 1.8:
        findings.append(f"missed: requests/s at {LEVELS[-1]} / 1 clients {scaling:.2f}, {1 - scaling / 1.8:.0%} "
                        "short of 1.8.")
    return {
        "findings": findings,
        "title": "5. Serving",
        "conditions": {"server": "python -m ecg_tfx.serve (aiohttp; batching at its defaults, "
                                 "serving/batching.config), 127.0.0.1",
                       "request": f"1 recording, {spec.window_samples} x {len(spec.leads)} floats, "
                                  f"{len(body) / 1024:.0f} kB JSON, serving_default",
                       "rounds": rounds, "per_round": f"<= {per_client} requests per client, <= {seconds:g} s"},
        "metrics": metrics,
        "profile": profile,
        "ratios": [
            timing.target(f"requests/s at {LEVELS[-1]} / 1 clients", scaling, 1.8, True),
            timing.target(f"p99 / p50 latency at {LEVELS[-1]} clients", tail, 2.0, False,
                          f"{top['errors']} errors of {top['requests']} requests"),
            timing.target(f"errors at {LEVELS[-1]} clients", top["errors"], 0, False),
            timing.target(f"requests/s at {LEVELS[-1]} clients, batching / none",
                          top["requests_per_s"] / plain["requests_per_s"], 1.0, True, "no target set"),
            timing.target("gRPC / REST median latency, same request, 1 client", latency["grpc"] / latency["rest"],
                          1.0, False, "no target set"),
        ],
    }
