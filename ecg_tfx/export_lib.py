"""Export of a training run for TF Serving (a SavedModel with three signatures) and for TFLite.

Layout, as TF Serving expects: `<export_dir>/<model_name>/<version>/` with `saved_model.pb`, `variables/`,
`assets/labels.txt` and `assets.extra/tf_serving_warmup_requests`; with `--tflite` also `tflite/` (a float32 and an
int8 model plus their `model_spec.json`) and `export_report.json`. A version is written under a hidden temporary
sibling (TF Serving ignores non-integer names) and moved into place only when everything succeeded, so a local
version directory is always whole; on gs:// and s3:// (no folder rename) `saved_model.pb` is copied last.

Signatures (in the style of TF Model Garden's export_base: one `serve` core, one small tf.function per input kind),
all stock TF ops so the export loads without this package:
- `serving_default`: `ecg` float32 [batch, time, leads] in mV at any whole `sample_rate` (float32 [batch], equal
  within a request) -> resampled in-graph to the spec's rate, cut into stored windows, preprocessed, cut into model
  inputs; the probabilities are averaged over all model inputs of a recording.
- `serve_examples`: `examples` serialized tf.Example in the converter's schema -> one prediction per window.
- `classify`: TF Serving's Classify API (`inputs` -> `classes`, `scores`).
Each returns `probabilities` [batch, classes], `class_id` int64, `class_name` string and `confidence` float32
(classify: `classes`, `scores`).
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator

import keras
import numpy as np
import tensorflow as tf
from absl import logging
from tensorflow.core.protobuf import saved_model_pb2
from tensorflow.python.saved_model.pywrap_saved_model import fingerprinting
from tensorflow_serving.apis import classification_pb2, input_pb2, model_pb2, predict_pb2, prediction_log_pb2

from ecg_tfx import input_pipeline, schema, storage
from ecg_tfx.core import compat
from ecg_tfx.model_spec import ModelSpec, frame, window_probabilities
from ecg_tfx.preprocessing import preprocess
from ecg_tfx.resample import resample

MODEL_FILE = "model.keras"
LABELS_FILE = "labels.txt"
WARMUP_FILE = "tf_serving_warmup_requests"
REPORT_FILE = "export_report.json"
TFLITE_DIR = "tflite"
CLASSIFY_METHOD = "tensorflow/serving/classify"
SIGNATURES = ("serving_default", "serve_examples", "classify")
MIN_AGREEMENT = 0.9  # argmax agreement with the SavedModel below which a TFLite model is marked unusable
REPRESENTATIVE_WINDOWS = 64  # training windows that calibrate the int8 quantization
AGREEMENT_WINDOWS = 256  # test windows that measure TFLite vs SavedModel agreement
LATENCY_RUNS = 10  # batch-1 calls whose median is reported


class ExportModule(tf.Module):
    """The served graph: the Keras model behind the run's ModelSpec, with metadata readable after loading."""

    def __init__(self, model: keras.Model, spec: ModelSpec, labels_path: str):
        super().__init__(name="ecg_export")
        self.model = model
        self._spec = spec
        self.class_names = tf.Variable(list(spec.labels), trainable=False, name="class_names")
        self.leads = tf.Variable(list(spec.leads), trainable=False, name="leads")
        self.sample_rate_hz = tf.Variable(spec.sample_rate_hz, dtype=tf.int64, trainable=False, name="sample_rate_hz")
        self.window_samples = tf.Variable(spec.window_samples, dtype=tf.int64, trainable=False, name="window_samples")
        self.model_spec_json = tf.Variable(spec.dumps(), trainable=False, name="model_spec_json")
        self.labels_file = tf.saved_model.Asset(labels_path)
        num_leads = len(spec.leads)
        self.serve_ecg = tf.function(self._serve_ecg, input_signature=[
            tf.TensorSpec([None, None, num_leads], tf.float32, name="ecg"),
            tf.TensorSpec([None], tf.float32, name="sample_rate")])
        self.serve_examples = tf.function(self._serve_examples, input_signature=[
            tf.TensorSpec([None], tf.string, name="examples")])
        self.classify = tf.function(self._classify, input_signature=[tf.TensorSpec([None], tf.string, name="inputs")])

    def serve(self, windows: tf.Tensor) -> tf.Tensor:
        """The core: raw mV windows [n, window_samples, leads] at the spec's rate -> probabilities [n, classes]."""
        return window_probabilities(self.model, preprocess(windows, self._spec.preprocessing), self._spec)

    def _outputs(self, probabilities: tf.Tensor) -> dict[str, tf.Tensor]:
        class_id = tf.argmax(probabilities, axis=-1, output_type=tf.int64)
        return {
            "probabilities": probabilities,
            "class_id": class_id,
            "class_name": tf.gather(self.class_names, class_id),
            "confidence": tf.reduce_max(probabilities, axis=-1),
        }

    def _serve_ecg(self, ecg: tf.Tensor, sample_rate: tf.Tensor) -> dict[str, tf.Tensor]:
        spec = self._spec
        rate = _request_rate(ecg, sample_rate)
        signal = resample(ecg, rate, spec.sample_rate_hz)
        windows = frame(signal, spec.window_samples, spec.stride_samples)  # [batch, windows, time, leads]
        batch, count = tf.shape(windows)[0], tf.shape(windows)[1]
        flat = tf.reshape(windows, [batch * count, spec.window_samples, len(spec.leads)])
        probabilities = tf.reshape(self.serve(flat), [batch, count, len(spec.labels)])
        return self._outputs(tf.reduce_mean(probabilities, axis=1))

    def _serve_examples(self, examples: tf.Tensor) -> dict[str, tf.Tensor]:
        return self._outputs(self.serve(self._parse(examples)))

    def _classify(self, inputs: tf.Tensor) -> dict[str, tf.Tensor]:
        scores = self.serve(self._parse(inputs))
        classes = tf.tile(tf.convert_to_tensor(self.class_names)[tf.newaxis], [tf.shape(scores)[0], 1])
        return {"classes": classes, "scores": scores}

    def _parse(self, examples: tf.Tensor) -> tf.Tensor:
        return schema.parse_examples(examples, self._spec.window_samples, len(self._spec.leads))["signal"]

    @tf.function(input_signature=[])
    def metadata(self) -> dict[str, tf.Tensor]:
        """Class names, leads, sample rate, window length and the full ModelSpec JSON."""
        return {
            "class_names": tf.convert_to_tensor(self.class_names),
            "leads": tf.convert_to_tensor(self.leads),
            "sample_rate_hz": tf.convert_to_tensor(self.sample_rate_hz),
            "window_samples": tf.convert_to_tensor(self.window_samples),
            "model_spec_json": tf.convert_to_tensor(self.model_spec_json),
        }


def _request_rate(ecg: tf.Tensor, sample_rate: tf.Tensor) -> tf.Tensor:
    """The one whole sample rate of a request (int64), asserting that every recording shares it."""
    tf.debugging.assert_equal(tf.shape(sample_rate)[0], tf.shape(ecg)[0],
                              message="sample_rate needs one value per recording in ecg")
    rate = tf.reduce_max(sample_rate)
    tf.debugging.assert_equal(tf.reduce_min(sample_rate), rate,
                              message="all recordings of one request must share one sample_rate; "
                                      "send recordings at different rates in separate requests")
    tf.debugging.assert_equal(tf.round(rate), rate, message="sample_rate must be a whole number of Hz")
    return tf.cast(rate, tf.int64)


def load_run(run_dir: str) -> tuple[keras.Model, ModelSpec]:
    """The run's Keras model and ModelSpec, checked against each other."""
    spec = ModelSpec.load(run_dir)
    model = keras.saving.load_model(storage.join(run_dir, MODEL_FILE), compile=False)
    if model.output_shape[-1] != len(spec.labels):
        raise ValueError(f"{run_dir}: the model has {model.output_shape[-1]} outputs but the spec "
                         f"{len(spec.labels)} labels")
    if model.input_shape[-1] != len(spec.leads):
        raise ValueError(f"{run_dir}: the model takes {model.input_shape[-1]} leads, the spec names {len(spec.leads)}")
    return model, spec


def next_version(model_dir: str) -> int:
    """One more than the highest integer version folder under `model_dir` (1 if none)."""
    if not tf.io.gfile.isdir(model_dir):
        return 1
    versions = [int(name.rstrip("/")) for name in tf.io.gfile.listdir(model_dir) if name.rstrip("/").isdigit()]
    return max(versions, default=0) + 1


def export_run(run_dir: str, export_dir: str, model_name: str = "ecg", version: int | None = None,
               tflite: bool = False, data_dir: str | None = None) -> str:
    """Exports a training run to `<export_dir>/<model_name>/<version>/`, whole or not at all; returns that path.

    `tflite` also writes the TFLite models and `export_report.json`, using `data_dir`'s train split to calibrate
    int8 and its test split to measure agreement with the SavedModel.
    """
    if tflite and not data_dir:
        raise ValueError("tflite export needs data_dir for representative and agreement windows")
    model, spec = load_run(run_dir)
    model_dir = storage.join(export_dir, model_name)
    version = version or next_version(model_dir)
    final = storage.join(model_dir, str(version))
    if tf.io.gfile.exists(final):
        raise FileExistsError(f"{final} exists; choose another --version or leave it out for the next free one")
    tf.io.gfile.makedirs(model_dir)
    tmp = storage.temporary_name(final)
    try:
        write_saved_model(model, spec, tmp, model_name)
        if tflite:
            report = write_tflite(model, spec, tmp, data_dir)
            storage.write_json(storage.join(tmp, REPORT_FILE), report)
        storage.publish_dir(tmp, final)
    except BaseException:
        if tf.io.gfile.exists(tmp):
            tf.io.gfile.rmtree(tmp)
        raise
    logging.info("exported %s", final)
    return final


def write_saved_model(model: keras.Model, spec: ModelSpec, path: str, model_name: str) -> None:
    """Writes the SavedModel with its three signatures, labels asset and warm-up requests to `path`."""
    with tempfile.TemporaryDirectory() as scratch:
        labels_path = os.path.join(scratch, LABELS_FILE)
        with open(labels_path, "w") as f:
            f.write("".join(f"{name}\n" for name in spec.labels))
        module = ExportModule(model, spec, labels_path)
        signatures = {
            "serving_default": module.serve_ecg.get_concrete_function(),
            "serve_examples": module.serve_examples.get_concrete_function(),
            "classify": module.classify.get_concrete_function(),
        }
        tf.saved_model.save(module, path, signatures=signatures)
    set_method_name(path, "classify", CLASSIFY_METHOD)
    write_warmup(path, spec, model_name)


def set_method_name(path: str, signature: str, method_name: str) -> None:
    """Gives a saved signature a method name (TF2's save always writes 'predict'); refreshes the fingerprint.

    TF Serving routes `:classify` only to signatures whose method is `tensorflow/serving/classify`, as
    `tf.compat.v1.saved_model.classification_signature_def` would write them.
    """
    pb_path = storage.join(path, "saved_model.pb")
    saved_model = saved_model_pb2.SavedModel()
    with tf.io.gfile.GFile(pb_path, "rb") as f:
        saved_model.ParseFromString(f.read())
    saved_model.meta_graphs[0].signature_def[signature].method_name = method_name
    with tf.io.gfile.GFile(pb_path, "wb") as f:
        f.write(compat.serialize(saved_model))
    # fingerprint.pb hashes saved_model.pb; TF's own writer (the same call tf.saved_model.save makes) recomputes it.
    with tf.io.gfile.GFile(storage.join(path, "fingerprint.pb"), "wb") as f:
        f.write(fingerprinting.CreateFingerprintDef(path))


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
    tf.io.gfile.makedirs(extra)
    with tf.io.TFRecordWriter(storage.join(extra, WARMUP_FILE)) as writer:
        for log in logs:
            writer.write(compat.serialize(log))


# --- TFLite -----------------------------------------------------------------------------------------------------


def save_window_model(model: keras.Model, spec: ModelSpec, path: str) -> None:
    """Saves the TFLite source graph: raw mV window [1, window_samples, leads] at the spec's rate -> probabilities.

    Written with Keras' ExportArchive: the converter cannot freeze Keras 3 variables saved by a plain
    `tf.saved_model.save` ("missing attribute 'value'", tensorflow/tensorflow#62610).
    """
    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(
        "serving_default",
        lambda ecg: {"probabilities": window_probabilities(  # TFLite has no inverse FFT: the same FIR, direct
            model, preprocess(ecg, spec.preprocessing, method="direct"), spec)},
        input_signature=[tf.TensorSpec([1, spec.window_samples, len(spec.leads)], tf.float32, name="ecg")])
    archive.write_out(path, verbose=False)


def convert_tflite(saved_model_dir: str, quantization: str,
                   representative: Callable[[], Iterator[list[np.ndarray]]] | None = None) -> bytes:
    """TFLite flatbuffer with builtin ops only: 'float32', 'int8' (full integer, int8 I/O) or 'dynamic_range'."""
    converter = tf.lite.TFLiteConverter.from_saved_model(saved_model_dir)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    if quantization != "float32":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if quantization == "int8":
        converter.representative_dataset = representative
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.int8
        converter.inference_output_type = tf.int8
    return converter.convert()


class TFLiteRunner:
    """Runs a TFLite window model on float mV windows, (de)quantizing int8 inputs and outputs as needed."""

    def __init__(self, model_content: bytes):
        self.interpreter = tf.lite.Interpreter(model_content=model_content, num_threads=1)
        self.interpreter.allocate_tensors()
        self.input = self.interpreter.get_input_details()[0]
        self.output = self.interpreter.get_output_details()[0]

    def __call__(self, window: np.ndarray) -> np.ndarray:
        """[1, window_samples, leads] float mV -> probabilities [1, classes] float32."""
        scale, zero = self.input["quantization"]
        if self.input["dtype"] == np.int8:
            window = np.clip(np.round(window / scale + zero), -128, 127)
        self.interpreter.set_tensor(self.input["index"], window.astype(self.input["dtype"]))
        self.interpreter.invoke()
        output = self.interpreter.get_tensor(self.output["index"])
        scale, zero = self.output["quantization"]
        return ((output.astype(np.float32) - zero) * scale if self.output["dtype"] == np.int8 else output)


def read_windows(data_dir: str, split: str, spec: ModelSpec, limit: int) -> tuple[np.ndarray, np.ndarray]:
    """Up to `limit` windows of a converted split: raw mV [n, window, leads] and their serialized examples."""
    manifest = input_pipeline.load_manifest(data_dir)
    files = input_pipeline.shard_files(data_dir, manifest, split)
    compression = "" if manifest["compression"] == "NONE" else manifest["compression"]
    serialized = np.array([x.numpy() for x in tf.data.TFRecordDataset(files, compression).take(limit)], dtype=object)
    if not len(serialized):
        raise ValueError(f"{data_dir} has no {split} windows")
    signal = schema.parse_examples(tf.constant(serialized), spec.window_samples, len(spec.leads))["signal"]
    return signal.numpy(), serialized


def median_ms(call: Callable[[], object], runs: int = LATENCY_RUNS) -> float:
    """Median wall time of `runs` calls after one warm-up call, in milliseconds."""
    call()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def write_tflite(model: keras.Model, spec: ModelSpec, path: str, data_dir: str) -> dict:
    """Writes `tflite/model_{float32,int8}.tflite` + `tflite/model_spec.json` under `path`; returns the report."""
    calibration, _ = read_windows(data_dir, "train", spec, REPRESENTATIVE_WINDOWS)
    windows, serialized = read_windows(data_dir, "test", spec, AGREEMENT_WINDOWS)
    saved = tf.saved_model.load(path).signatures["serve_examples"]
    reference = np.concatenate([saved(examples=tf.constant(serialized[i:i + 32]))["probabilities"].numpy()
                                for i in range(0, len(serialized), 32)])
    one = tf.constant(serialized[:1])
    report = {
        "saved_model": {"size_bytes": _tree_size(path), "latency_ms_batch1": median_ms(lambda: saved(examples=one))},
        "agreement_split": "test",
        "agreement_windows": len(windows),
        "min_agreement": MIN_AGREEMENT,
        "tflite": {},
    }
    tflite_dir = storage.join(path, TFLITE_DIR)
    tf.io.gfile.makedirs(tflite_dir)
    spec.save(tflite_dir)

    def representative() -> Iterator[list[np.ndarray]]:
        for window in calibration:
            yield [window[None]]

    with tempfile.TemporaryDirectory() as source:
        save_window_model(model, spec, source)
        converted = {kind: _convert_with_fallback(source, kind, representative) for kind in ("float32", "int8")}
    for kind, (content, quantization) in converted.items():
        file_name = f"model_{kind}.tflite"
        storage.write_bytes(storage.join(tflite_dir, file_name), content)
        entry = {"file": f"{TFLITE_DIR}/{file_name}", "quantization": quantization, "size_bytes": len(content),
                 **_evaluate_tflite(content, windows, reference)}
        if not entry["usable"]:
            entry["warning"] = (f"UNUSABLE: {kind} TFLite agrees with the SavedModel on only "
                                f"{entry['argmax_agreement']:.1%} of {len(windows)} test windows "
                                f"(< {MIN_AGREEMENT:.0%})")
            logging.warning("!!! %s", entry["warning"])
        report["tflite"][kind] = entry
    return report


def _convert_with_fallback(saved_model_dir: str, kind: str,
                           representative: Callable[[], Iterator[list[np.ndarray]]]) -> tuple[bytes, str]:
    """Converts; a full-integer int8 conversion that fails falls back to dynamic-range quantization."""
    if kind == "float32":
        return convert_tflite(saved_model_dir, "float32"), "float32"
    try:
        return convert_tflite(saved_model_dir, "int8", representative), "full_integer_int8"
    except Exception as error:  # the converter raises a variety of types for unsupported int8 kernels
        logging.warning("full-integer int8 conversion failed (%s); falling back to dynamic-range quantization", error)
        return convert_tflite(saved_model_dir, "dynamic_range"), "dynamic_range"


def _evaluate_tflite(content: bytes, windows: np.ndarray, reference: np.ndarray) -> dict:
    """Batch-1 latency and agreement with the SavedModel's probabilities on the same windows."""
    runner = TFLiteRunner(content)
    probabilities = np.concatenate([runner(window[None]) for window in windows])
    agreement = float(np.mean(probabilities.argmax(-1) == reference.argmax(-1)))
    return {
        "latency_ms_batch1": median_ms(lambda: runner(windows[:1])),
        "argmax_agreement": agreement,
        "max_abs_prob_diff": float(np.max(np.abs(probabilities - reference))),
        "usable": agreement >= MIN_AGREEMENT,
    }


def _tree_size(path: str) -> int:
    """Bytes of every file under `path`."""
    return sum(tf.io.gfile.stat(storage.join(root, name)).length
               for root, _, files in tf.io.gfile.walk(path) for name in files)
