"""Writes a synthetic ECG recording as a WFDB record, to try `predict` and `serve` without any database.

    python -m ecg_tfx.make_sample --condition=atrial_fibrillation --output=workspace/samples/af
    python -m ecg_tfx.predict --model=workspace/runs/synthetic_quick/export/ecg workspace/samples/af.hea
"""

from __future__ import annotations

import os

import numpy as np
import wfdb
from absl import app, flags

from ecg_tfx.core import storage
from ecg_tfx.core.labels import SYNTHETIC_CONDITIONS
from ecg_tfx.core.records import STANDARD12
from ecg_tfx.data.sources.synthetic import synthesize

_CONDITION = flags.DEFINE_enum("condition", "normal", list(SYNTHETIC_CONDITIONS), "Condition to synthesize.")
_OUTPUT = flags.DEFINE_string("output", "workspace/samples/sample", "Record path without extension (.hea/.dat); "
                               "local, gs:// or s3://.")
_DURATION_S = flags.DEFINE_float("duration_s", 30.0, "Length in seconds.", lower_bound=1.0)
_SAMPLE_RATE = flags.DEFINE_integer("sample_rate", 1000, "Sampling rate in Hz (any: the export resamples).",
                                    lower_bound=100)
_SEED = flags.DEFINE_integer("seed", 1234, "Random seed.")


def write_sample(path: str, condition: str, duration_s: float, sample_rate_hz: int, seed: int) -> str:
    """Synthesizes one recording and writes it as 16-bit WFDB in mV; returns the header path."""
    signal, _ = synthesize(condition, duration_s, sample_rate_hz, np.random.default_rng(seed))
    path = path if "://" in path else os.path.abspath(path)
    with storage.local_output(path) as local:
        directory, name = os.path.split(local)
        wfdb.wrsamp(name, fs=sample_rate_hz, units=["mV"] * len(STANDARD12),
                    sig_name=[lead.upper() for lead in STANDARD12], p_signal=signal.astype(np.float64),
                    fmt=["16"] * len(STANDARD12), write_dir=directory, comments=[f"synthetic {condition}, seed {seed}"])
    return path + ".hea"


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    header = write_sample(_OUTPUT.value, _CONDITION.value, _DURATION_S.value, _SAMPLE_RATE.value, _SEED.value)
    print(f"wrote {header} ({_CONDITION.value}, {_DURATION_S.value:g} s at {_SAMPLE_RATE.value} Hz)")


if __name__ == "__main__":
    storage.run_app(main)
