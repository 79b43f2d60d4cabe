"""Multi-worker training: two local worker processes (TF_CONFIG on 127.0.0.1) train one model together."""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest

from ecg_tfx.data import conversion
from ecg_tfx.data.conversion import ConversionConfig

REPO = pathlib.Path(__file__).resolve().parents[2]
# Small and fast: 100 Hz, 2.5 s inputs, more training shards than workers.
DATA = ConversionConfig(synthetic_patients=12, synthetic_records_per_patient=2, synthetic_duration_s=10.0,
                        sample_rate=100, shard_size_mb=0.02)
TRAIN_ARGS = ["--strategy=multi_worker", "--batch_size=8", "--warmup_epochs=0", "--input_seconds=2.5",
              "--export=false", "--model=cnn"]
RUN_FILES = {"model.keras", "model_spec.json", "history.csv", "metrics.json", "run_info.json", "best.keras"}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> pathlib.Path:
    out = tmp_path_factory.mktemp("data")
    manifest = conversion.run(DATA, str(out))
    assert len(manifest.splits["train"].shards) >= 2
    return out


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def start_workers(data_dir: pathlib.Path, run_dir: pathlib.Path, epochs: int, logs: pathlib.Path
                  ) -> list[subprocess.Popen]:
    """Two `ecg_tfx.train` processes forming one cluster; worker 0 is the chief."""
    cluster = {"worker": [f"127.0.0.1:{port}" for port in free_ports(2)]}
    workers = []
    for index in range(2):
        env = {**os.environ, "TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}}),
               "CUDA_VISIBLE_DEVICES": ""}
        with open(logs / f"worker{index}.log", "a") as log:
            workers.append(subprocess.Popen(
                [sys.executable, "-m", "ecg_tfx.train", f"--data_dir={data_dir}", f"--run_dir={run_dir}",
                 f"--epochs={epochs}", *TRAIN_ARGS], cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True))
    return workers


def wait_all(workers: list[subprocess.Popen], logs: pathlib.Path, timeout: float = 240) -> None:
    deadline = time.time() + timeout
    try:
        for index, worker in enumerate(workers):
            code = worker.wait(max(1.0, deadline - time.time()))
            assert code == 0, (logs / f"worker{index}.log").read_text()[-4000:]
    finally:
        for worker in workers:
            if worker.poll() is None:
                os.killpg(worker.pid, signal.SIGKILL)
                worker.wait()


def test_two_workers_killed_together_resume_from_the_backup_and_only_the_chief_writes(data_dir, tmp_path):
    """A preemption: both workers die after the first epoch's backup; started again, they continue (not restart)
    to the last epoch, and the run folder is the chief's alone, as after an uninterrupted run. The other worker's
    own folder is lost in between (a kill before its epoch ended, or a new machine): it resumes from the chief's
    backup all the same, at the chief's epoch."""
    run_dir = tmp_path / "run"
    workers = start_workers(data_dir, run_dir, epochs=3, logs=tmp_path)
    metadata = run_dir / "backup" / "training_metadata.json"
    deadline = time.time() + 180
    while not metadata.exists() and time.time() < deadline and all(w.poll() is None for w in workers):
        time.sleep(0.2)
    chiefs = [workers[0].pid]
    for worker in workers:
        os.killpg(worker.pid, signal.SIGKILL)
        worker.wait()
    assert metadata.exists(), (tmp_path / "worker0.log").read_text()[-4000:]
    shutil.rmtree(run_dir / ".workers", ignore_errors=True)
    logs = [tmp_path / f"worker{index}.log" for index in range(2)]
    for log in logs:
        log.write_text("")
    workers = start_workers(data_dir, run_dir, epochs=3, logs=tmp_path)
    chiefs.append(workers[0].pid)
    wait_all(workers, tmp_path)
    for log in logs:  # both continued from the chief's epoch, not restarted
        resumed = log.read_text()
        assert "Epoch 2/3" in resumed and "Epoch 3/3" in resumed and "Epoch 1/3" not in resumed, resumed[-4000:]
    names = {p.name for p in run_dir.iterdir()}
    assert RUN_FILES <= names
    assert ".workers" not in names and "backup" not in names  # the non-chief's folder and the backup are gone
    history = (run_dir / "history.csv").read_text().splitlines()
    epochs = [row.split(",")[0] for row in history[1:]]
    assert history[0].startswith("epoch") and epochs[-1] == "2" and len(set(epochs)) == len(epochs)
    info = json.loads((run_dir / "run_info.json").read_text())
    assert info["replicas"] == 2 and info["epochs_run"] == 3
    assert "test_metrics" in info and (run_dir / "metrics.json").stat().st_size > 0
    # TensorBoard's event files (events.out.tfevents.<time>.<host>.<pid>...) are the chief's, of either start.
    events = [path.name for kind in ("train", "validation") for path in (run_dir / "logs" / kind).iterdir()]
    assert events and all(int(name.split(".")[-3]) in chiefs for name in events), (events, chiefs)
