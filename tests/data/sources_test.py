"""Tests of the WFDB sources (PTB, PTB-XL) on the real data subsets and on corrupted copies of them."""

from __future__ import annotations

import collections
import csv
import dataclasses
import json
import os
import pathlib
import shutil
from collections.abc import Callable

import numpy as np
import pandas as pd
import pytest
import wfdb

from ecg_tfx.core.records import STANDARD12, RecordError, RecordRef
from ecg_tfx.data.sources import SourceError
from ecg_tfx.data.sources.ptb import PTBSource
from ecg_tfx.data.sources.ptbxl import PTBXLSource

DATA = pathlib.Path(__file__).resolve().parents[2].parent / "shared" / "data"
PTB_ROOT = DATA / "ptbdb"
PTBXL_ROOT = DATA / "ptbxl"
needs_ptb = pytest.mark.skipif(not (PTB_ROOT / "RECORDS").is_file(),
                               reason=f"PTB subset not found at {PTB_ROOT} (real data lives beside the repo)")
needs_ptbxl = pytest.mark.skipif(not (PTBXL_ROOT / "ptbxl_database.csv").is_file(),
                                 reason=f"PTB-XL subset not found at {PTBXL_ROOT} (real data lives beside the repo)")

# The README's table; it calls the 5 hypertrophy records "Myocardial hypertrophy", their headers say "Hypertrophy".
README_REASONS = {"Healthy control": 27, "Bundle branch block": 14, "Myocardial infarction": 12, "Cardiomyopathy": 5,
                  "Hypertrophy": 5, "Dysrhythmia": 1, "Valvular heart disease": 1, "n/a": 1}
MISSING_XYZ = ("patient002/s0015lre", "patient003/s0017lre", "patient012/s0043lre")
SHORT_RECORDS = ("patient200/s0405_re", "patient201/s0420_re", "patient201/s0423_re")


def _ref_by_id(refs: list[RecordRef], record_id: str) -> RecordRef:
    return next(ref for ref in refs if ref.record_id == record_id)


def _reasons_from_header_text(root: pathlib.Path) -> collections.Counter:
    """Counts reasons for admission by reading the header files as plain text."""
    counts = collections.Counter()
    for line in (root / "RECORDS").read_text().split():
        text = (root / f"{line}.hea").read_text()
        reason = text.split("Reason for admission:")[1].splitlines()[0]
        counts[reason.strip()] += 1
    return counts


# ---- PTB on the real subset ----

@needs_ptb
def test_ptb_refs_match_header_text_and_readme() -> None:
    refs, failures = PTBSource(str(PTB_ROOT)).refs()
    assert failures == []
    assert len(refs) == 66
    assert [r.record_id for r in refs] == sorted((PTB_ROOT / "RECORDS").read_text().split())
    counts = collections.Counter(label for ref in refs for label in ref.labels)
    assert all(len(ref.labels) == 1 for ref in refs)
    assert counts == _reasons_from_header_text(PTB_ROOT)
    assert counts == README_REASONS


@needs_ptb
def test_ptb_refs_metadata() -> None:
    refs, _ = PTBSource(str(PTB_ROOT)).refs()
    full = _ref_by_id(refs, "patient001/s0010_re")
    assert full.patient_id == "patient001"
    assert full.leads == STANDARD12 + ("vx", "vy", "vz")
    assert (full.sample_rate_hz, full.duration_s) == (1000.0, 38.4)
    assert full.path == str(PTB_ROOT / "patient001" / "s0010_re")
    for record_id in MISSING_XYZ:
        ref = _ref_by_id(refs, record_id)
        assert ref.leads == STANDARD12 and ref.duration_s == pytest.approx(115.2)
    assert _ref_by_id(refs, "patient200/s0405_re").labels == ("n/a",)
    assert {ref.duration_s for ref in refs if ref.patient_id >= "patient200"} == {10.0}


@needs_ptb
def test_ptb_patients_group_records() -> None:
    refs, _ = PTBSource(str(PTB_ROOT)).refs()
    by_patient, by_folder = collections.defaultdict(set), collections.defaultdict(set)
    for ref in refs:
        by_patient[ref.patient_id].add(ref.record_id)
    for record_id in (PTB_ROOT / "RECORDS").read_text().split():
        by_folder[record_id.split("/")[0]].add(record_id)
    assert by_patient == by_folder
    assert len(by_patient["patient233"]) == 5


@needs_ptb
def test_ptb_load_full_record_equals_wfdb() -> None:
    source = PTBSource(str(PTB_ROOT))
    refs, _ = source.refs()
    record = source.load(_ref_by_id(refs, "patient001/s0010_re"))
    assert record.signal.shape == (38400, 15) and record.signal.dtype == np.float32
    assert record.leads == STANDARD12 + ("vx", "vy", "vz") and record.sample_rate_hz == 1000.0
    expected = wfdb.rdrecord(str(PTB_ROOT / "patient001" / "s0010_re")).p_signal
    np.testing.assert_allclose(record.signal, expected, rtol=1e-6, atol=1e-6)


@needs_ptb
@pytest.mark.parametrize("record_id", ["patient001/s0010_re", MISSING_XYZ[0]])
def test_ptb_headers_are_parsed_once_per_record(monkeypatch, record_id: str) -> None:
    """wfdb's header parser costs about as much as reading the samples: listing parses each header once and
    loading reuses it (with or without the optional .xyz file); a ref without it costs one parse."""
    calls = collections.Counter()
    parse = wfdb.io.record.rdheader

    def counting(*args, **kwargs):
        calls[args[0]] += 1
        return parse(*args, **kwargs)

    monkeypatch.setattr(wfdb.io.record, "rdheader", counting)  # what wfdb.rdrecord calls
    monkeypatch.setattr(wfdb, "rdheader", counting)
    source = PTBSource(str(PTB_ROOT))
    refs, failures = source.refs()
    assert len(calls) == len(refs) + len(failures) == 66 and set(calls.values()) == {1}
    ref = _ref_by_id(refs, record_id)
    calls.clear()
    assert source.load(ref).signal.shape[1] == len(ref.leads)
    assert not calls
    assert source.load(dataclasses.replace(ref, header=None)).leads == ref.leads
    assert list(calls.values()) == [1]


@needs_ptb
@pytest.mark.parametrize("record_id", [MISSING_XYZ[0], "patient233/s0458_re"])
def test_ptb_load_12_lead_records_equal_wfdb(record_id: str) -> None:
    source = PTBSource(str(PTB_ROOT))
    refs, _ = source.refs()
    record = source.load(_ref_by_id(refs, record_id))
    assert record.leads == STANDARD12
    expected = wfdb.rdrecord(str(PTB_ROOT / record_id), channels=list(range(12))).p_signal
    assert record.signal.shape == expected.shape
    np.testing.assert_allclose(record.signal, expected, rtol=1e-6, atol=1e-6)


# ---- PTB-XL on the real subset ----

def _superclass_counts_with_pandas(root: pathlib.Path) -> tuple[collections.Counter, int]:
    """Independent count: records per superclass, and records with none."""
    statements = pd.read_csv(root / "scp_statements.csv", index_col=0)
    superclass = statements[statements.diagnostic == 1].diagnostic_class.to_dict()
    database = pd.read_csv(root / "ptbxl_database.csv")
    counts, unlabeled = collections.Counter(), 0
    for codes in database.scp_codes:
        classes = {superclass[code] for code in json.loads(codes.replace("'", '"')) if code in superclass}
        counts.update(classes)
        unlabeled += not classes
    return counts, unlabeled


@needs_ptbxl
def test_ptbxl_refs_labels_and_folds() -> None:
    refs, failures = PTBXLSource(str(PTBXL_ROOT)).refs()
    assert failures == []
    assert [ref.record_id for ref in refs] == [f"{i:05d}" for i in range(1, 401)]
    counts, unlabeled = _superclass_counts_with_pandas(PTBXL_ROOT)
    assert collections.Counter(label for ref in refs for label in ref.labels) == counts
    assert sum(not ref.labels for ref in refs) == unlabeled
    assert all(list(ref.labels) == sorted(set(ref.labels)) for ref in refs)
    assert {ref.fold for ref in refs} == set(range(1, 11))
    folds_of_patient = collections.defaultdict(set)
    for ref in refs:
        folds_of_patient[ref.patient_id].add(ref.fold)
    assert all(len(folds) == 1 for folds in folds_of_patient.values())
    first = refs[0]
    assert (first.patient_id, first.labels, first.fold) == ("15709", ("NORM",), 3)
    assert (first.leads, first.duration_s) == (STANDARD12, 10.0)


@needs_ptbxl
@pytest.mark.parametrize("resolution, samples, suffix", [(500, 5000, "records500/00000/00001_hr"),
                                                         (100, 1000, "records100/00000/00001_lr")])
def test_ptbxl_load(resolution: int, samples: int, suffix: str) -> None:
    source = PTBXLSource(str(PTBXL_ROOT), resolution)
    ref = source.refs()[0][0]
    assert ref.path == str(PTBXL_ROOT / suffix) and ref.sample_rate_hz == resolution
    record = source.load(ref)
    assert record.signal.shape == (samples, 12) and record.signal.dtype == np.float32
    assert record.leads == STANDARD12 and record.sample_rate_hz == resolution
    np.testing.assert_allclose(record.signal, wfdb.rdrecord(ref.path).p_signal, rtol=1e-6, atol=1e-6)


# ---- corrupted copies ----

@pytest.fixture
def ptb_copy(tmp_path: pathlib.Path) -> pathlib.Path:
    """A writable 3-record PTB folder copied from the real subset."""
    if not (PTB_ROOT / "RECORDS").is_file():
        pytest.skip(f"PTB subset not found at {PTB_ROOT}")
    for record_id in SHORT_RECORDS:
        (tmp_path / record_id).parent.mkdir(exist_ok=True)
        for ext in (".hea", ".dat"):
            target = tmp_path / f"{record_id}{ext}"
            shutil.copyfile(PTB_ROOT / f"{record_id}{ext}", target)
    (tmp_path / "RECORDS").write_text("\n".join(SHORT_RECORDS) + "\n")
    return tmp_path


def _listed(root: pathlib.Path) -> tuple[PTBSource, dict[str, RecordRef]]:
    source = PTBSource(str(root))
    refs, failures = source.refs()
    assert failures == []
    return source, {ref.record_id: ref for ref in refs}


def _assert_others_load(source: PTBSource, refs: dict[str, RecordRef], broken: str) -> None:
    for record_id, ref in refs.items():
        if record_id != broken:
            assert source.load(ref).signal.shape == (10000, 12)


@pytest.mark.parametrize("keep_bytes", [24 * 5000, 24 * 5000 + 7, 0])
def test_truncated_dat_is_a_clear_record_error(ptb_copy: pathlib.Path, keep_bytes: int) -> None:
    source, refs = _listed(ptb_copy)
    dat = ptb_copy / f"{SHORT_RECORDS[0]}.dat"
    dat.write_bytes(dat.read_bytes()[:keep_bytes])
    with pytest.raises(RecordError) as err:
        source.load(refs[SHORT_RECORDS[0]])
    assert err.value.path == str(ptb_copy / SHORT_RECORDS[0])
    assert "truncated" in err.value.reason and f"{keep_bytes // 24} of the 10000 samples" in err.value.reason
    _assert_others_load(source, refs, SHORT_RECORDS[0])


def test_missing_dat_fails_listing_and_loading(ptb_copy: pathlib.Path) -> None:
    source, refs = _listed(ptb_copy)
    dat = ptb_copy / f"{SHORT_RECORDS[1]}.dat"
    dat.unlink()
    with pytest.raises(RecordError, match=r"data file .*s0420_re\.dat is missing") as err:
        source.load(refs[SHORT_RECORDS[1]])
    assert err.value.path == str(ptb_copy / SHORT_RECORDS[1])
    listed, failures = source.refs()
    assert [ref.record_id for ref in listed] == [SHORT_RECORDS[0], SHORT_RECORDS[2]]
    assert [f.path for f in failures] == [str(ptb_copy / SHORT_RECORDS[1])]
    _assert_others_load(source, refs, SHORT_RECORDS[1])


@pytest.mark.parametrize("corrupt, reason", [
    (lambda text: "garbage that is no header\n\x00\x01\n", "unreadable header"),
    (lambda text: text.splitlines()[0] + "\n", "header declares 12 signals but describes 0"),
    (lambda text: text.replace("Reason for admission", "Reason"), "no 'Reason for admission'"),
])
def test_broken_header_goes_to_failures(ptb_copy: pathlib.Path, corrupt: Callable[[str], str], reason: str) -> None:
    source, refs = _listed(ptb_copy)
    hea = ptb_copy / f"{SHORT_RECORDS[2]}.hea"
    hea.write_text(corrupt(hea.read_text()))
    listed, failures = source.refs()
    assert [ref.record_id for ref in listed] == list(SHORT_RECORDS[:2])
    assert len(failures) == 1 and failures[0].path == str(ptb_copy / SHORT_RECORDS[2])
    assert reason in failures[0].reason
    _assert_others_load(source, refs, SHORT_RECORDS[2])


def test_garbage_header_fails_loading(ptb_copy: pathlib.Path) -> None:
    """Loading parses the header itself when the ref carries none (the listing's parse is otherwise reused)."""
    source, refs = _listed(ptb_copy)
    (ptb_copy / f"{SHORT_RECORDS[2]}.hea").write_bytes(b"\xff\xfe garbage\n")
    with pytest.raises(RecordError, match="unreadable header") as err:
        source.load(dataclasses.replace(refs[SHORT_RECORDS[2]], header=None))
    assert err.value.path == str(ptb_copy / SHORT_RECORDS[2])


def test_nan_sample_is_a_record_error(ptb_copy: pathlib.Path) -> None:
    source, refs = _listed(ptb_copy)
    dat = ptb_copy / f"{SHORT_RECORDS[0]}.dat"
    samples = np.fromfile(dat, dtype="<i2").reshape(-1, 12)
    samples[100, 3] = -32768  # format 16's invalid sample value, which wfdb reads as NaN
    samples.tofile(dat)
    with pytest.raises(RecordError, match=r"1 NaN/inf samples .* first at sample 100 of lead 'avr'") as err:
        source.load(refs[SHORT_RECORDS[0]])
    assert err.value.path == str(ptb_copy / SHORT_RECORDS[0])
    _assert_others_load(source, refs, SHORT_RECORDS[0])


def test_microvolt_units_are_converted_to_millivolts(ptb_copy: pathlib.Path) -> None:
    source, refs = _listed(ptb_copy)
    in_mv = source.load(refs[SHORT_RECORDS[0]]).signal
    original = wfdb.rdrecord(str(ptb_copy / SHORT_RECORDS[0]), physical=False)
    folder = ptb_copy / "patient200"
    wfdb.wrsamp("uv", fs=1000, units=["uV"] * 12, sig_name=original.sig_name, d_signal=original.d_signal,
                fmt=["16"] * 12, adc_gain=[2.0] * 12, baseline=[0] * 12, write_dir=str(folder),
                comments=["Reason for admission: n/a"])
    (ptb_copy / "RECORDS").write_text("patient200/uv\n")
    (ref,), _ = source.refs()
    np.testing.assert_allclose(source.load(ref).signal, in_mv, rtol=1e-6)


def test_missing_ptb_root_or_index_is_a_source_error(tmp_path: pathlib.Path) -> None:
    with pytest.raises(SourceError, match="is not a directory"):
        PTBSource(str(tmp_path / "nowhere")).refs()
    with pytest.raises(SourceError, match="no RECORDS"):
        PTBSource(str(tmp_path)).refs()
    (tmp_path / "RECORDS").write_text("\n")
    with pytest.raises(SourceError, match="lists no records"):
        PTBSource(str(tmp_path)).refs()


@pytest.fixture
def ptbxl_copy(tmp_path: pathlib.Path) -> pathlib.Path:
    """A writable PTB-XL folder with the CSVs cut to the first 3 records, and those records at 100 Hz."""
    if not (PTBXL_ROOT / "ptbxl_database.csv").is_file():
        pytest.skip(f"PTB-XL subset not found at {PTBXL_ROOT}")
    shutil.copyfile(PTBXL_ROOT / "scp_statements.csv", tmp_path / "scp_statements.csv")
    with open(PTBXL_ROOT / "ptbxl_database.csv", newline="") as f:
        rows = list(csv.reader(f))[:4]
    with open(tmp_path / "ptbxl_database.csv", "w", newline="") as f:
        csv.writer(f).writerows(rows)
    (tmp_path / "records100" / "00000").mkdir(parents=True)
    for i in (1, 2, 3):
        for ext in (".hea", ".dat"):
            name = f"records100/00000/{i:05d}_lr{ext}"
            shutil.copyfile(PTBXL_ROOT / name, tmp_path / name)
    return tmp_path


def test_ptbxl_malformed_row_and_broken_record(ptbxl_copy: pathlib.Path) -> None:
    database = ptbxl_copy / "ptbxl_database.csv"
    text = database.read_text()
    database.write_text(text.replace("{'NORM': 80.0, 'SBRAD': 0.0}", "{'NORM': 80.0,"))  # ecg_id 2
    source = PTBXLSource(str(ptbxl_copy), resolution=100)
    refs, failures = source.refs()
    assert [ref.record_id for ref in refs] == ["00001", "00003"]
    assert len(failures) == 1 and failures[0].path == f"{database} data row 2"
    assert "malformed row" in failures[0].reason
    os.remove(ptbxl_copy / "records100/00000/00003_lr.dat")
    with pytest.raises(RecordError, match=r"00003_lr\.dat is missing"):
        source.load(refs[1])
    assert source.load(refs[0]).signal.shape == (1000, 12)


def test_ptbxl_missing_files_are_source_errors(ptbxl_copy: pathlib.Path) -> None:
    with pytest.raises(SourceError, match="is not a directory"):
        PTBXLSource(str(ptbxl_copy / "nowhere")).refs()
    (ptbxl_copy / "scp_statements.csv").unlink()
    with pytest.raises(SourceError, match="scp_statements.csv is missing"):
        PTBXLSource(str(ptbxl_copy)).refs()
    with pytest.raises(ValueError, match="resolution"):
        PTBXLSource(str(ptbxl_copy), resolution=250)
