"""TFLite export for phones: a window model (raw mV window -> uncalibrated probabilities, preprocessing inside)
converted to six variants with builtin ops only, the interpreter that runs them (LiteRT where installed), and the
report of size, latency and agreement with the SavedModel that says which variants are usable
(`export_report.json`). The fitted decision (calibration, thresholds, abstention) travels beside the models in
`tflite/decision.json`: like `serving_default`, the app (or `predict`, through `decide.record_outputs`) averages
a recording's window outputs, then calibrates the mean and decides, as the decision was fitted. The windows are
not calibrated one by one, which would differ from `serving_default` for recordings of several windows."""

from __future__ import annotations

import importlib.metadata
import os
import posixpath
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence

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

try:
    from ai_edge_litert.interpreter import Interpreter
    INTERPRETER = f"ai-edge-litert {importlib.metadata.version('ai-edge-litert')}"
except ImportError:  # no LiteRT wheel for this platform: TensorFlow's own (deprecated) copy of the interpreter
    Interpreter = tf.lite.Interpreter
    INTERPRETER = f"tf.lite.Interpreter (TensorFlow {tf.__version__})"

TFLITE_DIR = "tflite"
DECISION_FILE = "decision.json"
REPORT_FILE = "export_report.json"  # beside the SavedModel: sizes, latencies and each TFLite variant's verdict
# int8: full integer, int8 I/O; int8_body: float32 preprocessing, then the int8 CNN; int16x8: int16 activations
VARIANTS = ("float32", "float16", "dynamic_range", "int8", "int8_body", "int16x8")
# Variants whose preprocessing computes in float32, so that the float preprocessing model times it alone.
FLOAT_PREPROCESSING = ("float32", "float16", "dynamic_range", "int8_body")
PREPROCESSING_SCOPE = "preprocessing"  # name scope of the window model's preprocessing ops (int8_body keeps them float)
USABLE = "usable"
# A variant is usable when its argmax agreement with the SavedModel (and, multi-label, each class's decision at the
# fitted thresholds of `decision.json`) reaches MIN_AGREEMENT, the target: at most one window in a hundred
# changes its diagnosis.
MIN_AGREEMENT = 0.99
# Below this many test windows the verdict is "not measured": with 200, a variant that truly agrees on 97% still
# shows >= 99% with probability ~6% (binomial); the bench's int8 (79% on 71 windows) showed 100% on 4.
MIN_AGREEMENT_WINDOWS = 200
REPRESENTATIVE_WINDOWS = 64  # training windows that calibrate the int8, int8_body and int16x8 quantization
LATENCY_THREADS = (1, 2)  # interpreter threads of the batch-1 latencies (XNNPACK, the interpreter's default)
LATENCY_RUNS = 10  # batch-1 calls whose median is reported


def save_window_model(model: keras.Model, spec: ModelSpec, path: str) -> None:
    """Saves the TFLite source graph: raw mV window [1, window_samples, leads] at the spec's rate -> uncalibrated
    probabilities [1, classes] (`serve_examples` returns them calibrated by `decide.calibrate`).

    Written with Keras' ExportArchive: the converter cannot freeze Keras 3 variables saved by a plain
    `tf.saved_model.save` ("missing attribute 'value'", tensorflow/tensorflow#62610).
    """
    def window_model(ecg: tf.Tensor) -> dict[str, tf.Tensor]:
        with tf.name_scope(PREPROCESSING_SCOPE):  # TFLite has no inverse FFT: the same FIR by forward FFTs
            signal = preprocess(ecg, spec.preprocessing, method="rfft_only")
        return {"probabilities": window_probabilities(model, signal, spec)}

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint("serving_default", window_model, input_signature=[
        tf.TensorSpec([1, spec.window_samples, len(spec.leads)], tf.float32, name="ecg")])
    archive.write_out(path, verbose=False)


def preprocessing_model(spec: ModelSpec, method: str = "rfft_only") -> bytes:
    """The preprocessing alone as a float32 TFLite model, [1, window_samples, leads] mV -> the standardized
    signal: with a variant's whole-model latency, the profile of where its time goes (LiteRT's Python interpreter
    has no op-level profiler)."""
    signature = [tf.TensorSpec([1, spec.window_samples, len(spec.leads)], tf.float32)]
    function = tf.function(lambda ecg: preprocess(ecg, spec.preprocessing, method), input_signature=signature,
                           autograph=False)
    return tf.lite.TFLiteConverter.from_concrete_functions([function.get_concrete_function()], function).convert()


def convert_tflite(saved_model_dir: str, variant: str,
                   representative: Callable[[], Iterator[list[np.ndarray]]] | None = None) -> bytes:
    """TFLite flatbuffer of one of VARIANTS, builtin ops only: 'float32'; 'float16' weights (float32 compute);
    'dynamic_range' (int8 weights, float activations); 'int8' (full integer, int8 I/O: fails rather than keep a
    float op); 'int8_body' (float32 I/O and preprocessing, QUANTIZE into the int8 CNN, DEQUANTIZE out of it);
    'int16x8' (int16 activations, int8 weights, float I/O; ops without a 16x8 kernel stay float32). The integer
    variants calibrate on `representative`."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown TFLite variant {variant!r}; one of {VARIANTS}")
    converter = tf.lite.TFLiteConverter.from_saved_model(saved_model_dir)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    if variant != "float32":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if variant in ("int8", "int8_body", "int16x8"):
        converter.representative_dataset = representative
    if variant == "float16":
        converter.target_spec.supported_types = [tf.float16]
    elif variant == "int8":
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.int8
        converter.inference_output_type = tf.int8
    elif variant == "int8_body":
        return _quantize_all_but_preprocessing(converter, representative)
    elif variant == "int16x8":  # TensorFlow's documented 16x8 fallback: e.g. SELECT_V2 has no int16 kernel
        converter.target_spec.supported_ops = [
            tf.lite.OpsSet.EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8,
            tf.lite.OpsSet.TFLITE_BUILTINS]
    return converter.convert()


def _quantize_all_but_preprocessing(converter: tf.lite.TFLiteConverter,
                                    representative: Callable[[], Iterator[list[np.ndarray]]]) -> bytes:
    """Full-int8 quantization of every op but those under PREPROCESSING_SCOPE, which keep float32 (ECG amplitudes,
    the FFT's spectrum and the per-lead statistics do not survive int8), with float32 input and output.

    TensorFlow's selective quantization (tf.lite.experimental.QuantizationDebugger, whose options deny nodes
    quantization): the model is calibrated once, then quantized with the preprocessing's output tensors denied.
    """
    debugger = tf.lite.experimental.QuantizationDebugger(converter=converter, debug_dataset=representative)
    tensors = Interpreter(model_content=debugger.calibrated_model).get_tensor_details()
    float_nodes = sorted({t["name"] for t in tensors if f"{PREPROCESSING_SCOPE}/" in t["name"]})
    if not float_nodes:
        raise ValueError(f"no op of the window model is under the name scope {PREPROCESSING_SCOPE!r}")
    debugger.options = tf.lite.experimental.QuantizationDebugOptions(denylisted_nodes=float_nodes)
    return debugger.get_nondebug_quantized_model()


class TFLiteRunner:
    """Runs a TFLite window model on float mV windows, (de)quantizing integer inputs and outputs as needed."""

    def __init__(self, model_content: bytes, num_threads: int = 1):
        self.interpreter = Interpreter(model_content=model_content, num_threads=num_threads)
        self.interpreter.allocate_tensors()
        self.input = self.interpreter.get_input_details()[0]
        self.output = self.interpreter.get_output_details()[0]

    def __call__(self, window: np.ndarray) -> np.ndarray:
        """[1, window_samples, leads] float mV (finite, as the contract asks) -> probabilities [1, classes] float32."""
        check_finite(window, "ecg")
        dtype = np.dtype(self.input["dtype"])
        if dtype.kind == "i":
            scale, zero = self.input["quantization"]
            window = np.clip(np.round(window / scale + zero), np.iinfo(dtype).min, np.iinfo(dtype).max)
        self.interpreter.set_tensor(self.input["index"], window.astype(dtype))
        self.interpreter.invoke()
        output = self.interpreter.get_tensor(self.output["index"])
        if np.dtype(self.output["dtype"]).kind != "i":
            return output
        scale, zero = self.output["quantization"]
        return (output.astype(np.float32) - zero) * scale


def read_windows(data_dir: str, split: str, spec: ModelSpec, limit: int = -1) -> tuple[np.ndarray, np.ndarray]:
    """Up to `limit` windows (-1: all) of a converted split: raw mV [n, window, leads] and their serialized examples."""
    manifest = Manifest.load(data_dir)
    dataset = tf.data.TFRecordDataset(manifest.shard_files(data_dir, split),
                                      schema.tfrecord_compression(manifest.compression))
    serialized = np.array([x.numpy() for x in dataset.take(limit)], dtype=object)
    if not len(serialized):
        raise ValueError(f"{data_dir} has no {split} windows")
    signal = schema.parse_examples(tf.constant(serialized), spec.window_samples, len(spec.leads))["signal"]
    return signal.numpy(), serialized


def median_ms(call: Callable[[], object], runs: int | None = None) -> float:
    """Median wall time of `runs` (default LATENCY_RUNS) calls after one warm-up call, in milliseconds."""
    runs = LATENCY_RUNS if runs is None else runs
    call()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def check_variants(variants: Sequence[str]) -> None:
    """ValueError naming any of `variants` that is not one of VARIANTS (or none given)."""
    unknown = [variant for variant in variants if variant not in VARIANTS]
    if unknown or not variants:
        raise ValueError(f"TFLite variants must be some of {', '.join(VARIANTS)}; got {', '.join(variants) or 'none'}")


def write_tflite(model: keras.Model, spec: ModelSpec, decision: Decision, path: str, data_dir: str,
                 min_agreement_windows: int = MIN_AGREEMENT_WINDOWS, variants: Sequence[str] = VARIANTS) -> dict:
    """Writes each of `variants` that converts to `tflite/`, with `model_spec.json`, `input_contract.json` and
    `decision.json`; returns the report. A usable variant is `model_<variant>.tflite`, any other
    `model_<variant>_<verdict>.tflite`.

    Agreement is measured on the whole test split of `data_dir` (its train split calibrates the integer variants);
    `min_agreement_windows` is lowered only by tests on tiny data. `model` must compute in float32
    (`precision.with_compute_dtype`): TFLite has no bf16/fp16 kernels.
    """
    calibration, _ = read_windows(data_dir, "train", spec, REPRESENTATIVE_WINDOWS)
    windows, serialized = read_windows(data_dir, "test", spec)
    saved = tf.saved_model.load(path).signatures["serve_examples"]
    reference = np.concatenate([saved(examples=tf.constant(serialized[i:i + 32]))["probabilities"].numpy()
                                for i in range(0, len(serialized), 32)])
    one = tf.constant(serialized[:1])
    report = {
        "saved_model": {"size_bytes": storage.tree_bytes(path),
                        "latency_ms_batch1": median_ms(lambda: saved(examples=one))},
        "preprocessing_ms_batch1": preprocessing_latencies(spec, windows[:1]),
        "interpreter": INTERPRETER,
        "agreement_split": "test",
        "agreement_windows": len(windows),
        "min_agreement": MIN_AGREEMENT,
        "min_agreement_windows": min_agreement_windows,
        "tflite": {},
    }
    tflite_dir = storage.join(path, TFLITE_DIR)
    storage.makedirs(tflite_dir)
    spec.save(tflite_dir)
    InputContract.for_spec(spec).save(tflite_dir)
    decision.save(storage.join(tflite_dir, DECISION_FILE))

    def representative() -> Iterator[list[np.ndarray]]:
        for window in calibration:
            yield [window[None]]

    with tempfile.TemporaryDirectory() as source:
        save_window_model(model, spec, source)
        for variant in [v for v in VARIANTS if v in variants]:
            started = time.perf_counter()
            try:
                content = convert_tflite(source, variant, representative)
            except Exception as error:  # the converter raises a variety of types for ops without such kernels
                report["tflite"][variant] = {"verdict": "conversion failed", "usable": False,
                                             "reason": _first_line(error),
                                             "convert_seconds": round(time.perf_counter() - started, 1)}
                logging.warning("!!! %s TFLite: conversion failed, no file written: %s", variant, error)
                continue
            seconds = round(time.perf_counter() - started, 1)
            entry = evaluate_variant(content, windows, reference, decision, min_agreement_windows)
            file_name = tflite_file_name(variant, entry["verdict"])
            storage.write_bytes(storage.join(tflite_dir, file_name), content)
            report["tflite"][variant] = {"file": f"{TFLITE_DIR}/{file_name}", "size_bytes": len(content),
                                         "convert_seconds": seconds,
                                         "float_preprocessing": variant in FLOAT_PREPROCESSING, **entry}
            if not entry["usable"]:
                logging.warning("!!! %s TFLite is %s: %s", variant, entry["verdict"].upper(), entry["reason"])
    return report


def preprocessing_latencies(spec: ModelSpec, window: np.ndarray) -> dict:
    """Batch-1 latency (ms) of the preprocessing alone on `window` [1, window_samples, leads] mV: the float32
    TFLite preprocessing (`preprocessing_model`) on each of LATENCY_THREADS, and TensorFlow's (the SavedModel's
    FFT FIR). A variant with float preprocessing spends the rest of its latency in its CNN body."""
    content = preprocessing_model(spec)
    runners = {str(threads): TFLiteRunner(content, threads) for threads in LATENCY_THREADS}
    tflite = {threads: median_ms(lambda r=runner: r(window)) for threads, runner in runners.items()}
    function = tf.function(lambda ecg: preprocess(ecg, spec.preprocessing), autograph=False,
                           input_signature=[tf.TensorSpec(window.shape, tf.float32)])
    return {"tflite_float32": tflite, "tensorflow": median_ms(lambda: function(tf.constant(window)))}


def summary_lines(report: dict) -> list[str]:
    """An `export_report.json` as a table, one row per TFLite variant: file size (MB), batch-1 latency (ms) on 1
    and 2 interpreter threads, the CNN body's share of the 1-thread latency (variants with float preprocessing:
    their latency minus the preprocessing's alone), argmax agreement with the SavedModel and the verdict (with its
    reason unless usable); header lines say on how many windows agreement was measured, the SavedModel's own size
    and latency, and the preprocessing's latency alone."""
    saved, preprocessing = report["saved_model"], report["preprocessing_ms_batch1"]
    alone = preprocessing["tflite_float32"]
    lines = [f"TFLite variants ({report['interpreter']}); agreement with the SavedModel on "
             f"{report['agreement_windows']} {report['agreement_split']} windows (usable: >= "
             f"{report['min_agreement']:.0%} on >= {report['min_agreement_windows']}); SavedModel "
             f"{saved['size_bytes'] / 1e6:.2f} MB, {saved['latency_ms_batch1']:.1f} ms batch 1",
             f"Preprocessing alone, batch 1: TFLite float32 {alone['1']:.1f} ms on 1 thread, {alone['2']:.1f} ms "
             f"on 2; TensorFlow (the SavedModel's) {preprocessing['tensorflow']:.1f} ms",
             f"{'variant':<14}{'MB':>6}{'ms 1 thr':>10}{'ms 2 thr':>10}{'body ms':>9}{'agreement':>11}"
             f"{'max |dp|':>10}  verdict"]
    for variant in [v for v in VARIANTS if v in report["tflite"]]:  # a report read back has its keys sorted
        entry = report["tflite"][variant]
        latency = entry.get("latency_ms_batch1", {})
        body = latency["1"] - alone["1"] if "1" in latency and entry.get("float_preprocessing") else None
        cells = [f"{entry['size_bytes'] / 1e6:6.2f}" if "size_bytes" in entry else f"{'-':>6}",
                 *(f"{latency[t]:10.1f}" if t in latency else f"{'-':>10}" for t in ("1", "2")),
                 f"{body:9.1f}" if body is not None else f"{'-':>9}",
                 f"{entry['argmax_agreement']:11.1%}" if "argmax_agreement" in entry else f"{'-':>11}",
                 f"{entry['max_abs_prob_diff']:10.2g}" if "max_abs_prob_diff" in entry else f"{'-':>10}"]
        verdict = USABLE if entry["usable"] else f"{entry['verdict'].upper()} ({entry['reason']})"
        lines.append(f"{variant:<14}{''.join(cells)}  {verdict}")
    return lines


def tflite_file_name(variant: str, verdict: str) -> str:
    """`model_<variant>.tflite` when usable, else `model_<variant>_<verdict>.tflite`: the name warns even where the
    report is not beside it."""
    return f"model_{variant}.tflite" if verdict == USABLE else f"model_{variant}_{verdict.replace(' ', '_')}.tflite"


def verdict_in_name(tflite_path: str) -> str | None:
    """The verdict a `tflite_file_name` carries when it is not usable ('unusable', 'not measured'), else None."""
    stem = posixpath.basename(tflite_path).removesuffix(".tflite")
    return next((verdict for verdict in ("unusable", "not measured") if stem.endswith("_" + verdict.replace(" ", "_"))),
                None)


def verdict_of(tflite_path: str) -> dict | None:
    """The report entry of a `.tflite` file written by `write_tflite` (verdict, reason, agreement), or None when
    no `export_report.json` beside its SavedModel names it."""
    path = tflite_path if "://" in tflite_path else os.path.abspath(tflite_path)  # s3://, gs:// or local
    report_path = storage.join(posixpath.dirname(posixpath.dirname(path)), REPORT_FILE)
    if not storage.exists(report_path):
        return None
    name = f"{TFLITE_DIR}/{posixpath.basename(path)}"
    entries = [e for e in storage.read_json(report_path)["tflite"].values() if e.get("file") == name]
    return entries[0] if entries else None


def evaluate_variant(content: bytes, windows: np.ndarray, reference: np.ndarray, decision: Decision,
                     min_windows: int) -> dict:
    """Agreement with the SavedModel's calibrated probabilities `reference` on the same windows (the variant's
    outputs calibrated by `decision`; multi-label: each class's decision at its fitted threshold), batch-1
    latencies, and the verdict: 'usable', 'unusable' (below MIN_AGREEMENT, or the interpreter failed) or
    'not measured' (too few windows)."""
    try:
        runner = TFLiteRunner(content)
        raw = np.concatenate([runner(window[None]) for window in windows])
        runners = {threads: TFLiteRunner(content, threads) for threads in LATENCY_THREADS}
        latency = {str(threads): median_ms(lambda r=r: r(windows[:1])) for threads, r in runners.items()}
    except Exception as error:  # e.g. TF 2.21's int8 preprocessing failed in a quantized DIV kernel
        return {"verdict": "unusable", "usable": False, "reason": f"the interpreter failed: {_first_line(error)}"}
    if not np.all(np.isfinite(raw)):
        return {"verdict": "unusable", "usable": False, "reason": "the model outputs non-finite probabilities"}
    probabilities = calibrate(tf.constant(raw), decision.calibration).numpy()
    entry = {"argmax_agreement": float(np.mean(probabilities.argmax(-1) == reference.argmax(-1))),
             "max_abs_prob_diff": float(np.max(np.abs(probabilities - reference))),
             "latency_ms_batch1": latency}
    agreements = {"argmax agreement": entry["argmax_agreement"]}
    if decision.multi_label:
        per_class = np.mean(decision.present(probabilities) == decision.present(reference), axis=0)
        entry["decision_agreement_per_class"] = [float(a) for a in per_class]
        entry["decision_thresholds"] = list(decision.thresholds)
        agreements["decision agreement at the fitted thresholds (worst class)"] = float(per_class.min())
    below = [f"{name} {value:.1%}" for name, value in agreements.items() if value < MIN_AGREEMENT]
    if below:
        verdict, reason = "unusable", f"{', '.join(below)} of {len(windows)} test windows < {MIN_AGREEMENT:.0%}"
    elif len(windows) < min_windows:
        verdict, reason = "not measured", f"only {len(windows)} test windows (< {min_windows}) to measure agreement on"
    else:
        verdict, reason = USABLE, f"agreement >= {MIN_AGREEMENT:.0%} on {len(windows)} test windows"
    return {**entry, "verdict": verdict, "usable": verdict == USABLE, "reason": reason}


def _first_line(error: Exception) -> str:
    """An exception's type and the first line of its message, for a report."""
    return f"{type(error).__name__}: {str(error).strip().splitlines()[0] if str(error).strip() else ''}"
