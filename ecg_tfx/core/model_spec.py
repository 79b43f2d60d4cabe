"""What a trained model expects of its input: one record, saved with every run and carried into exports."""

from __future__ import annotations

import dataclasses
import json

import tensorflow as tf

from ecg_tfx.core import storage
from ecg_tfx.dsp.preprocessing import PreprocessConfig

FILENAME = "model_spec.json"


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """The contract between data, training, evaluation and serving.

    A recording at `sample_rate_hz` with `leads` is cut into stored windows of `window_samples` every
    `stride_samples` (as the converter does); each window is preprocessed, cut again into model inputs of
    `input_samples` every `eval_stride_samples`, and the probabilities of all inputs are averaged.
    """

    model: str
    labels: tuple[str, ...]
    multi_label: bool
    leads: tuple[str, ...]
    sample_rate_hz: int
    window_samples: int
    stride_samples: int
    input_samples: int
    eval_stride_samples: int
    preprocessing: PreprocessConfig

    def __post_init__(self) -> None:
        if self.preprocessing.sample_rate_hz != self.sample_rate_hz:
            raise ValueError(f"the preprocessing runs at {self.preprocessing.sample_rate_hz} Hz but the model's "
                             f"sample rate is {self.sample_rate_hz} Hz: one rate for both")
        if not 0 < self.input_samples <= self.window_samples:
            raise ValueError(f"input_samples={self.input_samples} must lie in (0, window_samples="
                             f"{self.window_samples}]")
        if min(self.stride_samples, self.eval_stride_samples) <= 0:
            raise ValueError("stride_samples and eval_stride_samples must be positive")

    def to_json(self) -> dict:
        value = dataclasses.asdict(self)
        value["preprocessing"] = self.preprocessing.to_json()
        return value

    @classmethod
    def from_json(cls, value: dict) -> ModelSpec:
        fields = dict(value)
        fields["preprocessing"] = PreprocessConfig.from_json(fields["preprocessing"])
        for key in ("labels", "leads"):
            fields[key] = tuple(fields[key])
        return cls(**fields)

    def save(self, directory: str) -> None:
        storage.write_json(storage.join(directory, FILENAME), self.to_json())

    @classmethod
    def load(cls, directory: str) -> ModelSpec:
        return cls.from_json(storage.read_json(storage.join(directory, FILENAME)))

    def dumps(self) -> str:
        return json.dumps(self.to_json(), sort_keys=True)


def common_spec(specs: dict[str, ModelSpec]) -> ModelSpec:
    """The one ModelSpec of several runs (run folder -> its spec), which an ensemble serves; ValueError naming the
    first field (e.g. `labels`, `sample_rate_hz`, `preprocessing.highpass_hz`) where a run differs from the first."""
    (first_run, first), *others = specs.items()
    expected = _flat(first.to_json())
    for run, spec in others:
        for key, value in _flat(spec.to_json()).items():
            if value != expected[key]:
                raise ValueError(f"runs of an ensemble must share one model spec, but {key} differs: "
                                 f"{expected[key]!r} in {first_run}, {value!r} in {run}")
    return first


def _flat(value: dict, prefix: str = "") -> dict:
    """Nested JSON dicts as one dict keyed by dotted paths."""
    flat = {}
    for key, item in value.items():
        flat.update(_flat(item, f"{prefix}{key}.") if isinstance(item, dict) else {f"{prefix}{key}": item})
    return flat


def frame(signal: tf.Tensor, size: int, stride: int) -> tf.Tensor:
    """[batch, time, leads] -> [batch, frames, size, leads]: every full frame, at least one (zero-padded)."""
    time = tf.shape(signal)[1]
    padded = tf.pad(signal, [[0, 0], [0, tf.maximum(size - time, 0)], [0, 0]])
    return tf.signal.frame(padded, size, stride, pad_end=False, axis=1)


def window_probabilities(model: tf.keras.Model | object, windows: tf.Tensor, spec: ModelSpec) -> tf.Tensor:
    """Probabilities of preprocessed windows [batch, window, leads]: the mean over their model inputs."""
    crops = frame(windows, spec.input_samples, spec.eval_stride_samples)
    batch, count = tf.shape(crops)[0], tf.shape(crops)[1]
    flat = tf.reshape(crops, [batch * count, spec.input_samples, len(spec.leads)])
    probabilities = tf.cast(model(flat, training=False), tf.float32)
    return tf.reduce_mean(tf.reshape(probabilities, [batch, count, len(spec.labels)]), axis=1)
