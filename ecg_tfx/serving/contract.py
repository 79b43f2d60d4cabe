"""The input contract of an export: what every signature accepts, in one place.

The signatures check it in-graph with stock TF ops (`tf.debugging.Assert`, so a violation is InvalidArgument, HTTP
400 from TF Serving and from our server) before anything that grows with the input is allocated; `predict` and the
TFLite wrapper check it in numpy with the same messages. The limits:

- sample rate: a whole number of Hz in [50, 10000]. 50 Hz still records the QRS band (< 25 Hz) that low-power
  wearables keep; Holter recorders sample at 125-1000 Hz, diagnostic carts at 250-1000 Hz (PTB: 1000 Hz) and
  high-resolution ECG at up to 8-10 kHz. Beyond these the in-graph resampler's filter bank grows with the rate
  (999983 Hz needs tens of GB) and upsampling multiplies the input (1 Hz -> 500 Hz: 500x).
- each recording lasts at least the model's input length (`input_samples` at the model's rate; 2.5 s in every
  pipeline): anything shorter would be scored mostly on zero padding.
- at most 120 s of ECG per `serving_default` request (recordings x duration): the longest PTB records and twelve
  standard 10-s ECGs fit. The worst request accepted for a 500 Hz model (one 120-s recording at 9999 Hz, coprime
  with 500, which makes the largest polyphase bank) raises peak RSS over the loaded model's by ~0.5 GB (tested
  bound: 1 GB) and answers in 2-5 s on 2 shared cores (tested bound: 30 s) (tests/serving/contract_test.py).
- finite values (no NaN or Infinity), in `ecg` and in every example's `ecg/signal`.
- examples (`serve_examples`, `classify`) must say they are a window of the model: `ecg/shape` [window_samples,
  leads], `ecg/leads` the model's leads in its order, `ecg/sample_rate_hz` the model's rate and `ecg/signal`
  exactly that many float32 values. Each window costs the same and nothing is resampled, so their number per
  request is left to the transport (and TF Serving's batching, which merges requests, stays usable).
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import tensorflow as tf

from ecg_tfx.core import schema, storage
from ecg_tfx.core.model_spec import ModelSpec

FILENAME = "input_contract.json"  # beside tflite/model_spec.json; the SavedModel's metadata() returns the same JSON
# Messages: "{}" is filled with the offending value, in the graph by tf.strings.format and in numpy by _number.
NON_FINITE = "{} must hold finite numbers only (no NaN or Infinity)"
WHOLE_RATE = "sample_rate must be a whole number of Hz; got {} Hz"


class ContractError(ValueError):
    """An input outside the contract; the message names the limit and the value."""


@dataclasses.dataclass(frozen=True)
class InputContract:
    """The limits every signature enforces: rates in Hz, lengths in seconds."""

    min_seconds: float  # shortest recording: the model's input length
    min_rate_hz: int = 50
    max_rate_hz: int = 10_000
    max_request_seconds: float = 120.0  # serving_default: recordings x duration

    @classmethod
    def for_spec(cls, spec: ModelSpec) -> InputContract:
        return cls(min_seconds=spec.input_samples / spec.sample_rate_hz)

    def dumps(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def loads(cls, text: str) -> InputContract:
        return cls(**json.loads(text))

    def save(self, directory: str) -> None:
        storage.write_json(storage.join(directory, FILENAME), dataclasses.asdict(self))

    @classmethod
    def load(cls, directory: str) -> InputContract:
        return cls(**storage.read_json(storage.join(directory, FILENAME)))

    @property
    def rate_range(self) -> str:
        return f"sample_rate must lie in [{self.min_rate_hz}, {self.max_rate_hz}] Hz; got {{}} Hz"

    @property
    def too_short(self) -> str:
        return f"each recording must last at least {self.min_seconds:g} s; got {{}} s"

    @property
    def too_long(self) -> str:
        return f"a request may hold at most {self.max_request_seconds:g} s of ECG (recordings x duration); got {{}} s"


# --- numpy: predict and the TFLite wrapper ---------------------------------------------------------------------


def _number(value: float) -> str:
    """A number as tf.strings.format prints a float64: the shortest of %.15g and %.17g that reads back exactly."""
    text = f"{value:.15g}"
    return text if float(text) == value else f"{value:.17g}"


def check_recording(contract: InputContract, signal: np.ndarray, sample_rate_hz: float) -> int:
    """Checks one recording [time, leads] in mV before any resampling; returns its rate as an int (Hz)."""
    if not contract.min_rate_hz <= sample_rate_hz <= contract.max_rate_hz:
        raise ContractError(contract.rate_range.format(_number(sample_rate_hz)))
    if sample_rate_hz != round(sample_rate_hz):
        raise ContractError(WHOLE_RATE.format(_number(sample_rate_hz)))
    seconds = len(signal) / sample_rate_hz
    if seconds < contract.min_seconds:
        raise ContractError(contract.too_short.format(_number(seconds)))
    if seconds > contract.max_request_seconds:
        raise ContractError(contract.too_long.format(_number(seconds)))
    check_finite(signal, "ecg")
    return int(sample_rate_hz)


def check_finite(values: np.ndarray, name: str) -> None:
    if not np.isfinite(values).all():
        raise ContractError(NON_FINITE.format(name))


# --- in-graph: the SavedModel's signatures --------------------------------------------------------------------


class _Checks:
    """tf.debugging.Assert ops run one after the other (so the first violated limit is the one reported)."""

    def __init__(self) -> None:
        self._last: list[tf.Operation] = []

    def require(self, condition: tf.Tensor, template: str, *values: tf.Tensor) -> None:
        """Asserts `condition`; the message is `template` with each "{}" replaced by a value (strings unquoted)."""
        pieces = template.split("{}")
        parts = [pieces[0]]
        for value, piece in zip(values, pieces[1:]):
            parts += [value if value.dtype == tf.string else tf.strings.format("{}", value), piece]
        message = tf.strings.join(parts)
        with tf.control_dependencies(self._last):
            self._last = [tf.debugging.Assert(condition, [message])]

    def gate(self, *tensors: tf.Tensor) -> list[tf.Tensor]:
        """`tensors`, available only after every check passed: what uses them cannot start earlier."""
        with tf.control_dependencies(self._last):
            return [tf.identity(t) for t in tensors]


def checked_recordings(contract: InputContract, ecg: tf.Tensor, sample_rate: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """`serving_default`'s inputs checked: ecg [batch, time, leads] mV and its one sample rate as int64 Hz."""
    checks = _Checks()
    shape = tf.shape(ecg, out_type=tf.int64)
    checks.require(tf.equal(tf.size(sample_rate, out_type=tf.int64), shape[0]),
                   "sample_rate needs one value per recording in ecg")
    rate = tf.cast(tf.reduce_max(sample_rate), tf.float64)
    checks.require(tf.equal(tf.cast(tf.reduce_min(sample_rate), tf.float64), rate),
                   "all recordings of one request must share one sample_rate; send recordings at different rates "
                   "in separate requests")
    checks.require(tf.logical_and(rate >= contract.min_rate_hz, rate <= contract.max_rate_hz),
                   contract.rate_range, rate)
    checks.require(tf.equal(tf.round(rate), rate), WHOLE_RATE, rate)
    seconds = tf.cast(shape[1], tf.float64) / rate
    checks.require(seconds >= contract.min_seconds, contract.too_short, seconds)
    total = tf.cast(shape[0], tf.float64) * seconds
    checks.require(total <= contract.max_request_seconds, contract.too_long, total)
    checks.require(tf.reduce_all(tf.math.is_finite(ecg)), NON_FINITE.format("ecg"))
    ecg, rate = checks.gate(ecg, rate)
    return ecg, tf.cast(rate, tf.int64)


def checked_windows(spec: ModelSpec, serialized: tf.Tensor) -> tf.Tensor:
    """Serialized tf.Examples (the converter's schema) checked against the model -> mV windows [n, window, leads]."""
    checks = _Checks()
    parsed = tf.io.parse_example(serialized, schema.feature_spec())
    leads = len(spec.leads)
    shape = [spec.window_samples, leads]
    names = ",".join(spec.leads)
    size = spec.window_samples * leads * 4  # float32
    for values, expected, template in (
            (parsed[schema.SHAPE], shape, f"examples must have {schema.SHAPE} {shape}; got {{}}"),
            (tf.strings.reduce_join(tf.sparse.to_dense(parsed[schema.LEADS]), axis=1, separator=","), names,
             f"examples must have {schema.LEADS} {names}; got {{}}"),
            (tf.cast(parsed[schema.SAMPLE_RATE], tf.float64), spec.sample_rate_hz,
             f"examples must have {schema.SAMPLE_RATE} {spec.sample_rate_hz}; got {{}}"),
            (tf.strings.length(parsed[schema.SIGNAL]), size,
             f"examples must hold {spec.window_samples} x {leads} float32 in {schema.SIGNAL} ({size} bytes); "
             "got {} bytes")):
        ok = tf.equal(values, expected)
        ok = tf.reduce_all(ok, axis=1) if ok.shape.rank == 2 else ok
        checks.require(tf.reduce_all(ok), template, _first_bad(values, ok, expected))
    (signal,) = checks.gate(parsed[schema.SIGNAL])
    windows = tf.reshape(tf.io.decode_raw(signal, tf.float32, little_endian=True), [-1, spec.window_samples, leads])
    checks.require(tf.reduce_all(tf.math.is_finite(windows)), NON_FINITE.format(schema.SIGNAL))
    return checks.gate(windows)[0]


def _first_bad(values: tf.Tensor, ok: tf.Tensor, expected: object) -> tf.Tensor:
    """The first of `values` whose `ok` is False (`expected` when all are ok, even in an empty batch)."""
    fallback = tf.cast([expected], values.dtype)
    return tf.concat([tf.boolean_mask(values, tf.logical_not(ok)), fallback], axis=0)[0]
