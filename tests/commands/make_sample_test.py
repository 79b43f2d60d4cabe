"""make_sample writes a WFDB record that wfdb reads back as the synthesized millivolts, whole or not at all."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import wfdb

from ecg_tfx import make_sample
from ecg_tfx.data.sources.synthetic import synthesize


def test_sample_round_trips_through_wfdb(tmp_path):
    done = subprocess.run([sys.executable, "-m", "ecg_tfx.make_sample", "--condition=atrial_fibrillation",
                           "--duration_s=5", "--sample_rate=360", "--seed=3", f"--output={tmp_path / 'af'}"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "wrote" in done.stdout and "af.hea" in done.stdout
    record = wfdb.rdrecord(str(tmp_path / "af"))
    expected, _ = synthesize("atrial_fibrillation", 5.0, 360, np.random.default_rng(3))
    assert record.fs == 360 and record.p_signal.shape == (1800, 12) and record.units == ["mV"] * 12
    assert [name.lower() for name in record.sig_name][:3] == ["i", "ii", "iii"]
    np.testing.assert_allclose(record.p_signal, expected, atol=2 * np.max(1 / np.array(record.adc_gain)))
    assert sorted(path.name for path in tmp_path.iterdir()) == ["af.dat", "af.hea"]  # no scratch folder left


def test_a_write_that_fails_leaves_the_previous_record_whole(tmp_path, monkeypatch):
    """...and a scratch folder a killed write left behind is cleared by the next write of the record."""
    (tmp_path / ".af.partial").mkdir()
    (tmp_path / ".af.partial" / "af.dat").write_bytes(b"a killed write's half")
    header = make_sample.write_sample(str(tmp_path / "af"), "atrial_fibrillation", 5.0, 360, 3)
    before = {path.name: path.read_bytes() for path in tmp_path.iterdir()}
    assert header == str(tmp_path / "af.hea") and sorted(before) == ["af.dat", "af.hea"]

    write = wfdb.wrsamp

    def killed_after_writing(*args, **kwargs):
        write(*args, **kwargs)  # both files are written, then the process fails before they are published
        raise OSError("disk full")

    monkeypatch.setattr(make_sample.wfdb, "wrsamp", killed_after_writing)
    with pytest.raises(OSError, match="disk full"):
        make_sample.write_sample(str(tmp_path / "af"), "normal", 10.0, 500, 4)
    assert {path.name: path.read_bytes() for path in tmp_path.iterdir()} == before
