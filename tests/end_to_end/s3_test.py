"""Convert and train on s3:// paths (tensorflow-io's filesystem) against a local moto S3 server.

The CLIs run in subprocesses: tensorflow-io's AWS client aborts a process's normal exit, so they end
with `os._exit` after touching s3 (storage.exit_hard_if_s3_touched) and must still exit 0.
"""

from __future__ import annotations

import json
import os
import pathlib
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator

import pytest

from ecg_tfx.data import conversion
from ecg_tfx.data.conversion import ConversionConfig

REPO = pathlib.Path(__file__).resolve().parents[2]
BUCKET = "ecg-tfx-test"
CONVERT_ARGS = ["--synthetic_patients=12", "--synthetic_records_per_patient=2", "--synthetic_duration_s=10",
                "--sample_rate=100", "--shard_size_mb=0.05", "--num_workers=2"]
TRAIN_ARGS = ["--epochs=2", "--batch_size=8", "--warmup_epochs=0", "--input_seconds=2.5", "--model=cnn"]

boto3 = pytest.importorskip("boto3", reason="boto3 is not installed (pip install 'moto[server]')")
pytest.importorskip("moto.server", reason="moto's server is not installed (pip install 'moto[server]')")


def _s3_filesystem_loads() -> str | None:
    """Why tensorflow-io's s3 filesystem cannot be used here, or None (checked in a subprocess)."""
    probe = ("import os, tensorflow as tf, tensorflow_io; tensorflow_io.experimental; "
             "print(tf.__version__, 's3' in tf.io.gfile.get_registered_schemes(), flush=True); os._exit(0)")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    version, _, ok = done.stdout.strip().rpartition(" ")
    if ok != "True":
        errors = [line for line in done.stderr.splitlines() if "undefined symbol" in line or "Error" in line]
        return f"TensorFlow {version or '?'}: {(errors or ['no output'])[-1].strip()[:300]}"
    return None


@pytest.fixture(scope="module")
def s3_env(tmp_path_factory) -> Iterator[dict[str, str]]:
    """A moto S3 server on a free local port with an empty bucket; the environment that points at it."""
    reason = _s3_filesystem_loads()
    if reason:
        pytest.skip(f"tensorflow-io's s3:// filesystem loads only on TensorFlow 2.16-2.17 (the pinned stack, "
                    f"constraints.txt); here {reason}")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    with open(log, "w") as out:
        server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                                  stdout=out, stderr=subprocess.STDOUT)
    endpoint = f"http://127.0.0.1:{port}"
    try:
        _wait_until_up(endpoint, server, log)
        env = {**os.environ, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
               "AWS_REGION": "us-east-1", "S3_ENDPOINT": endpoint, "S3_USE_HTTPS": "0", "S3_VERIFY_SSL": "0",
               "CUDA_VISIBLE_DEVICES": ""}
        client(env).create_bucket(Bucket=BUCKET)
        yield env
    finally:
        server.terminate()
        server.wait(10)


def _wait_until_up(endpoint: str, server: subprocess.Popen, log: pathlib.Path) -> None:
    deadline = time.time() + 30
    while time.time() < deadline:
        if server.poll() is not None:
            pytest.fail(f"moto server exited: {log.read_text()[-2000:]}")
        try:
            urllib.request.urlopen(endpoint, timeout=1)
            return
        except OSError:
            time.sleep(0.2)
    pytest.fail("moto server did not start within 30 s")


def client(env: dict[str, str]):
    return boto3.client("s3", endpoint_url=env["S3_ENDPOINT"], region_name=env["AWS_REGION"],
                        aws_access_key_id=env["AWS_ACCESS_KEY_ID"], aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"])


def keys(env: dict[str, str], prefix: str) -> set[str]:
    pages = client(env).get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
    return {item["Key"][len(prefix):] for page in pages for item in page.get("Contents", [])}


def read_json(env: dict[str, str], key: str) -> dict:
    return json.loads(client(env).get_object(Bucket=BUCKET, Key=key)["Body"].read())


def run_cli(module: str, args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    return done


def test_convert_and_train_on_s3(s3_env):
    data = f"s3://{BUCKET}/tfrecords"
    run_cli("ecg_tfx.convert", [f"--output_dir={data}", *CONVERT_ARGS], s3_env)
    manifest = read_json(s3_env, "tfrecords/manifest.json")
    shards = {shard["file"] for info in manifest["splits"].values() for shard in info["shards"]}
    assert len(shards) > 3
    assert keys(s3_env, "tfrecords/") == shards | {"manifest.json"}  # no temporary or progress files left

    run_cli("ecg_tfx.train", [f"--data_dir={data}", f"--run_dir=s3://{BUCKET}/runs/r1", *TRAIN_ARGS], s3_env)
    run = keys(s3_env, "runs/r1/")
    assert {"model.keras", "model_spec.json", "history.csv", "metrics.json", "run_info.json", "labels.json",
            "flags.txt", "training_history.png"} <= run
    assert not any(name.startswith(("backup/", ".workers/")) or "/." in "/" + name for name in run)
    history = client(s3_env).get_object(Bucket=BUCKET, Key="runs/r1/history.csv")["Body"].read().decode()
    assert [row.split(",")[0] for row in history.splitlines()[1:]] == ["0", "1"]
    exported = {name for name in run if name.startswith("export/")}
    version = sorted({name.split("/")[2] for name in exported})
    assert version == ["1"] and "export/ecg/1/saved_model.pb" in exported
    assert read_json(s3_env, "runs/r1/run_info.json")["data_dir"] == data


def test_train_export_sample_predict_and_serve_with_every_path_on_s3(s3_env, tmp_path):
    """Local data, everything after it on s3: each command reads and writes the paths it is given there."""
    data = tmp_path / "data"
    conversion.run(ConversionConfig(synthetic_patients=12, synthetic_records_per_patient=2, synthetic_duration_s=10,
                                    sample_rate=100, leads="standard12"), str(data))
    run = f"s3://{BUCKET}/chain/run"
    run_cli("ecg_tfx.train", [f"--data_dir={data}", f"--run_dir={run}", "--export=false", *TRAIN_ARGS], s3_env)
    assert {"model.keras", "model_spec.json"} <= keys(s3_env, "chain/run/")

    exports = f"s3://{BUCKET}/chain/exports"
    # One variant is enough to read and write every TFLite path through s3 (the variants are tested locally).
    run_cli("ecg_tfx.export", [f"--run_dir={run}", f"--export_dir={exports}", "--tflite", "--tflite_variants=float32",
                               f"--data_dir={data}"], s3_env)
    exported = keys(s3_env, "chain/exports/ecg/1/")
    # The tiny test split holds far fewer windows than judging a variant takes (tflite.MIN_AGREEMENT_WINDOWS).
    assert {"saved_model.pb", "tflite/model_float32_not_measured.tflite", "export_report.json"} <= exported

    run_cli("ecg_tfx.make_sample", [f"--output=s3://{BUCKET}/chain/records/af", "--condition=atrial_fibrillation",
                                    "--duration_s=12", "--sample_rate=360"], s3_env)
    assert keys(s3_env, "chain/records/") == {"af.hea", "af.dat"}
    record = f"s3://{BUCKET}/chain/records/af.hea"
    results = {}
    for model in (f"{exports}/ecg", f"{exports}/ecg/1/tflite/model_float32_not_measured.tflite"):
        done = run_cli("ecg_tfx.predict", [f"--model={model}", "--json", "--allow_unusable", record], s3_env)
        [results[model]] = json.loads(done.stdout)
    saved_model, tflite = results.values()
    assert saved_model["file"] == record and saved_model["duration_s"] == pytest.approx(12)
    assert saved_model["decision"] == tflite["decision"]

    server = subprocess.Popen([sys.executable, "-m", "ecg_tfx.serve", f"--model_base_path={exports}/ecg", "--port=0",
                               "--grpc_port=-1"],
                              cwd=REPO, env=s3_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = server.stdout.readline()  # printed once every version is loaded
        assert "serving model ecg versions [1]" in line, server.stderr.read()[-3000:] if server.poll() else line
        url = line.rsplit(" at ", 1)[1].strip()
        with urllib.request.urlopen(url, timeout=30) as response:
            status = json.loads(response.read())
        assert status["model_version_status"][0]["state"] == "AVAILABLE"
    finally:
        server.terminate()
        assert server.wait(60) == 0  # leaves through os._exit after s3, not with tensorflow-io's abort
