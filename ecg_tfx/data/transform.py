"""The per-record transform: one record in, its serialized window examples out.

Pure and deterministic (the same record gives the same bytes in any process), so the local converter and
the Beam pipeline share it.
"""

from __future__ import annotations

import dataclasses
from fractions import Fraction

import numpy as np
import scipy.signal
from absl import logging

from ecg_tfx.core import schema
from ecg_tfx.core.records import Record, RecordError, RecordRef


@dataclasses.dataclass(frozen=True)
class WindowPlan:
    """What every example of a conversion looks like."""

    leads: tuple[str, ...]
    sample_rate_hz: int
    window_samples: int
    stride_samples: int
    pad_short: bool
    labels: tuple[str, ...]  # the vocabulary; label ids index into it

    def window_count(self, num_samples: int) -> int:
        """Windows cut from a record of `num_samples` (at the plan's rate): 0 means too short to use."""
        if num_samples < self.window_samples:
            return 1 if self.pad_short and num_samples > 0 else 0
        return 1 + (num_samples - self.window_samples) // self.stride_samples

    def example_bytes(self) -> int:
        """An upper estimate of one serialized example's size, for planning shards."""
        return self.window_samples * len(self.leads) * 4 + 256 + 8 * len(self.leads)


def resample(signal: np.ndarray, rate_in: float, rate_out: int) -> np.ndarray:
    """Resamples [time, leads] with scipy's polyphase filter (float64 inside, float32 out)."""
    ratio = Fraction(rate_out) / Fraction(rate_in).limit_denominator(1000)
    if ratio == 1:
        return signal.astype(np.float32)
    resampled = scipy.signal.resample_poly(signal.astype(np.float64), ratio.numerator, ratio.denominator, axis=0)
    return resampled.astype(np.float32)


def select_leads(record: Record, leads: tuple[str, ...]) -> np.ndarray:
    """Columns of `record.signal` for `leads`, in that order."""
    index = {name: i for i, name in enumerate(record.leads)}
    missing = [name for name in leads if name not in index]
    if missing:
        raise RecordError(record.ref.path or record.ref.record_id, f"record lacks leads {','.join(missing)}", "leads")
    return record.signal[:, [index[name] for name in leads]]


def windows(signal: np.ndarray, plan: WindowPlan) -> list[np.ndarray]:
    """Cuts [time, leads] into the plan's windows, zero-padding a short record if the plan says so."""
    count = plan.window_count(len(signal))
    if len(signal) < plan.window_samples and count:
        signal = np.pad(signal, ((0, plan.window_samples - len(signal)), (0, 0)))
    starts = range(0, count * plan.stride_samples, plan.stride_samples)
    return [signal[start : start + plan.window_samples] for start in starts]


def record_examples(record: Record, classes: tuple[str, ...], plan: WindowPlan) -> list[bytes]:
    """Serialized examples for every window of a record labelled `classes`; RecordError if it cannot give any."""
    where = record.ref.path or record.ref.record_id
    if not np.all(np.isfinite(record.signal)):
        raise RecordError(where, "signal has NaN or infinite samples", "nan")
    unknown = [name for name in classes if name not in plan.labels]
    if unknown:
        raise RecordError(where, f"labels {unknown} are not in the vocabulary {list(plan.labels)}", "label")
    signal = resample(select_leads(record, plan.leads), record.sample_rate_hz, plan.sample_rate_hz)
    if not plan.window_count(len(signal)):
        raise RecordError(where, f"shorter than one window ({len(signal)} of {plan.window_samples} samples)", "length")
    label_ids = [plan.labels.index(name) for name in classes]
    return [
        schema.make_example(
            window, plan.leads, plan.sample_rate_hz, label_ids, classes, record.ref.record_id, record.ref.patient_id, i
        )
        for i, window in enumerate(windows(signal, plan))
    ]


def skip_entry(ref: RecordRef, reason: str, stage: str) -> dict[str, str]:
    """A skipped record as the manifest lists it; `stage` is a key of `records.SKIP_STAGES`."""
    return {"record_id": ref.record_id, "path": ref.path, "reason": reason, "stage": stage}


@dataclasses.dataclass(frozen=True)
class Converted:
    """One record's result: its examples, whether it was padded to a window, or why it was skipped."""

    examples: list[bytes]
    padded: bool
    skipped: dict[str, str] | None


def convert_record(source, ref: RecordRef, classes: tuple[str, ...], plan: WindowPlan) -> Converted:
    """Loads and transforms one record; a RecordError (an expected kind of bad record) is reported and skipped.

    Any other exception is a bug, not bad data: it propagates and stops the run with its traceback.
    """
    try:
        record = source.load(ref)
        serialized = record_examples(record, classes, plan)
    except RecordError as error:
        logging.warning("skipping %s: %s", ref.path or ref.record_id, error.reason)
        return Converted([], False, skip_entry(ref, error.reason, error.stage))
    padded = bool(serialized) and len(record.signal) * plan.sample_rate_hz < plan.window_samples * record.sample_rate_hz
    return Converted(serialized, padded, None)
