"""Section 4, export: batch-1 and batch-32 latency, size and agreement of the forms a trained CNN ships in.

The model is the demo's (`make demo`: `pipelines/synthetic_quick.flags`, the seed CNN trained for 10 epochs on
synthetic 12-lead 250-Hz ECGs, exported with every TFLite variant): its test split has 240 windows, enough for the
export report's agreement verdicts (`tflite.MIN_AGREEMENT_WINDOWS`), and its model is trained, so agreement means
what it means in use. Every form gets the same input, raw 10-s mV windows, and does the same work (preprocessing,
sliding 2.5-s crops, the CNN, the mean over crops):
- keras: the Keras model with `preprocess` + `window_probabilities` in one `tf.function` (what training runs);
- saved_model: the exported `serving_default` signature (in-graph resampling, framing and preprocessing), in
  requests of at most the input contract's 120 s (batch 32 of 10-s windows = 3 requests);
- tflite_<variant>: every TFLite variant the export wrote, through `serving.tflite.TFLiteRunner` on 1 thread (and,
  batch 1 only, on 2 threads, as TensorFlow uses); batch 32 = 32 invocations, since the TFLite models take one window.
The best usable quantized variant is the fastest at batch 1 (1 thread) of those the export report calls usable; its
agreement is the report's (argmax, with the SavedModel, on the test split). Agreement with the (calibrated) Keras
path on the test split is given too. The preprocessing alone is timed (`preprocessing_only`): the TFLite models'
forward-FFT FIR, the former direct FIR, and TensorFlow's rfft/irfft as the SavedModel runs it; with the whole
models' times, that is the stage profile of where each spends its time (`stage_profile`: preprocessing vs the rest,
mostly the CNN body). It is a stage split, not an op-level profile: LiteRT's Python interpreter exposes its ops
(`_get_ops_details`) but no per-op timings.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np

from bench import data, timing

DEMO = "synthetic_quick"  # the pipeline whose export is measured


def tree_bytes(path: str, skip: str = "") -> int:
    """Bytes of every file under `path`, leaving out the sub-folder `skip`."""
    total = 0
    for root, dirs, files in os.walk(path):
        dirs[:] = [d for d in dirs if os.path.join(root, d) != os.path.join(path, skip)]
        total += sum(os.path.getsize(os.path.join(root, name)) for name in files)
    return total


def demo_export() -> tuple[str, str, str]:
    """Trains and exports the demo pipeline afresh (`python -m ecg_tfx.train`, its conversion reused when
    finished) under workspace/bench/; returns (version dir, run dir, data dir)."""
    data_dir, run_dir = data.WORKSPACE / "tfrecords_demo", data.WORKSPACE / "run_demo"
    shutil.rmtree(run_dir, ignore_errors=True)
    done = subprocess.run([sys.executable, "-m", "ecg_tfx.train", f"--flagfile=pipelines/{DEMO}.flags",
                           f"--data_dir={data_dir}", f"--run_dir={run_dir}"], cwd=timing.REPO, capture_output=True,
                          text=True, env={**os.environ, "PYTHONPATH": str(timing.REPO)})
    if done.returncode:
        raise RuntimeError(f"training the demo failed:\n{done.stderr[-3000:]}")
    info = json.loads((run_dir / "run_info.json").read_text())
    return info["export"], str(run_dir), str(data_dir)


def predictors(version: str, run_dir: str, spec, report: dict) -> dict:
    """Each form as a function: raw windows [n, window, leads] float32 -> probabilities [n, classes]."""
    import tensorflow as tf

    from ecg_tfx.core.model_spec import window_probabilities
    from ecg_tfx.core.run_folder import RunFolder
    from ecg_tfx.dsp.preprocessing import preprocess
    from ecg_tfx.evaluation.decision import Decision
    from ecg_tfx.models.ensemble import load_run
    from ecg_tfx.serving.contract import InputContract
    from ecg_tfx.serving.decide import calibrate
    from ecg_tfx.serving.tflite import TFLiteRunner

    model, _ = load_run(run_dir)
    calibration = Decision.load(RunFolder(run_dir).decision).calibration  # the exports output calibrated probabilities
    keras_path = tf.function(lambda w: calibrate(window_probabilities(model, preprocess(w, spec.preprocessing), spec),
                                                 calibration))
    loaded = tf.saved_model.load(version)
    serving = loaded.signatures["serving_default"]
    contract = InputContract.loads(loaded.metadata()["input_contract_json"].numpy().decode())
    per_request = int(contract.max_request_seconds * spec.sample_rate_hz // spec.window_samples)

    def saved_model(windows: np.ndarray) -> np.ndarray:  # requests within the input contract's seconds each
        return np.concatenate([
            serving(ecg=tf.constant(chunk), sample_rate=tf.fill([len(chunk)], float(spec.sample_rate_hz)))[
                "probabilities"].numpy() for chunk in np.split(windows, range(per_request, len(windows), per_request))])

    def tflite(runner: TFLiteRunner):
        return lambda windows: np.concatenate([runner(window[None]) for window in windows])

    forms = {"keras": lambda windows: keras_path(tf.constant(windows)).numpy(), "saved_model": saved_model}
    for variant, entry in report["tflite"].items():
        if "argmax_agreement" in entry:  # written and run by the export (not failed to convert or to run)
            with open(os.path.join(version, entry["file"]), "rb") as f:
                content = f.read()
            forms[f"tflite_{variant}"] = tflite(TFLiteRunner(content))
            forms[f"tflite_{variant} 2 threads"] = tflite(TFLiteRunner(content, num_threads=2))
    return forms


def preprocessing_only(spec) -> dict:
    """The preprocessing alone, batch 1, three ways: the TFLite models' (forward-FFT FIR, `rfft_only`), the former
    TFLite one (the direct FIR), both as TFLite models on 1 thread, and TensorFlow's rfft/irfft (the SavedModel's)."""
    import tensorflow as tf

    from ecg_tfx.dsp.preprocessing import preprocess
    from ecg_tfx.serving.tflite import TFLiteRunner, preprocessing_model

    forms = {f"tflite_preprocess_{method}": TFLiteRunner(preprocessing_model(spec, method))
             for method in ("rfft_only", "direct")}
    signature = [tf.TensorSpec([1, spec.window_samples, len(spec.leads)], tf.float32)]
    saved_model_way = tf.function(lambda ecg: preprocess(ecg, spec.preprocessing), input_signature=signature)
    forms["tf_preprocess_fft"] = lambda window: saved_model_way(tf.constant(window)).numpy()
    return forms


def stage_profile(times: dict, report: dict) -> dict:
    """Batch-1 ms per form (TFLite on 1 thread): the whole model, its preprocessing timed alone, and the rest (the
    CNN on its crops, the mean and, for the SavedModel, resampling and framing). A full-int8 or int16x8 model
    quantizes its preprocessing with the body, so only its whole time is known."""
    from ecg_tfx.serving.tflite import FLOAT_PREPROCESSING

    median = {name: timing.median(values) * 1e3 for name, values in times.items()}
    forms = {"saved_model": "tf_preprocess_fft"}
    forms.update({f"tflite_{variant}": "tflite_preprocess_rfft_only" if variant in FLOAT_PREPROCESSING else None
                  for variant in report["tflite"] if f"tflite_{variant} b1" in median})
    profile = {}
    for form, preprocessing in forms.items():
        whole = median[f"{form} b1"]
        stages = {"whole": round(whole, 2)}
        if preprocessing:
            stages |= {"preprocessing": round(median[f"{preprocessing} b1"], 2),
                       "rest": round(whole - median[f"{preprocessing} b1"], 2)}
        profile[form] = stages
    return profile


def per_call(predict, windows: np.ndarray, calls: int) -> float:
    started = time.perf_counter()
    for _ in range(calls):
        predict(windows)
    return (time.perf_counter() - started) / calls


def findings(times: dict, best: str | None, report: dict, spec) -> list[str]:
    """Why the missed targets were missed, from this run's own numbers: the time of each stage (the preprocessing
    alone against the whole model) and the export report's verdicts."""
    from ecg_tfx.dsp.preprocessing import fir_taps

    notes = []
    median = {name: timing.median(values) for name, values in times.items()}
    share = median["tflite_preprocess_rfft_only b1"] / median["tflite_float32 b1"]
    notes.append(
        f"The TFLite models filter by forward real FFTs (RFFT2D; TFLite has no inverse FFT): "
        f"{median['tflite_preprocess_rfft_only b1'] * 1e3:.1f} ms per window against "
        f"{median['tflite_preprocess_direct b1'] * 1e3:.1f} ms for the former direct "
        f"{len(fir_taps(spec.preprocessing))}-tap convolution, {share:.0%} of the TFLite float32 time; "
        f"TensorFlow's rfft/irfft (the SavedModel's) takes {median['tf_preprocess_fft b1'] * 1e3:.1f} ms.")
    verdicts = ", ".join(f"{variant} {entry['verdict']}"
                         + (f" ({entry['argmax_agreement']:.1%})" if "argmax_agreement" in entry else "")
                         for variant, entry in report["tflite"].items())
    notes.append(f"Export report, {report['agreement_windows']} test windows: {verdicts}.")
    stages = [f"{form} {p['whole']:.1f}" + (f" = {p['preprocessing']:.1f} + {p['rest']:.1f}" if "rest" in p
                                             else " (its preprocessing is quantized with the body)")
              for form, p in stage_profile(times, report).items()]
    notes.append("Stage profile, batch 1 (ms, TFLite on 1 thread; whole = preprocessing alone + the rest): "
                 + "; ".join(stages) + ".")
    if best is None:
        notes.append("No quantized variant is usable, so the quantized targets have no model to measure.")
        return notes
    preprocessing = median["tflite_preprocess_rfft_only b1"]
    for name, goal in ((f"tflite_{best}", "3x faster than"), ("tflite_float32", "at most 1.5x")):
        whole, two = median[f"{name} b1"], median[f"{name} 2 threads b1"]
        notes.append(
            f"Stages, batch 1: {name} takes {whole * 1e3:.1f} ms on 1 thread ({two * 1e3:.1f} ms on 2), of which "
            f"the preprocessing (timed alone, float32) is {preprocessing * 1e3:.1f} ms and the CNN on 8 crops "
            f"{(whole - preprocessing) * 1e3:.1f} ms; the SavedModel takes {median['saved_model b1'] * 1e3:.1f} ms "
            f"on 2 threads, {median['tf_preprocess_fft b1'] * 1e3:.1f} ms of it preprocessing (target: TFLite "
            f"{goal} the SavedModel).")
    return notes


def run(quick: bool = False) -> dict:
    """Measures the section and returns its results."""
    from ecg_tfx.core.manifest import SPLITS, Manifest
    from ecg_tfx.core.model_spec import ModelSpec
    from ecg_tfx.core.run_folder import RunFolder
    from ecg_tfx.serving.tflite import VARIANTS, read_windows

    quantized = [v for v in VARIANTS if v != "float32"]
    reps, calls = (3, 5) if quick else (5, 10)
    started = time.perf_counter()
    version, run_dir, data_dir = demo_export()
    demo_seconds = time.perf_counter() - started
    spec = ModelSpec.load(run_dir)
    manifest = Manifest.load(data_dir)
    with open(os.path.join(version, "export_report.json"), encoding="utf-8") as f:
        report = json.load(f)
    windows = read_windows(data_dir, "test", spec)[0]
    batch32 = np.resize(windows, (data.BATCH, *windows.shape[1:]))
    forms = predictors(version, run_dir, spec, report)
    usable = [v for v in quantized if f"tflite_{v}" in forms and report["tflite"][v]["usable"]]
    cases = {}
    for name, predict in forms.items():
        cases[f"{name} b1"] = lambda predict=predict: per_call(predict, windows[:1], calls)
    for name in ("keras", "saved_model", "tflite_float32", *(f"tflite_{v}" for v in usable)):
        cases[f"{name} b32"] = lambda predict=forms[name]: per_call(predict, batch32, max(1, calls // 5))
    for name, predict in preprocessing_only(spec).items():
        cases[f"{name} b1"] = lambda predict=predict: per_call(predict, windows[:1], calls)
    times = timing.interleaved(cases, reps)
    best = min(usable, key=lambda v: timing.median(times[f"tflite_{v} b1"])) if usable else None
    reference = forms["keras"](windows)
    sizes = {"keras": os.path.getsize(RunFolder(run_dir).model), "saved_model": tree_bytes(version, skip="tflite"),
             **{name: report["tflite"][name[len("tflite_"):]]["size_bytes"] for name in forms
                if name.startswith("tflite") and "threads" not in name}}
    agreement = {}
    for name in [name for name in list(forms)[1:] if "threads" not in name]:
        probabilities = forms[name](windows)
        agreement[name] = {"argmax_agreement": round(float(np.mean(probabilities.argmax(-1) == reference.argmax(-1))),
                                                     4),
                           "max_abs_prob_diff": round(float(np.max(np.abs(probabilities - reference))), 4)}
    shown = best or "int8"  # with no usable quantized variant, the int8 model's numbers, marked as such
    note = "" if best else "NO usable quantized variant: int8's numbers"
    ratios = [
        timing.target(f"saved_model / tflite_{shown} (best usable quantized) batch-1 latency",
                      timing.paired_ratio(times["saved_model b1"], times[f"tflite_{shown} b1"]), 3.0, True, note),
        timing.target(f"tflite_{shown} / saved_model size", sizes[f"tflite_{shown}"] / sizes["saved_model"], 0.25,
                      False, "SavedModel size excludes its tflite/ sub-folder"),
        timing.target(f"tflite_{shown} argmax agreement with the SavedModel, test split",
                      report["tflite"][shown].get("argmax_agreement", 0.0), 0.99, True,
                      f"{report['agreement_windows']} windows, the export report's"),
        timing.target("tflite_float32 / saved_model batch-1 latency",
                      timing.paired_ratio(times["tflite_float32 b1"], times["saved_model b1"]), 1.5, False,
                      "TFLite on 1 thread, TensorFlow on 2"),
        timing.target(f"saved_model / tflite_{shown} batch-1 latency, TFLite on 2 threads",
                      timing.paired_ratio(times["saved_model b1"], times[f"tflite_{shown} 2 threads b1"]), 3.0, True,
                      "both on the machine's 2 cores"),
        timing.target("tflite_float32 / saved_model batch-1 latency, TFLite on 2 threads",
                      timing.paired_ratio(times["tflite_float32 2 threads b1"], times["saved_model b1"]), 1.5, False,
                      "both on the machine's 2 cores"),
        timing.target("direct / rfft_only TFLite preprocessing batch-1 latency",
                      timing.paired_ratio(times["tflite_preprocess_direct b1"],
                                          times["tflite_preprocess_rfft_only b1"]), 1.0, True,
                      "no target set; the former TFLite FIR over the one the TFLite models run now"),
        timing.target("rfft_only TFLite / TensorFlow fft preprocessing batch-1 latency",
                      timing.paired_ratio(times["tflite_preprocess_rfft_only b1"],
                                          times["tf_preprocess_fft b1"]), 1.0, False,
                      "no target set; TensorFlow's is the SavedModel's preprocessing (rfft/irfft), 2 threads"),
    ]
    if best:
        ratios.append(timing.target(f"saved_model / tflite_{best} batch-32 latency",
                                    timing.paired_ratio(times["saved_model b32"], times[f"tflite_{best} b32"]), 1.0,
                                    True, "no target set; TFLite runs 32 single-window invocations"))
    return {
        "findings": findings(times, best, report, spec),
        "title": "4. Export",
        "conditions": {"model": f"the demo ({DEMO}.flags), {spec.model}, trained and exported in "
                                f"{demo_seconds:.0f} s", "data": {s: manifest.splits[s].examples for s in SPLITS},
                       "input": f"raw {spec.window_samples} x {len(spec.leads)} mV windows at {spec.sample_rate_hz} Hz",
                       "best_usable_quantized": best, "interpreter": report["interpreter"], "reps": reps,
                       "tflite_threads": 1, "tensorflow_threads": os.cpu_count()},
        "metrics": {
            "latency": {name: timing.spread(values) for name, values in times.items()},
            "size_kb": {name: round(value / 1024, 1) for name, value in sizes.items()},
            "agreement_with_keras_test_split": agreement,
            "stage_profile_ms_batch1": stage_profile(times, report),
            "export_report": {variant: {k: entry.get(k) for k in ("verdict", "argmax_agreement", "max_abs_prob_diff",
                                                                  "latency_ms_batch1", "convert_seconds")}
                              for variant, entry in report["tflite"].items()},
        },
        "ratios": ratios,
    }
