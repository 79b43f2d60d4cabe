"""The converter on real PTB / PTB-XL data and synthetic records: counts, splits, round trip, safety."""

from __future__ import annotations

import ast
import csv
import hashlib
import json
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter

import numpy as np
import pytest
import scipy.signal
import tensorflow as tf
import wfdb

from ecg_tfx.core import schema
from ecg_tfx.data import conversion, shards, transform
from ecg_tfx.data.conversion import ConversionConfig


def read_split(out: pathlib.Path, split: str) -> list[dict]:
    examples = []
    for path in sorted(out.glob(f"{split}-*.tfrecord*")):
        compression = "GZIP" if path.suffix == ".gz" else ""
        examples += [schema.decode_example(r.numpy()) for r in tf.data.TFRecordDataset(str(path), compression)]
    return examples


def tree_bytes(out: pathlib.Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.iterdir()) if p.is_file()}


def header_reasons(ptb_dir: pathlib.Path) -> dict[str, str]:
    """record id -> Reason for admission, read from the header text (independently of the source)."""
    reasons = {}
    for record in (ptb_dir / "RECORDS").read_text().split():
        text = (ptb_dir / f"{record}.hea").read_text()
        reasons[record] = re.search(r"Reason for admission:\s*(.*?)\s*$", text, re.M).group(1)
    return reasons


def test_ptb_mi_vs_healthy_counts_and_disjoint_patients(ptb_dir, tmp_path):
    manifest = conversion.run(ConversionConfig(source="ptb", input_dir=str(ptb_dir)), str(tmp_path))
    reasons = header_reasons(ptb_dir)
    expected = Counter(r for r in reasons.values() if r in ("Myocardial infarction", "Healthy control"))
    converted = Counter()
    patients = {}
    for split, info in manifest.splits.items():
        converted.update(info.class_records)
        examples = read_split(tmp_path, split)
        assert len(examples) == info.examples
        assert Counter(e["label_names"][0] for e in examples) == Counter(info.class_examples)
        for e in examples:
            assert e["label_names"] == [reasons[e["record_id"]]]
            assert manifest.labels[e["label_ids"][0]] == e["label_names"][0]
        patients[split] = {e["patient_id"] for e in examples}
        assert patients[split] == set(info.patient_ids)
    assert converted == expected
    assert not patients["train"] & patients["validation"] and not patients["train"] & patients["test"]
    assert not patients["validation"] & patients["test"]
    assert manifest.labels == ("Healthy control", "Myocardial infarction")
    label_skips = [s for s in manifest.skipped if s["stage"] == "label"]
    assert len(label_skips) == len(reasons) - sum(expected.values())
    assert all(s["path"] and "not in preset mi_vs_healthy" in s["reason"] for s in label_skips)
    # a 115.2 s record at 500 Hz gives 11 whole 10-s windows
    assert Counter(e["record_id"] for e in read_split(tmp_path, "train") + read_split(tmp_path, "validation")
                   + read_split(tmp_path, "test"))["patient002/s0015lre"] in (0, 11)


def test_ptb_diagnoses_folds_out_rare_classes(ptb_dir, tmp_path):
    config = ConversionConfig(source="ptb", input_dir=str(ptb_dir), labels="diagnoses", min_class_records=3,
                              split="0.6,0.2,0.2")
    manifest = conversion.run(config, str(tmp_path))
    counts = Counter(r for r in header_reasons(ptb_dir).values() if r != "n/a")
    assert list(manifest.labels) == sorted(name for name, n in counts.items() if n >= 3)
    records = Counter()
    for info in manifest.splits.values():
        records.update(info.class_records)
    assert records == Counter({name: n for name, n in counts.items() if n >= 3})
    reasons = [s["reason"] for s in manifest.skipped]
    assert sum("fewer than 3 records" in r for r in reasons) == sum(n for n in counts.values() if n < 3)
    assert sum("(n/a) not in preset" in r for r in reasons) == 1


def test_ptbxl_superclasses_and_folds(ptbxl_dir, tmp_path):
    manifest = conversion.run(ConversionConfig(source="ptbxl", input_dir=str(ptbxl_dir), ptbxl_resolution=100,
                                               sample_rate=100), str(tmp_path))
    statements = {row[""]: row["diagnostic_class"] for row in csv.DictReader(open(ptbxl_dir / "scp_statements.csv"))
                  if row["diagnostic"] == "1.0"}
    expected, folds = Counter(), {}
    for row in csv.DictReader(open(ptbxl_dir / "ptbxl_database.csv")):
        classes = {statements[c] for c in ast.literal_eval(row["scp_codes"]) if c in statements}
        expected.update(classes)
        folds[f"{int(row['ecg_id']):05d}"] = int(row["strat_fold"])
    counted = Counter()
    for split, info in manifest.splits.items():
        counted.update(info.class_records)
        for e in read_split(tmp_path, split):
            fold = folds[e["record_id"]]
            assert split == ("train" if fold <= 8 else "validation" if fold == 9 else "test")
            assert e["signal"].shape == (1000, 12)
    assert counted == expected
    assert manifest.multi_label and manifest.labels == ("NORM", "MI", "STTC", "CD", "HYP")


def test_round_trip_equals_wfdb_resampled(ptb_dir, tmp_path):
    config = ConversionConfig(source="ptb", input_dir=str(ptb_dir), labels="diagnoses", split="0.6,0.2,0.2")
    conversion.run(config, str(tmp_path))
    examples = {(e["record_id"], e["window_index"]): e
                for split in ("train", "validation", "test") for e in read_split(tmp_path, split)}
    short = next(r for r, reason in header_reasons(ptb_dir).items() if r.startswith("patient2") and reason != "n/a")
    for record_id in ("patient001/s0010_re", "patient002/s0015lre", short):
        raw = wfdb.rdrecord(str(ptb_dir / record_id), channels=list(range(12))).p_signal
        expected = scipy.signal.resample_poly(raw, 1, 2, axis=0)
        windows = sorted((k[1], e) for k, e in examples.items() if k[0] == record_id)
        assert len(windows) == len(expected) // 5000
        for index, e in windows:
            assert e["leads"] == ["i", "ii", "iii", "avr", "avl", "avf", "v1", "v2", "v3", "v4", "v5", "v6"]
            np.testing.assert_allclose(e["signal"], expected[index * 5000:(index + 1) * 5000], atol=1e-5, rtol=1e-5)


SMALL_SYNTHETIC = ConversionConfig(synthetic_patients=10, synthetic_records_per_patient=2, synthetic_duration_s=10)


def test_deterministic_across_runs_and_workers(tmp_path):
    config = dataclasses_replace(SMALL_SYNTHETIC, shard_size_mb=0.5)
    first = conversion.run(config, str(tmp_path / "a"), num_workers=1)
    conversion.run(config, str(tmp_path / "b"), num_workers=1)
    conversion.run(config, str(tmp_path / "c"), num_workers=2)
    assert len(first.splits["train"].shards) > 2
    assert tree_bytes(tmp_path / "a") == tree_bytes(tmp_path / "b") == tree_bytes(tmp_path / "c")


# The bytes a small synthetic conversion writes, checked in: both tested stacks (constraints.txt and
# constraints-current.txt) must write exactly these, so the manifest's sha256s and resume-by-reuse hold everywhere.
DIGEST_CONFIG = ConversionConfig(synthetic_patients=10, synthetic_records_per_patient=1, synthetic_duration_s=10,
                                 sample_rate=100, shard_size_mb=0.1)
DIGESTS = {
    "manifest.json": "ea29d995a18b4db4e7a365632e7a2e39288bcec3a194d80054d854eafb62eaf8",
    "test-00000-of-00001.tfrecord": "561b70f589c94c4f7bcccc2b99379689fe06f68e6e04d02dd5f95afaf954abd7",
    "train-00000-of-00004.tfrecord": "66ed8d6ac32179f0154322706de338ec0e57a4b74672dc42d4bea2f80942595e",
    "train-00001-of-00004.tfrecord": "6c8e1711b469ab69ae80deef88d6852dca9af5503c14018b5ac48d2fd09a2468",
    "train-00002-of-00004.tfrecord": "940803c9b1b7a89870987631e3abfed0e0fa164e34960aa38769d04e23d9207e",
    "train-00003-of-00004.tfrecord": "793b33d136ed5bd23ee3463d9b479f05b7868611f0fc820dcb59678ec0d0d9f9",
    "validation-00000-of-00001.tfrecord": "bbc58d99f3cf366567f7e066d59d4acb1dc0ffa319726d8700365785a9cfdc70",
}


@pytest.mark.parametrize("num_workers", [1, 2])
def test_output_bytes_match_the_checked_in_digests(tmp_path, num_workers):
    conversion.run(DIGEST_CONFIG, str(tmp_path), num_workers=num_workers)
    found = {name: hashlib.sha256(data).hexdigest() for name, data in tree_bytes(tmp_path).items()}
    assert found == DIGESTS


def dataclasses_replace(config: ConversionConfig, **changes) -> ConversionConfig:
    import dataclasses

    return dataclasses.replace(config, **changes)


def test_gzip_shards_read_back(tmp_path):
    manifest = conversion.run(dataclasses_replace(SMALL_SYNTHETIC, compression="GZIP"), str(tmp_path))
    assert all(s.file.endswith(".tfrecord.gz") for s in manifest.splits["train"].shards)
    assert len(read_split(tmp_path, "train")) == manifest.splits["train"].examples > 0


def corrupt_copy(ptb_dir: pathlib.Path, root: pathlib.Path) -> dict[str, str]:
    """Copies 10 PTB records and breaks 4 of them; returns record -> expected reason fragment."""
    records = (ptb_dir / "RECORDS").read_text().split()[5:15]  # [4] is the one "n/a" record
    for record in records:
        (root / record).parent.mkdir(parents=True, exist_ok=True)
        for f in (ptb_dir / record).parent.glob(pathlib.Path(record).name + ".*"):
            shutil.copy(f, root / record.split("/")[0] / f.name)
    (root / "RECORDS").write_text("\n".join(records) + "\n")
    broken = {records[0]: "truncated", records[1]: "missing", records[2]: "header", records[3]: "nan"}
    dat = root / f"{records[0]}.dat"
    dat.write_bytes(dat.read_bytes()[: dat.stat().st_size // 3])
    (root / f"{records[1]}.dat").unlink()
    (root / f"{records[2]}.hea").write_bytes(b"\x00garbage \xff\n")
    data = bytearray((root / f"{records[3]}.dat").read_bytes())
    data[2000:2002] = (-32768).to_bytes(2, "little", signed=True)
    (root / f"{records[3]}.dat").write_bytes(bytes(data))
    return broken


def test_broken_records_are_reported_and_the_rest_converted(ptb_dir, tmp_path):
    broken = corrupt_copy(ptb_dir, tmp_path / "db")
    config = ConversionConfig(source="ptb", input_dir=str(tmp_path / "db"), labels="diagnoses",
                              split="0.5,0.25,0.25", max_failure_fraction=0.5)
    manifest = conversion.run(config, str(tmp_path / "out"))
    failures = {s["path"]: (s["stage"], s["reason"]) for s in manifest.skipped}
    assert len(failures) == 4
    expected = {"truncated": ("read", "truncated"), "missing": ("read", ".dat is missing"),
                "header": ("read", "unreadable header"), "nan": ("nan", "NaN")}
    for record, kind in broken.items():
        stage, reason = next(found for path, found in failures.items() if path.endswith(record))
        assert stage == expected[kind][0] and expected[kind][1] in reason
    assert sum(info.records for info in manifest.splits.values()) == 6
    assert manifest.skipped_counts == {"read": 3, "nan": 1}
    assert "skipped 4 records by kind: {'nan': 1, 'read': 3}" in conversion.summary(manifest)


def break_one_record(ptb_dir: pathlib.Path, root: pathlib.Path) -> None:
    """A 10-record PTB copy whose first record's .dat is truncated."""
    corrupt_copy(ptb_dir, root)
    for record in (root / "RECORDS").read_text().split()[1:4]:  # restore the other three broken records
        for path in (ptb_dir / record).parent.glob(pathlib.Path(record).name + ".*"):
            shutil.copy(path, root / record.split("/")[0] / path.name)


def test_default_failure_limit_stops_at_one_broken_record_in_ten(ptb_dir, tmp_path):
    break_one_record(ptb_dir, tmp_path / "db")
    config = ConversionConfig(source="ptb", input_dir=str(tmp_path / "db"), labels="diagnoses",
                              split="0.5,0.25,0.25")
    assert config.max_failure_fraction == 0.05
    with pytest.raises(conversion.ConversionError, match=r"1 of 10 records failed \(> --max_failure_fraction=0.05"):
        conversion.run(config, str(tmp_path / "out"))
    assert not (tmp_path / "out" / "manifest.json").exists()
    manifest = conversion.run(dataclasses_replace(config, max_failure_fraction=0.1), str(tmp_path / "out"))
    assert manifest.skipped_counts == {"read": 1} and sum(info.records for info in manifest.splits.values()) == 9


def test_a_bug_in_the_transform_stops_the_run_with_its_traceback(monkeypatch, tmp_path):
    calls = []

    def broken_resample(signal, rate_in, rate_out):
        calls.append(rate_in)
        if len(calls) == 3:  # the third record meets a bug, not bad data
            raise TypeError("a bug in resample")
        return signal.astype(np.float32)  # synthetic records are made at the output rate

    monkeypatch.setattr(transform, "resample", broken_resample)
    with pytest.raises(TypeError, match="a bug in resample"):
        conversion.run(SMALL_SYNTHETIC, str(tmp_path), num_workers=1)
    assert len(calls) == 3
    assert not list(tmp_path.glob("manifest.json")) and not list(tmp_path.glob("*.tfrecord"))
    assert not list(tmp_path.glob(".*.tmp-*")), "the shard being written is removed"


def test_mostly_failures_aborts_without_manifest(ptb_dir, tmp_path):
    corrupt_copy(ptb_dir, tmp_path / "db")
    config = ConversionConfig(source="ptb", input_dir=str(tmp_path / "db"), labels="diagnoses",
                              split="0.5,0.25,0.25", max_failure_fraction=0.2)
    with pytest.raises(conversion.ConversionError, match="failed"):
        conversion.run(config, str(tmp_path / "out"))
    assert not (tmp_path / "out" / "manifest.json").exists()


def run_cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ecg_tfx.convert", *args], capture_output=True, text=True,
                          timeout=timeout)


@pytest.mark.parametrize("args, message", [
    (["--source=ptb", "--input_dir={empty}"], "lists no records"),
    (["--source=ptb", "--input_dir={missing}"], "is not a directory"),
    (["--source=ptb"], "--input_dir is required"),
    (["--split=0.5,0.5"], "--split takes 3 fractions"),
    (["--split=0.995,0.004,0.001"], "need more than 100 patient folds"),
    (["--synthetic_patients=20", "--split=0.5,0.49,0.01"], "20 patients are too few for --split=0.5,0.49,0.01"),
    (["--labels=superdiagnostic_single"], "--labels must be a preset of the chosen source"),
])
def test_bad_input_stops_with_one_clear_message(tmp_path, args, message):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "RECORDS").write_text("")
    args = [a.format(empty=tmp_path / "empty", missing=tmp_path / "nope") for a in args]
    result = run_cli(*args, f"--output_dir={tmp_path / 'out'}")
    assert result.returncode != 0
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_other_flags_never_overwrite_without_permission(tmp_path):
    conversion.run(SMALL_SYNTHETIC, str(tmp_path))
    before = tree_bytes(tmp_path)
    with pytest.raises(conversion.ConversionError, match="other flags.*sample_rate.*--overwrite"):
        conversion.run(dataclasses_replace(SMALL_SYNTHETIC, sample_rate=250), str(tmp_path))
    assert tree_bytes(tmp_path) == before
    manifest = conversion.run(dataclasses_replace(SMALL_SYNTHETIC, sample_rate=250), str(tmp_path), overwrite=True)
    assert manifest.sample_rate_hz == 250 and tree_bytes(tmp_path) != before


def test_failure_limit_and_older_manifests_keep_a_conversion_reusable(tmp_path):
    conversion.run(SMALL_SYNTHETIC, str(tmp_path))
    manifest_path = tmp_path / "manifest.json"
    older = json.loads(manifest_path.read_text())
    older["config"]["seed"] = older["config"].pop("split_seed")  # as written before --split_seed existed
    manifest_path.write_text(json.dumps(older))
    before = tree_bytes(tmp_path)
    conversion.run(dataclasses_replace(SMALL_SYNTHETIC, max_failure_fraction=0.3), str(tmp_path))
    assert tree_bytes(tmp_path) == before, "reused, not converted again"
    with pytest.raises(conversion.ConversionError, match=r"other flags \(split_seed\)"):
        conversion.run(dataclasses_replace(SMALL_SYNTHETIC, split_seed=1), str(tmp_path))


def test_killed_run_resumes_to_identical_output(tmp_path):
    args = ["--synthetic_patients=20", "--synthetic_records_per_patient=3", "--synthetic_duration_s=20",
            "--shard_size_mb=0.8", "--num_workers=1"]
    assert run_cli(*args, f"--output_dir={tmp_path / 'clean'}").returncode == 0
    out = tmp_path / "killed"
    process = subprocess.Popen([sys.executable, "-m", "ecg_tfx.convert", *args, f"--output_dir={out}"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and len(list(out.glob("train-*.tfrecord"))) < 2:
        time.sleep(0.02)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert not (out / "manifest.json").exists(), "the run finished before it could be killed"
    shards_before = {p.name: p.stat().st_mtime_ns for p in out.glob("*.tfrecord")}
    assert shards_before
    assert run_cli(*args, f"--output_dir={out}").returncode == 0
    assert tree_bytes(out) == tree_bytes(tmp_path / "clean")
    reused = [name for name, mtime in shards_before.items() if (out / name).stat().st_mtime_ns == mtime]
    assert reused, "complete shards should be reused, not rewritten"


class _Stopped(Exception):
    """Stands for a power cut after some shards were published."""


def test_a_resumed_run_rewrites_shards_a_power_cut_emptied(tmp_path, monkeypatch):
    """Stopped after three shards; then, as after a power cut, one shard and another shard's stats came back empty
    (renamed, but never written to disk). The resume writes both again and ends as an uninterrupted run."""
    config = dataclasses_replace(SMALL_SYNTHETIC, shard_size_mb=0.1)
    conversion.run(config, str(tmp_path / "clean"))
    out = tmp_path / "cut"
    written = []
    real_write = shards.write

    def stops_after_three(task, *args, **kwargs):
        if len(written) == 3:
            raise _Stopped
        written.append(task.filename)
        return real_write(task, *args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(shards, "write", stops_after_three)
        with pytest.raises(_Stopped):
            conversion.run(config, str(out))
    (out / written[0]).write_bytes(b"")
    (out / shards.PROGRESS_DIR / f"{written[1]}.json").write_bytes(b"")
    conversion.run(config, str(out))
    assert tree_bytes(out) == tree_bytes(tmp_path / "clean")


# Loaded by every Python process of the test's CLI run (PYTHONPATH): logs each import of TensorFlow and of the shard
# writer with the importing process's id.
IMPORT_SPY = '''
import os, sys

class _ImportSpy:
    def find_spec(self, name, path=None, target=None):
        if name in ("tensorflow", "keras", "ecg_tfx.data.shards"):
            with open(os.environ["ECG_TFX_IMPORT_LOG"], "a") as log:
                log.write(f"{os.getpid()} {name}\\n")
        return None

sys.meta_path.insert(0, _ImportSpy())
'''


def test_a_local_conversion_never_imports_tensorflow(tmp_path):
    """Neither the command (its flags checked and its output written in ~1 s instead of TensorFlow's ~10 s import)
    nor its worker processes, which import only the shard writer."""
    (tmp_path / "spy").mkdir()
    (tmp_path / "spy" / "sitecustomize.py").write_text(IMPORT_SPY)
    log = tmp_path / "imports.txt"
    repo = str(pathlib.Path(conversion.__file__).resolve().parents[2])
    env = {**os.environ, "ECG_TFX_IMPORT_LOG": str(log),
           "PYTHONPATH": os.pathsep.join([str(tmp_path / "spy"), repo, os.environ.get("PYTHONPATH", "")])}
    config = dataclasses_replace(SMALL_SYNTHETIC, shard_size_mb=0.5)
    flags = ["--synthetic_patients=10", "--synthetic_records_per_patient=2", "--synthetic_duration_s=10",
             "--shard_size_mb=0.5", "--num_workers=2"]
    process = subprocess.Popen([sys.executable, "-m", "ecg_tfx.convert", *flags, f"--output_dir={tmp_path / 'cli'}"],
                               env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output, _ = process.communicate(timeout=300)
    assert process.returncode == 0, output
    imports: dict[int, set[str]] = {}
    for line in log.read_text().splitlines():
        pid, name = line.split()
        imports.setdefault(int(pid), set()).add(name)
    assert imports.pop(process.pid) == {"ecg_tfx.data.shards"}, "the command needs no TensorFlow nor Keras"
    assert len(imports) == 2 and all(names == {"ecg_tfx.data.shards"} for names in imports.values()), imports
    conversion.run(config, str(tmp_path / "in_process"), num_workers=1)
    shards, in_process = tree_bytes(tmp_path / "cli"), tree_bytes(tmp_path / "in_process")
    manifests = [json.loads(files.pop("manifest.json")) for files in (shards, in_process)]
    assert shards == in_process and len(shards) > 2
    assert manifests[0]["splits"] == manifests[1]["splits"]
