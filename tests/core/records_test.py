"""Lead names: one alias table (records.LEAD_ALIASES) maps other databases' spellings to ours, for conversion and
`predict` alike; a real WFDB record rewritten with aliased names reads as the original."""

from __future__ import annotations

import pathlib

import numpy as np
import pytest
import wfdb

from ecg_tfx.core.records import STANDARD12, canonical_lead
from ecg_tfx.data.sources.ptb import PTBSource
from ecg_tfx.serving.predictors import InputError, diagnose, load_predictor, read_recording

RECORD = "patient001/s0010_re"
# What other databases call our 12 leads: MIT-BIH's MLII, the D-notation, other cases and inner whitespace (WFDB
# forbids it at either end; CSV headers and --leads may have it there too).
ALIASED = ["DI", "MLII", "D III", "aVR", "A_VL", "avf", "V1", "v2", "V 3", "v4", "V5", "V6"]


@pytest.mark.parametrize("name, ours", [("MLII", "ii"), ("MLI", "i"), ("MLIII", "iii"), ("DII", "ii"),
                                        ("V1 ", "v1"), (" v 1", "v1"), ("aVR", "avr"), ("a_VF", "avf"), ("X", "vx"),
                                        ("II", "ii"), ("v6", "v6"), ("ECG1", "ecg1")])
def test_aliases_case_and_whitespace(name, ours):
    assert canonical_lead(name) == ours


def rewrite_with_aliases(ptb_dir: pathlib.Path, root: pathlib.Path) -> np.ndarray:
    """Writes RECORD's 12 standard leads under ALIASED names (a PTB layout with RECORDS); returns the samples."""
    original = wfdb.rdrecord(str(ptb_dir / RECORD), channels=list(range(12)))
    folder = root / RECORD.split("/")[0]
    folder.mkdir(parents=True)
    wfdb.wrsamp(RECORD.split("/")[1], fs=original.fs, units=["mV"] * 12, sig_name=ALIASED,
                p_signal=original.p_signal, fmt=["16"] * 12, comments=original.comments, write_dir=str(folder))
    (root / "RECORDS").write_text(RECORD + "\n")
    assert wfdb.rdheader(str(root / RECORD)).sig_name[1] == "MLII"
    return original.p_signal


def test_conversion_reads_aliased_leads_as_ours(ptb_dir, tmp_path):
    samples = rewrite_with_aliases(ptb_dir, tmp_path)
    source = PTBSource(str(tmp_path))
    refs, failures = source.refs()
    assert not failures and refs[0].leads == STANDARD12
    np.testing.assert_allclose(source.load(refs[0]).signal, samples, atol=2e-3)


def test_predict_reads_aliased_leads_as_ours(ptb_dir, tiny_export, tmp_path):
    rewrite_with_aliases(ptb_dir, tmp_path)
    predictor = load_predictor(str(tiny_export["version"]))
    aliased = diagnose(predictor, str(tmp_path / f"{RECORD}.hea"), top_k=5)
    original = diagnose(predictor, str(ptb_dir / f"{RECORD}.hea"), top_k=5)
    assert aliased["decision"] == original["decision"]
    np.testing.assert_allclose([e["probability"] for e in aliased["top_k"]],
                               [e["probability"] for e in original["top_k"]], atol=1e-3)


def test_two_signals_naming_one_lead_are_refused(ptb_dir, tmp_path):
    rewrite_with_aliases(ptb_dir, tmp_path)
    header = tmp_path / f"{RECORD}.hea"
    header.write_text(header.read_text().replace(" DI\n", " II\n"))  # now II and MLII
    with pytest.raises(InputError, match="signals 'II' and 'MLII' both name lead 'ii'"):
        read_recording(str(header))
    refs, failures = PTBSource(str(tmp_path)).refs()
    assert not refs and "both name lead 'ii'" in failures[0].reason
