"""The manifest of a conversion (`manifest.json`): what the shards hold, written by the converters, read by every
later stage (training, evaluation, export) through `Manifest.load`."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ecg_tfx.core import schema, storage

if TYPE_CHECKING:
    from ecg_tfx.core.model_spec import ModelSpec

FILENAME = "manifest.json"
SPLITS = ("train", "validation", "test")


@dataclasses.dataclass(frozen=True)
class ShardFile:
    """One written shard: its file name (relative to the data folder), example count and sha256 (hex)."""

    file: str
    examples: int
    sha256: str


@dataclasses.dataclass(frozen=True)
class SplitSummary:
    """Counts of one split, every patient id in it (the leakage audit) and its shards."""

    examples: int
    records: int
    patients: int
    patient_ids: tuple[str, ...]
    class_examples: Mapping[str, int]
    class_records: Mapping[str, int]
    shards: tuple[ShardFile, ...]


@dataclasses.dataclass(frozen=True)
class Manifest:
    """A conversion: its flags, labels, leads, rate (Hz), window and stride (samples), splits and skipped records."""

    schema_version: int
    source: str
    config: Mapping[str, Any]  # the ConversionConfig, as recorded (decides whether a folder is reused)
    label_preset: str
    multi_label: bool
    labels: tuple[str, ...]
    leads: tuple[str, ...]
    sample_rate_hz: int
    window_samples: int
    stride_samples: int
    compression: str  # 'NONE' or 'GZIP'
    padded_records: int
    splits: Mapping[str, SplitSummary]
    skipped: tuple[Mapping[str, str], ...]  # record_id, path, reason, stage
    skipped_counts: Mapping[str, int]  # skipped records per stage

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, value: Mapping[str, Any]) -> Manifest:
        fields = dict(value)
        fields["splits"] = {name: SplitSummary(**{**split, "patient_ids": tuple(split["patient_ids"]),
                                                   "shards": tuple(ShardFile(**s) for s in split["shards"])})
                            for name, split in value["splits"].items()}
        for key in ("labels", "leads", "skipped"):
            fields[key] = tuple(fields[key])
        return cls(**fields)

    def save(self, data_dir: str) -> None:
        """Writes `manifest.json` into `data_dir` atomically (keys sorted: equal content, equal bytes)."""
        storage.write_json(storage.join(data_dir, FILENAME), self.to_json())

    @classmethod
    def load(cls, data_dir: str) -> Manifest:
        """The manifest of `data_dir` (any filesystem); ValueError for another schema version."""
        storage.enable_filesystem(data_dir)
        value = storage.read_json(storage.join(data_dir, FILENAME))
        if value["schema_version"] != schema.SCHEMA_VERSION:
            raise ValueError(f"{data_dir} has schema version {value['schema_version']}, "
                             f"this ecg_tfx reads {schema.SCHEMA_VERSION}: convert again")
        return cls.from_json(value)

    def split(self, name: str) -> SplitSummary:
        if name not in self.splits:
            raise ValueError(f"the data has no split {name!r}; it has {sorted(self.splits)}")
        return self.splits[name]

    def shard_files(self, data_dir: str, split: str) -> list[str]:
        """Paths of a split's shards; ValueError if it has none."""
        files = [storage.join(data_dir, shard.file) for shard in self.split(split).shards]
        if not files:
            raise ValueError(f"{data_dir} has no {split} shards")
        return files

    def model_spec(self, model: str, input_seconds: float = 0.0, eval_stride_seconds: float = 1.0,
                   highpass_hz: float | None = 0.5, lowpass_hz: float | None = None,
                   powerline_hz: float | None = None) -> ModelSpec:
        """The spec of a `model` trained on this data: inputs of `input_seconds` (0 = the stored window) cut
        every `eval_stride_seconds` at test time, with the given preprocessing filters (None = off)."""
        # Here, not at the top: they import TensorFlow, which a conversion (that only writes a manifest) needs not.
        from ecg_tfx.core.model_spec import ModelSpec
        from ecg_tfx.dsp.preprocessing import PreprocessConfig

        rate = self.sample_rate_hz
        input_samples = round(input_seconds * rate) or self.window_samples
        if input_samples > self.window_samples:
            raise ValueError(f"input_seconds={input_seconds} exceeds the stored window "
                             f"({self.window_samples / rate:g} s)")
        return ModelSpec(
            model=model, labels=self.labels, multi_label=self.multi_label, leads=self.leads, sample_rate_hz=rate,
            window_samples=self.window_samples, stride_samples=self.stride_samples, input_samples=input_samples,
            eval_stride_samples=max(1, round(eval_stride_seconds * rate)),
            preprocessing=PreprocessConfig(rate, highpass_hz, lowpass_hz, powerline_hz))

    def check_compatible(self, spec: ModelSpec) -> None:
        """ValueError unless this data has the model's labels, leads, rate and window length."""
        wrong = {key: (getattr(spec, key), getattr(self, key))
                 for key in ("labels", "leads", "sample_rate_hz", "window_samples")
                 if getattr(spec, key) != getattr(self, key)}
        if wrong:
            raise ValueError("the data does not match the model: " + "; ".join(
                f"{key}: model {list(m) if isinstance(m, tuple) else m!r}, "
                f"data {list(d) if isinstance(d, tuple) else d!r}" for key, (m, d) in wrong.items()))

    def class_weights(self, labels: tuple[str, ...]) -> list[float]:
        """Inverse-frequency weights from the training counts (mean 1 over examples)."""
        counts = self.split("train").class_examples
        total = sum(counts.get(name, 0) for name in labels)
        return [total / (len(labels) * counts[name]) if counts.get(name) else 0.0 for name in labels]
