"""TFLite variants: each reported with size, latencies and agreement and its file named by its verdict; int16x8
converting, int8_body's float preprocessing; the stage profile; the verdict rules (threshold, minimum window count,
multi-label decisions at the fitted thresholds, the export's calibration, interpreter failures); predict's
refusal."""

from __future__ import annotations

import json
import pathlib
import shutil
import subprocess
import sys

import numpy as np
import pytest

from ecg_tfx.core.model_spec import ModelSpec
from ecg_tfx.evaluation.calibration import Calibration
from ecg_tfx.evaluation.decision import Decision
from ecg_tfx.serving import predictors, tflite
from ecg_tfx.serving.exporter import export_run
from ecg_tfx.serving.tflite import REPORT_FILE, TFLITE_DIR, USABLE, evaluate_variant


@pytest.fixture(scope="module")
def float32_case(tiny_export) -> tuple[bytes, np.ndarray, np.ndarray]:
    """The tiny export's float32 model, the 4 test windows and its own (uncalibrated) probabilities on them."""
    content = (tiny_export["version"] / TFLITE_DIR / "model_float32.tflite").read_bytes()
    windows, _ = tflite.read_windows(str(tiny_export["data"]), "test", ModelSpec.load(str(tiny_export["run"])))
    runner = tflite.TFLiteRunner(content)
    return content, windows, np.concatenate([runner(window[None]) for window in windows])


def _uncalibrated(probabilities: np.ndarray, multi_label: bool) -> Decision:
    """The defaults: no calibration, argmax / 0.5."""
    return Decision.default(probabilities.shape[1], multi_label)


def test_every_variant_is_reported_and_its_file_named_by_its_verdict(tiny_export):
    version = tiny_export["version"]
    report = json.loads((version / REPORT_FILE).read_text())
    assert sorted(report["tflite"]) == sorted(tflite.VARIANTS)
    assert report["interpreter"] == tflite.INTERPRETER and report["agreement_windows"] == 4
    written = sorted(f"{TFLITE_DIR}/{p.name}" for p in (version / TFLITE_DIR).glob("model_*.tflite"))
    assert written == sorted(entry["file"] for entry in report["tflite"].values() if "file" in entry)
    for variant, entry in report["tflite"].items():
        assert entry["usable"] == (entry["verdict"] == USABLE) and entry["reason"]
        if "file" not in entry:
            assert entry["verdict"] == "conversion failed"
            continue
        suffix = "" if entry["usable"] else "_" + entry["verdict"].replace(" ", "_")
        assert entry["file"] == f"{TFLITE_DIR}/model_{variant}{suffix}.tflite"
        if "argmax_agreement" in entry:
            assert sorted(entry["latency_ms_batch1"]) == ["1", "2"]
            assert min(entry["latency_ms_batch1"].values()) > 0
    float32 = report["tflite"]["float32"]
    assert float32["usable"] and float32["argmax_agreement"] == 1.0 and float32["max_abs_prob_diff"] < 1e-4
    lines = tflite.summary_lines(report)  # what the export and train commands print: a header, then a table
    assert "on 4 test windows" in lines[0] and lines[1].startswith("Preprocessing alone, batch 1: TFLite float32")
    assert lines[2].split()[0] == "variant"
    assert [line.split()[0] for line in lines[3:]] == list(tflite.VARIANTS)  # in VARIANTS' order
    assert [line.endswith(f"  {USABLE}") for line in lines[3:]] == [report["tflite"][v]["usable"]
                                                                     for v in tflite.VARIANTS]
    assert f"{float32['argmax_agreement']:.1%}" in lines[3]


def _ops_in_order(content: bytes) -> list[tuple[str, list[str]]]:
    """A TFLite model's ops in execution order, each with the dtypes of its outputs (not the XNNPACK delegate's
    nodes, which the interpreter appends)."""
    interpreter = tflite.Interpreter(model_content=content)
    interpreter.allocate_tensors()
    dtypes = {t["index"]: np.dtype(t["dtype"]).name for t in interpreter.get_tensor_details()}
    return [(op["op_name"], [dtypes[i] for i in op["outputs"] if i >= 0]) for op in interpreter._get_ops_details()
            if op["op_name"] != "DELEGATE"]


def test_int16x8_converts_with_int16_activations_and_runs(tiny_export):
    entry = json.loads((tiny_export["version"] / REPORT_FILE).read_text())["tflite"]["int16x8"]
    assert "argmax_agreement" in entry and sorted(entry["latency_ms_batch1"]) == ["1", "2"]  # converted and ran
    ops = _ops_in_order((tiny_export["version"] / entry["file"]).read_bytes())
    assert all(dtypes == ["int16"] for name, dtypes in ops if name == "CONV_2D")
    assert entry["convert_seconds"] > 0


# int8_body against the SavedModel on the tiny export's 4 test windows (a CNN fitted for one epoch): float
# preprocessing leaves the int8 body's rounding only.
INT8_BODY_MAX_ABS_PROB_DIFF = 0.1


def test_int8_body_keeps_float_preprocessing_before_its_int8_cnn(tiny_export):
    report = json.loads((tiny_export["version"] / REPORT_FILE).read_text())
    entry = report["tflite"]["int8_body"]
    content = (tiny_export["version"] / entry["file"]).read_bytes()
    runner = tflite.TFLiteRunner(content)
    assert runner.input["dtype"] == np.float32 and runner.output["dtype"] == np.float32
    ops = _ops_in_order(content)
    names = [name for name, _ in ops]
    first_quantize = names.index("QUANTIZE")
    assert "RFFT2D" in names[:first_quantize] and "RFFT2D" not in names[first_quantize:]
    assert all(set(dtypes) <= {"float32", "complex64"} for _, dtypes in ops[:first_quantize])  # RFFT2D: complex
    assert all(dtypes == ["int8"] for name, dtypes in ops if name in ("CONV_2D", "FULLY_CONNECTED"))
    assert names[-1] == "DEQUANTIZE"
    assert entry["float_preprocessing"] and not report["tflite"]["int8"]["float_preprocessing"]
    assert entry["argmax_agreement"] == 1.0 and entry["max_abs_prob_diff"] < INT8_BODY_MAX_ABS_PROB_DIFF


def test_the_stage_profile_times_the_preprocessing_alone(tiny_export):
    report = json.loads((tiny_export["version"] / REPORT_FILE).read_text())
    alone = report["preprocessing_ms_batch1"]
    assert sorted(alone["tflite_float32"]) == ["1", "2"] and min(alone["tflite_float32"].values()) > 0
    assert alone["tensorflow"] > 0
    assert [v for v in tflite.VARIANTS if report["tflite"][v]["float_preprocessing"]] == list(
        tflite.FLOAT_PREPROCESSING)
    body = tflite.summary_lines(report)[3 + tflite.VARIANTS.index("float32")].split()[4]
    assert float(body) == pytest.approx(report["tflite"]["float32"]["latency_ms_batch1"]["1"]
                                        - alone["tflite_float32"]["1"], abs=0.06)


def test_agreement_below_the_threshold_is_unusable(float32_case):
    content, windows, probabilities = float32_case
    reference = probabilities.copy()
    reference[0] = np.roll(reference[0], 1)  # window 0's diagnosis changes: 3 of 4 agree
    entry = evaluate_variant(content, windows, reference, _uncalibrated(reference, False), min_windows=1)
    assert entry["argmax_agreement"] == 0.75 and entry["verdict"] == "unusable" and not entry["usable"]
    assert "argmax agreement 75.0% of 4 test windows < 99%" in entry["reason"]


def test_too_few_windows_is_not_measured_never_usable(float32_case):
    content, windows, probabilities = float32_case
    enough = evaluate_variant(content, windows, probabilities, _uncalibrated(probabilities, False), min_windows=4)
    assert enough["verdict"] == USABLE and enough["usable"]
    too_few = evaluate_variant(content, windows, probabilities, _uncalibrated(probabilities, False), min_windows=5)
    assert too_few["verdict"] == "not measured" and not too_few["usable"]
    assert too_few["argmax_agreement"] == 1.0 and "only 4 test windows (< 5)" in too_few["reason"]


def test_multi_label_needs_each_class_decision_to_agree(float32_case):
    content, windows, probabilities = float32_case
    reference = probabilities.copy()
    flipped = int(probabilities[0].argmin())
    reference[0, flipped] = 1.0 - float(probabilities[0, flipped] >= 0.5)  # one decision of one window flips
    single = evaluate_variant(content, windows, reference, _uncalibrated(reference, False), min_windows=1)
    assert "decision_agreement_per_class" not in single
    entry = evaluate_variant(content, windows, reference, _uncalibrated(reference, True), min_windows=1)
    assert entry["decision_agreement_per_class"][flipped] == 0.75 and entry["verdict"] == "unusable"
    assert "decision agreement at the fitted thresholds (worst class) 75.0%" in entry["reason"]


def test_multi_label_agreement_is_judged_at_the_fitted_thresholds_not_at_half(float32_case):
    content, windows, probabilities = float32_case
    c = int(probabilities[0].argmin())
    p = float(probabilities[0, c])
    assert p < 0.4
    reference = probabilities.copy()
    reference[0, c] = p + 0.02  # both below 0.5, but on either side of the class's fitted threshold p + 0.01
    at_half = evaluate_variant(content, windows, reference, _uncalibrated(reference, True), min_windows=1)
    assert at_half["verdict"] == USABLE and min(at_half["decision_agreement_per_class"]) == 1.0
    thresholds = tuple(p + 0.01 if i == c else 0.5 for i in range(probabilities.shape[1]))
    fitted = Decision(Calibration.identity(probabilities.shape[1], True), thresholds, 0.0)
    entry = evaluate_variant(content, windows, reference, fitted, min_windows=1)
    assert entry["decision_thresholds"] == pytest.approx(thresholds)
    assert entry["decision_agreement_per_class"][c] == 0.75 and entry["verdict"] == "unusable"


def test_the_variant_is_compared_after_the_exports_calibration(float32_case):
    """The TFLite model outputs uncalibrated probabilities; the SavedModel's are calibrated: the report compares
    them after applying the export's calibration, so a calibrated export's float32 model still agrees."""
    content, windows, probabilities = float32_case
    classes = probabilities.shape[1]
    decision = Decision(Calibration(False, (3.0,) * classes, (0.0,) * classes), (), 0.0)
    served = decision.calibration.apply(probabilities)
    entry = evaluate_variant(content, windows, served, decision, min_windows=1)
    assert entry["verdict"] == USABLE and entry["max_abs_prob_diff"] < 1e-4
    uncalibrated = evaluate_variant(content, windows, served, _uncalibrated(served, False), min_windows=1)
    assert uncalibrated["max_abs_prob_diff"] > 0.01


def test_an_interpreter_failure_makes_the_variant_unusable_instead_of_failing_the_export(float32_case):
    content, windows, probabilities = float32_case
    entry = evaluate_variant(content, windows[:, :100], probabilities, _uncalibrated(probabilities, False),
                             min_windows=1)
    assert entry["verdict"] == "unusable" and entry["reason"].startswith("the interpreter failed: ")
    assert "argmax_agreement" not in entry


@pytest.fixture(scope="module")
def unmeasured_export(tiny_export, tmp_path_factory) -> dict:
    """The tiny run exported with the real minimum window count: its 4 test windows give 'not measured'. Only its
    float32 model: the other variants are reported in `tiny_export`."""
    version = export_run(str(tiny_export["run"]), str(tmp_path_factory.mktemp("unmeasured")), "ecg", tflite=True,
                         data_dir=str(tiny_export["data"]), tflite_variants=("float32",))
    return json.loads(open(f"{version}/{REPORT_FILE}").read()) | {"version": version}


def _predict(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ecg_tfx.predict", *args], capture_output=True, text=True,
                          timeout=300)


def test_predict_refuses_a_model_not_called_usable_unless_forced(unmeasured_export, tmp_path):
    assert unmeasured_export["min_agreement_windows"] == tflite.MIN_AGREEMENT_WINDOWS
    assert sorted(unmeasured_export["tflite"]) == ["float32"]  # --tflite_variants: only what was asked for
    float32 = unmeasured_export["tflite"]["float32"]
    assert float32["verdict"] == "not measured" and float32["file"] == "tflite/model_float32_not_measured.tflite"
    model = f"{unmeasured_export['version']}/{float32['file']}"
    signal = np.zeros((5000, 12), np.float32)
    np.save(tmp_path / "flat.npy", signal)
    args = ("--sample_rate=500", "--units=mV", "--leads=standard12", str(tmp_path / "flat.npy"))
    refused = _predict(f"--model={model}", *args)
    assert refused.returncode != 0 and refused.stdout == ""
    assert "flagged NOT MEASURED by its export report" in refused.stderr and "--allow_unusable" in refused.stderr
    with pytest.raises(predictors.UnusableModelError, match="only 4 test windows"):
        predictors.load_predictor(model)
    forced = _predict(f"--model={model}", "--allow_unusable", "--json", *args)
    assert forced.returncode == 0, forced.stderr[-2000:]
    assert json.loads(forced.stdout)[0]["file"] == str(tmp_path / "flat.npy")
    # Without the report beside it (the tflite/ folder copied alone, or an s3:// export still being copied), the
    # file's name still says it is not usable; a usable name is loaded as before.
    alone = tmp_path / "tflite"
    shutil.copytree(pathlib.Path(model).parent, alone)
    with pytest.raises(predictors.UnusableModelError, match="NOT MEASURED by its file name"):
        predictors.load_predictor(str(alone / "model_float32_not_measured.tflite"))
    assert predictors.load_predictor(str(alone / "model_float32_not_measured.tflite"), allow_unusable=True)
    (alone / "model_float32_not_measured.tflite").rename(alone / "model_float32.tflite")
    assert predictors.load_predictor(str(alone / "model_float32.tflite"))
