"""`train --convert`: reuses a conversion whatever the training seed, and says how many records it skipped."""

from __future__ import annotations

import pathlib
import subprocess
import sys

from ecg_tfx.data import conversion
from ecg_tfx.data.conversion import ConversionConfig

REPO = pathlib.Path(__file__).resolve().parents[2]
CONVERSION_ARGS = ["--synthetic_patients=10", "--synthetic_records_per_patient=2", "--synthetic_duration_s=10",
                   "--sample_rate=100"]


def test_training_seed_2_reuses_a_conversion_made_with_split_seed_0(tmp_path):
    data = tmp_path / "data"
    conversion.run(ConversionConfig(synthetic_patients=10, synthetic_records_per_patient=2, synthetic_duration_s=10,
                                    sample_rate=100, split_seed=0), str(data))
    manifest = (data / "manifest.json").read_bytes()
    done = subprocess.run(
        [sys.executable, "-m", "ecg_tfx.train", "--convert", *CONVERSION_ARGS, f"--data_dir={data}",
         f"--run_dir={tmp_path / 'run'}", "--seed=2", "--epochs=1", "--batch_size=8", "--input_seconds=2.5",
         "--warmup_epochs=0", "--export=false", "--model=cnn"],
        cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "already holds this conversion" in done.stderr
    assert "  skipped 0 records\n" in done.stdout  # the conversion's summary, skip counts included
    assert (data / "manifest.json").read_bytes() == manifest
    assert "--seed=2" in (tmp_path / "run" / "flags.txt").read_text().split()
