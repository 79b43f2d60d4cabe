"""The SavedModel for TF Serving: three signatures, the labels asset and warm-up requests.

Signatures (in the style of TF Model Garden's export_base: one `serve` core, one small tf.function per input kind),
all stock TF ops so the export loads without this package, each enforcing the input contract (`contract.py`) first:
- `serving_default`: `ecg` float32 [batch, time, leads] in mV at a whole `sample_rate` in the contract's range
  (float32 [batch], equal within a request) -> resampled in-graph to the spec's rate, cut into stored windows,
  preprocessed, cut into model inputs; the probabilities are averaged over all model inputs of a recording.
- `serve_examples`: `examples` serialized tf.Example in the converter's schema -> one prediction per window.
- `classify`: TF Serving's Classify API (`inputs` -> `classes`, `scores`).
Each returns the calibrated `probabilities` [batch, classes], `class_id` int64 and `class_name` string (their
argmax), the fitted decision's `present`, `present_names`, `confidence`, `reason` and `decision` (`decide.py`;
classify: `classes` and the calibrated `scores`), and the signal-quality gate's verdict (`dsp/quality.py`, on the
raw mV signal at the spec's rate): `bad_leads` bool [batch, leads], `heart_rate_bpm` float32 [batch] and
`signal_unreadable` bool [batch]; an unreadable signal makes the decision "inconclusive" with reason "poor_signal".
At a spec rate of 100 Hz the gate cannot see mains or most EMG noise (`quality.py`).
"""

from __future__ import annotations

import json
import os
import tempfile

import keras
import numpy as np
import tensorflow as tf
from tensorflow.core.protobuf import saved_model_pb2
from tensorflow.python.saved_model.pywrap_saved_model import fingerprinting
from tensorflow_serving.apis import classification_pb2, input_pb2, model_pb2, predict_pb2, prediction_log_pb2

from ecg_tfx.core import compat, schema, storage
from ecg_tfx.core.model_spec import ModelSpec, frame, window_probabilities
from ecg_tfx.dsp.preprocessing import preprocess
from ecg_tfx.dsp.resample import resample
from ecg_tfx.evaluation.decision import Decision
from ecg_tfx.serving.contract import InputContract, checked_recordings, checked_windows
from ecg_tfx.serving.decide import calibrate, record_outputs

LABELS_FILE = "labels.txt"
WARMUP_FILE = "tf_serving_warmup_requests"
SIGNATURES = ("serving_default", "serve_examples", "classify")


class ExportModule(tf.Module):
    """The served graph: the Keras model behind the run's ModelSpec and fitted Decision, with metadata readable
    after loading."""

    def __init__(self, model: keras.Model, spec: ModelSpec, decision: Decision, labels_path: str):
        super().__init__(name="ecg_export")
        self.model = model
        self._spec = spec
        self._decision = decision
        self._contract = InputContract.for_spec(spec)
        self.class_names = tf.Variable(list(spec.labels), trainable=False, name="class_names")
        self.leads = tf.Variable(list(spec.leads), trainable=False, name="leads")
        self.sample_rate_hz = tf.Variable(spec.sample_rate_hz, dtype=tf.int64, trainable=False, name="sample_rate_hz")
        self.window_samples = tf.Variable(spec.window_samples, dtype=tf.int64, trainable=False, name="window_samples")
        self.model_spec_json = tf.Variable(spec.dumps(), trainable=False, name="model_spec_json")
        self.input_contract_json = tf.Variable(self._contract.dumps(), trainable=False, name="input_contract_json")
        self.decision_json = tf.Variable(json.dumps(decision.to_json(), sort_keys=True), trainable=False,
                                         name="decision_json")
        self.labels_file = tf.saved_model.Asset(labels_path)
        num_leads = len(spec.leads)
        self.serve_ecg = tf.function(self._serve_ecg, autograph=False, input_signature=[
            tf.TensorSpec([None, None, num_leads], tf.float32, name="ecg"),
            tf.TensorSpec([None], tf.float32, name="sample_rate")])
        self.serve_examples = tf.function(self._serve_examples, autograph=False, input_signature=[
            tf.TensorSpec([None], tf.string, name="examples")])
        self.classify = tf.function(self._classify, autograph=False,
                                    input_signature=[tf.TensorSpec([None], tf.string, name="inputs")])

    def serve(self, windows: tf.Tensor) -> tf.Tensor:
        """The core: raw mV windows [n, window_samples, leads] at the spec's rate -> raw probabilities [n, classes]."""
        return window_probabilities(self.model, preprocess(windows, self._spec.preprocessing), self._spec)

    def _outputs(self, probabilities: tf.Tensor, signal: tf.Tensor) -> dict[str, tf.Tensor]:
        """Raw probabilities of raw mV `signal` [batch, time, leads] at the spec's rate -> `decide.record_outputs`."""
        return record_outputs(probabilities, signal, self._spec.sample_rate_hz, self._decision,
                              tf.convert_to_tensor(self.class_names))

    def _serve_ecg(self, ecg: tf.Tensor, sample_rate: tf.Tensor) -> dict[str, tf.Tensor]:
        spec = self._spec
        ecg, rate = checked_recordings(self._contract, ecg, sample_rate)
        signal = resample(ecg, rate, spec.sample_rate_hz)
        windows = frame(signal, spec.window_samples, spec.stride_samples)  # [batch, windows, time, leads]
        batch, count = tf.shape(windows)[0], tf.shape(windows)[1]
        flat = tf.reshape(windows, [batch * count, spec.window_samples, len(spec.leads)])
        probabilities = tf.reshape(self.serve(flat), [batch, count, len(spec.labels)])
        return self._outputs(tf.reduce_mean(probabilities, axis=1), signal)

    def _serve_examples(self, examples: tf.Tensor) -> dict[str, tf.Tensor]:
        windows = self._parse(examples)
        return self._outputs(self.serve(windows), windows)

    def _classify(self, inputs: tf.Tensor) -> dict[str, tf.Tensor]:
        scores = calibrate(self.serve(self._parse(inputs)), self._decision.calibration)
        classes = tf.tile(tf.convert_to_tensor(self.class_names)[tf.newaxis], [tf.shape(scores)[0], 1])
        return {"classes": classes, "scores": scores}

    def _parse(self, examples: tf.Tensor) -> tf.Tensor:
        return checked_windows(self._spec, examples)

    @tf.function(input_signature=[], autograph=False)
    def metadata(self) -> dict[str, tf.Tensor]:
        """Class names, leads, sample rate, window length and the JSON of the ModelSpec, input contract and Decision."""
        return {
            "class_names": tf.convert_to_tensor(self.class_names),
            "leads": tf.convert_to_tensor(self.leads),
            "sample_rate_hz": tf.convert_to_tensor(self.sample_rate_hz),
            "window_samples": tf.convert_to_tensor(self.window_samples),
            "model_spec_json": tf.convert_to_tensor(self.model_spec_json),
            "input_contract_json": tf.convert_to_tensor(self.input_contract_json),
            "decision_json": tf.convert_to_tensor(self.decision_json),
        }



def write_saved_model(model: keras.Model, spec: ModelSpec, decision: Decision, path: str, model_name: str) -> None:
    """Writes the SavedModel with its three signatures, labels asset and warm-up requests to `path`."""
    with tempfile.TemporaryDirectory() as scratch:
        labels_path = os.path.join(scratch, LABELS_FILE)
        with open(labels_path, "w") as f:
            f.write("".join(f"{name}\n" for name in spec.labels))
        module = ExportModule(model, spec, decision, labels_path)
        signatures = {
            "serving_default": module.serve_ecg.get_concrete_function(),
            "serve_examples": module.serve_examples.get_concrete_function(),
            "classify": module.classify.get_concrete_function(),
        }
        tf.saved_model.save(module, path, signatures=signatures)
    set_method_name(path, "classify", tf.saved_model.CLASSIFY_METHOD_NAME)
    write_warmup(path, spec, model_name)


def set_method_name(path: str, signature: str, method_name: str) -> None:
    """Gives a saved signature a method name (TF2's save always writes 'predict'); refreshes the fingerprint.

    TF Serving routes `:classify` only to signatures whose method is `tensorflow/serving/classify`, as
    `tf.compat.v1.saved_model.classification_signature_def` would write them.
    """
    pb_path = storage.join(path, "saved_model.pb")
    saved_model = saved_model_pb2.SavedModel()
    saved_model.ParseFromString(storage.read_bytes(pb_path))
    saved_model.meta_graphs[0].signature_def[signature].method_name = method_name
    storage.write_bytes(pb_path, compat.serialize(saved_model))
    # fingerprint.pb hashes saved_model.pb; TF's own writer (the same call tf.saved_model.save makes) recomputes it.
    storage.write_bytes(storage.join(path, "fingerprint.pb"), fingerprinting.CreateFingerprintDef(path))


def warmup_signal(spec: ModelSpec) -> np.ndarray:
    """One window [window_samples, leads] of a deterministic 1 Hz, 1 mV sine (valid input for every path)."""
    t = np.arange(spec.window_samples) / spec.sample_rate_hz
    return np.repeat(np.sin(2 * np.pi * t)[:, None], len(spec.leads), axis=1).astype(np.float32)


def write_warmup(path: str, spec: ModelSpec, model_name: str) -> None:
    """assets.extra/tf_serving_warmup_requests: one batch-1 request per signature, replayed by TF Serving on load."""
    signal = warmup_signal(spec)
    serialized = schema.make_example(signal, spec.leads, spec.sample_rate_hz, [], [], "warmup", "warmup", 0)
    predict_inputs = {
        "serving_default": {"ecg": tf.make_tensor_proto(signal[None]),
                            "sample_rate": tf.make_tensor_proto(np.array([spec.sample_rate_hz], np.float32))},
        "serve_examples": {"examples": tf.make_tensor_proto(np.array([serialized], dtype=object))},
    }
    logs = [
        prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=predict_pb2.PredictRequest(
            model_spec=model_pb2.ModelSpec(name=model_name, signature_name=name), inputs=inputs)))
        for name, inputs in predict_inputs.items()
    ]
    logs.append(prediction_log_pb2.PredictionLog(classify_log=prediction_log_pb2.ClassifyLog(
        request=classification_pb2.ClassificationRequest(
            model_spec=model_pb2.ModelSpec(name=model_name, signature_name="classify"),
            input=input_pb2.Input(example_list=input_pb2.ExampleList(examples=[tf.train.Example.FromString(
                serialized)]))))))
    extra = storage.join(path, "assets.extra")
    storage.makedirs(extra)
    with tf.io.TFRecordWriter(storage.join(extra, WARMUP_FILE)) as writer:
        for log in logs:
            writer.write(compat.serialize(log))
