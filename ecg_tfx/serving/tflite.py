"""TFLite export for phones: a window model (raw mV window -> calibrated probabilities, preprocessing and
calibration inside) converted to float32 and int8 with builtin ops only, its interpreter wrapper, and the report
of size, latency and agreement with the SavedModel (`export_report.json`). The fitted decision's thresholds and
abstention threshold travel beside it in `tflite/decision.json` for the app to apply."""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable, Iterator

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from ecg_tfx.core import schema, storage
from ecg_tfx.core.manifest import Manifest
from ecg_tfx.core.model_spec import ModelSpec, window_probabilities
from ecg_tfx.dsp.preprocessing import preprocess
from ecg_tfx.evaluation.decision import Decision
from ecg_tfx.serving.contract import InputContract, check_finite
from ecg_tfx.serving.decide import calibrate

TFLITE_DIR = "tflite"
DECISION_FILE = "decision.json"
MIN_AGREEMENT = 0.9  # argmax agreement with the SavedModel below which a TFLite model is marked unusable
REPRESENTATIVE_WINDOWS = 64  # training windows that calibrate the int8 quantization
AGREEMENT_WINDOWS = 256  # test windows that measure TFLite vs SavedModel agreement
LATENCY_RUNS = 10  # batch-1 calls whose median is reported


def save_window_model(model: keras.Model, spec: ModelSpec, decision: Decision, path: str) -> None:
    """Saves the TFLite source graph: raw mV window [1, window_samples, leads] at the spec's rate -> calibrated
    probabilities (as `serve_examples` returns them).

    Written with Keras' ExportArchive: the converter cannot freeze Keras 3 variables saved by a plain
    `tf.saved_model.save` ("missing attribute 'value'", tensorflow/tensorflow#62610).
    """
    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(
        "serving_default",
        lambda ecg: {"probabilities": calibrate(window_probabilities(  # TFLite has no inverse FFT: the same FIR
            model, preprocess(ecg, spec.preprocessing, method="rfft_only"), spec), decision.calibration)},
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
        """[1, window_samples, leads] float mV (finite, as the contract asks) -> probabilities [1, classes] float32."""
        check_finite(window, "ecg")
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
    manifest = Manifest.load(data_dir)
    dataset = tf.data.TFRecordDataset(manifest.shard_files(data_dir, split),
                                      schema.tfrecord_compression(manifest.compression))
    serialized = np.array([x.numpy() for x in dataset.take(limit)], dtype=object)
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


def write_tflite(model: keras.Model, spec: ModelSpec, decision: Decision, path: str, data_dir: str) -> dict:
    """Writes `tflite/model_{float32,int8}.tflite`, `model_spec.json`, `input_contract.json` and `decision.json`;
    returns the report.

    `model` must compute in float32 (`precision.with_compute_dtype`): TFLite has no bf16/fp16 kernels.
    """
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
    InputContract.for_spec(spec).save(tflite_dir)
    decision.save(storage.join(tflite_dir, DECISION_FILE))

    def representative() -> Iterator[list[np.ndarray]]:
        for window in calibration:
            yield [window[None]]

    with tempfile.TemporaryDirectory() as source:
        save_window_model(model, spec, decision, source)
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


def summary_lines(report: dict) -> list[str]:
    """One line per TFLite model of an `export_report.json`: size, agreement with the SavedModel, usable."""
    windows = report["agreement_windows"]
    return [f"tflite {kind}: {entry['file']} {entry['size_bytes'] / 1e6:.2f} MB ({entry['quantization']}), "
            f"argmax agreement {entry['argmax_agreement']:.1%} of {windows} {report['agreement_split']} windows, "
            f"max |dp| {entry['max_abs_prob_diff']:.2g}, {'usable' if entry['usable'] else 'UNUSABLE'}"
            for kind, entry in report["tflite"].items()]


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
