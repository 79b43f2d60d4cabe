"""The Beam converter makes the same conversion as the local one: same examples per split, same manifest."""

from __future__ import annotations

import dataclasses
import pathlib
import shutil
import subprocess
import sys
import traceback
from collections import Counter

import pytest
import tensorflow as tf

from ecg_tfx.core import storage
from ecg_tfx.core.manifest import SPLITS, Manifest
from ecg_tfx.data import conversion, transform
from ecg_tfx.data.conversion import ConversionConfig

pytest.importorskip("apache_beam", reason="apache-beam is not installed (pip install 'apache-beam[tfrecord]==2.77.0')")
from ecg_tfx.data import beam_conversion  # noqa: E402  (needs apache_beam)

REPO = pathlib.Path(__file__).resolve().parents[2]
# Two workers in threads: the parallel path, without starting worker processes that each import TensorFlow.
BEAM_ARGS = ["--runner=FnApiRunner", "--direct_num_workers=2", "--direct_running_mode=multi_threading"]
SMALL = ConversionConfig(synthetic_patients=10, synthetic_records_per_patient=2, synthetic_duration_s=25.0,
                         shard_size_mb=0.3)


@pytest.fixture(autouse=True)
def shallow_state_cache_weights(monkeypatch: pytest.MonkeyPatch) -> None:
    """Beam's in-process worker weighs each cached side input with objsize, which first walks `vars()` of every
    module in `sys.modules`; in a pytest worker that ran hundreds of other tests, that walk aborted the process
    (Fatal Python error in objsize's `_iter_modules_globals`, seen in CI). A fresh `convert` process does not carry
    those modules. Weigh shallowly here: the cache is never full in these small pipelines."""
    from apache_beam.runners.worker import statecache

    monkeypatch.setattr(statecache, "get_deep_size", lambda *objs: sum(sys.getsizeof(o) for o in objs))


def examples(paths: list[pathlib.Path]) -> Counter[bytes]:
    """The multiset of serialized examples in these shards."""
    found: Counter[bytes] = Counter()
    for path in paths:
        compression = "GZIP" if path.suffix == ".gz" else ""
        found.update(record.numpy() for record in tf.data.TFRecordDataset(str(path), compression))
    return found


def without_shard_contents(manifest: Manifest) -> dict:
    """The manifest with only shard file names: which example lands in which shard is up to Beam."""
    value = manifest.to_json()
    for info in value["splits"].values():
        info["shards"] = [shard["file"] for shard in info["shards"]]
    return value


def assert_same_conversion(local_dir: pathlib.Path, local: Manifest, beam_dir: pathlib.Path, beam: Manifest) -> None:
    assert without_shard_contents(beam) == without_shard_contents(local)
    for split in SPLITS:
        found = examples(sorted(beam_dir.glob(f"{split}-*")))
        assert found == examples(sorted(local_dir.glob(f"{split}-*")))
        assert sum(found.values()) == beam.splits[split].examples
        for shard in beam.splits[split].shards:
            path = beam_dir / shard.file
            assert shard.sha256 == storage.sha256(str(path))
            assert shard.examples == sum(examples([path]).values())
    assert sorted(p.name for p in beam_dir.iterdir()) == sorted(p.name for p in local_dir.iterdir())


def test_synthetic_cli_matches_local(tmp_path):
    """`convert --runner=beam` (the CLI, two Beam workers, GZIP) against the local converter."""
    config = dataclasses.replace(SMALL, compression="GZIP")
    local = conversion.run(config, str(tmp_path / "local"))
    args = [f"--output_dir={tmp_path / 'beam'}", "--runner=beam", f"--beam_args={' '.join(BEAM_ARGS)}",
            "--synthetic_patients=10", "--synthetic_records_per_patient=2", "--synthetic_duration_s=25",
            "--shard_size_mb=0.3", "--compression=GZIP"]
    done = subprocess.run([sys.executable, "-m", "ecg_tfx.convert", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "wrote" in done.stdout
    beam = Manifest.load(str(tmp_path / "beam"))
    assert len(local.splits["train"].shards) > 1  # several shards, so sharding is exercised
    assert_same_conversion(tmp_path / "local", local, tmp_path / "beam", beam)


def test_finished_conversion_is_reused(tmp_path):
    first = beam_conversion.run(SMALL, str(tmp_path), BEAM_ARGS)
    stamp = {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir()}
    assert beam_conversion.run(SMALL, str(tmp_path), BEAM_ARGS) == first
    assert {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir()} == stamp


def test_ptb_subset_matches_local(ptb_dir, tmp_path):
    config = ConversionConfig(source="ptb", input_dir=str(ptb_dir), shard_size_mb=20.0)
    local = conversion.run(config, str(tmp_path / "local"), num_workers=1)
    beam = beam_conversion.run(config, str(tmp_path / "beam"), BEAM_ARGS)
    assert beam.splits["train"].records > 10
    assert_same_conversion(tmp_path / "local", local, tmp_path / "beam", beam)


def broken_copy(ptb_dir: pathlib.Path, root: pathlib.Path) -> list[str]:
    """Copies 8 PTB records, truncating one signal file and deleting another; returns those two records.

    The truncated record fails when the pipeline loads it, the other one already when the source lists it.
    """
    records = (ptb_dir / "RECORDS").read_text().split()[5:13]
    for record in records:
        (root / record).parent.mkdir(parents=True, exist_ok=True)
        for path in (ptb_dir / record).parent.glob(pathlib.Path(record).name + ".*"):
            shutil.copy(path, root / record.split("/")[0] / path.name)
    (root / "RECORDS").write_text("\n".join(records) + "\n")
    dat = root / f"{records[0]}.dat"
    dat.write_bytes(dat.read_bytes()[: dat.stat().st_size // 3])
    (root / f"{records[1]}.dat").unlink()
    return records[:2]


def test_broken_records_are_skipped_as_locally(ptb_dir, tmp_path):
    broken = broken_copy(ptb_dir, tmp_path / "db")
    config = ConversionConfig(source="ptb", input_dir=str(tmp_path / "db"), labels="diagnoses",
                              split="0.5,0.25,0.25", shard_size_mb=20.0, max_failure_fraction=0.5)
    local = conversion.run(config, str(tmp_path / "local"))
    beam = beam_conversion.run(config, str(tmp_path / "beam"), BEAM_ARGS)
    failed = [entry for entry in beam.skipped if entry["stage"] == "read"]
    assert sorted(entry["path"] for entry in failed) == sorted(str(tmp_path / "db" / record) for record in broken)
    assert [entry["record_id"] for entry in failed if "truncated" in entry["reason"]] == [broken[0]]
    assert sum(info.records for info in beam.splits.values()) == 6
    assert_same_conversion(tmp_path / "local", local, tmp_path / "beam", beam)


def test_a_bug_in_the_transform_stops_the_pipeline(monkeypatch, tmp_path):
    def broken_resample(signal, rate_in, rate_out):
        raise TypeError("a bug in resample")

    monkeypatch.setattr(transform, "resample", broken_resample)  # the FnApiRunner's workers are threads here
    with pytest.raises(Exception) as raised:  # the runner re-raises it as is, or as a RuntimeError with its text
        beam_conversion.run(SMALL, str(tmp_path), BEAM_ARGS)
    text = "".join(traceback.format_exception(raised.value))
    assert "TypeError: a bug in resample" in text and "in record_examples" in text  # with the worker's traceback
    assert not (tmp_path / "manifest.json").exists()
