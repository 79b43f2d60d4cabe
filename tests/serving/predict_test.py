"""predict CLI tests: WFDB, CSV and .npy inputs through the exported SavedModel and TFLite model, the decision
both make (present classes, inconclusive and why, the quality gate), and a one-lead multi-label PTB-XL model."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
import wfdb

from ecg_tfx.core.model_spec import ModelSpec
from ecg_tfx.data import transform
from ecg_tfx.evaluation.decision import Decision
from ecg_tfx.serving import predictors
from ecg_tfx.serving.exporter import export_run
from ecg_tfx.serving.tflite import read_windows

UPPER_LEADS = ["I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6"]


@pytest.fixture(scope="session")
def inputs(tiny_export, tmp_path_factory) -> dict[str, object]:
    """One 12 s test recording at 250 Hz written as WFDB (mV), CSV (uV, shuffled columns + an extra) and .npy (V)."""
    folder = tmp_path_factory.mktemp("predict_inputs")
    windows, _ = read_windows(str(tiny_export["data"]), "test", ModelSpec.load(str(tiny_export["run"])), 2)
    signal = transform.resample(np.concatenate(windows)[:6000], 500, 250).astype(np.float64)  # 12 s
    wfdb.wrsamp("rec", fs=250, units=["mV"] * 12, sig_name=UPPER_LEADS, p_signal=signal, fmt=["32"] * 12,
                adc_gain=[100000.0] * 12, baseline=[0] * 12, write_dir=str(folder))
    order = [11, 0, 5, 3, 1, 2, 4, 6, 7, 8, 9, 10]
    csv = folder / "rec.csv"
    columns = np.concatenate([signal[:, order] * 1000, np.zeros((len(signal), 1))], axis=1)
    np.savetxt(csv, columns, delimiter=",", header=",".join([UPPER_LEADS[i] for i in order] + ["resp"]),
               comments="", fmt="%.4f")
    np.save(folder / "rec.npy", signal / 1000)
    return {"signal": signal, "hea": str(folder / "rec.hea"), "csv": str(csv), "npy": str(folder / "rec.npy")}


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ecg_tfx.predict", *args], capture_output=True, text=True,
                          timeout=300)


def test_cli_json_on_wfdb_csv_and_npy_agrees_with_serving_default(tiny_export, inputs):
    result = _run(f"--model={tiny_export['export_dir'] / 'ecg'}", "--sample_rate=250", "--units=uV", "--json",
                  "--top_k=2", inputs["hea"], inputs["csv"])
    assert result.returncode == 0, result.stderr[-2000:]
    records = json.loads(result.stdout)
    assert [r["file"] for r in records] == [inputs["hea"], inputs["csv"]]
    loaded = tf.saved_model.load(str(tiny_export["version"]))
    served = loaded.signatures["serving_default"](ecg=tf.constant(inputs["signal"][None], tf.float32),
                                                  sample_rate=tf.constant([250.0]))
    expected = served["probabilities"].numpy()[0]
    labels = [name.decode() for name in loaded.metadata()["class_names"].numpy()]
    for record in records:
        assert record["decision"] == served["decision"].numpy()[0].decode()
        assert record["reason"] == served["reason"].numpy()[0].decode()
        assert record["present"] == [labels[expected.argmax()]] == [record["top_k"][0]["class"]]  # single-label
        assert record["confidence"] == pytest.approx(expected.max(), abs=1e-4)
        assert [e["probability"] for e in record["top_k"]] == pytest.approx(sorted(expected)[::-1][:2], abs=1e-4)
        assert record["heart_rate_bpm"] == pytest.approx(float(served["heart_rate_bpm"][0]), abs=1e-3)
        assert record["bad_leads"] == [] and not record["signal_unreadable"]
        assert record["quality_gate"] == "in the SavedModel"
        assert record["sample_rate_hz"] == 250 and record["duration_s"] == pytest.approx(12)


def test_cli_text_output_and_npy_through_tflite(tiny_export, inputs):
    tflite = tiny_export["version"] / "tflite" / "model_float32.tflite"
    leads = ",".join(UPPER_LEADS)
    text = _run(f"--model={tflite}", "--sample_rate=250", "--units=V", f"--leads={leads}", inputs["npy"])
    assert text.returncode == 0, text.stderr[-2000:]
    assert text.stdout.startswith(f"{inputs['npy']}: ") and "top 3: " in text.stdout
    assert "quality gate run by predict (the TFLite model has no gate)" in text.stdout
    saved = predictors.diagnose(predictors.load_predictor(str(tiny_export["version"])), inputs["npy"], 5,
                                sample_rate=250, leads=UPPER_LEADS, units="V")
    lite = predictors.diagnose(predictors.TFLitePredictor(str(tflite)), inputs["npy"], 5, sample_rate=250,
                            leads=UPPER_LEADS, units="V")
    assert lite["decision"] == saved["decision"] and f"{saved['decision']} (" in text.stdout
    for a, b in zip(lite["top_k"], saved["top_k"]):
        assert a["class"] == b["class"] and a["probability"] == pytest.approx(b["probability"], abs=1e-4)


def test_cli_refuses_a_csv_without_rate_and_exits_non_zero(tiny_export, inputs):
    result = _run(f"--model={tiny_export['version']}", "--units=mV", inputs["csv"])
    assert result.returncode == 1
    assert "does not say its sample rate; pass --sample_rate=Hz" in result.stderr


def test_missing_rate_units_and_leads_are_clear_errors(inputs, tmp_path):
    with pytest.raises(predictors.InputError, match="pass --sample_rate"):
        predictors.read_recording(inputs["npy"], units="V", leads=UPPER_LEADS)
    with pytest.raises(predictors.InputError, match="pass --units"):
        predictors.read_recording(inputs["csv"], sample_rate=250)
    with pytest.raises(predictors.InputError, match="pass --leads"):
        predictors.read_recording(inputs["npy"], sample_rate=250, units="V")
    with pytest.raises(predictors.InputError, match="header says 250.0 Hz but --sample_rate=500"):
        predictors.read_recording(inputs["hea"], sample_rate=500)
    six = predictors.read_recording(inputs["npy"], sample_rate=250, units="V", leads=UPPER_LEADS[:6] + ["a"] * 6)
    with pytest.raises(predictors.InputError, match="needs leads v1,v2,v3,v4,v5,v6, which the input lacks"):
        predictors.match_leads(six, tuple(name.lower() for name in UPPER_LEADS))


def test_units_are_converted_to_millivolts(inputs):
    wfdb_mv = predictors.read_recording(inputs["hea"])
    csv_uv = predictors.read_recording(inputs["csv"], sample_rate=250, units="uV")
    npy_v = predictors.read_recording(inputs["npy"], sample_rate=250, units="V", leads=UPPER_LEADS)
    model_leads = tuple(name.lower() for name in UPPER_LEADS)
    for recording in (wfdb_mv, csv_uv, npy_v):
        np.testing.assert_allclose(predictors.match_leads(recording, model_leads), inputs["signal"], atol=1e-4)


def _same_answer(saved: dict, lite: dict) -> None:
    """predict's answers through the SavedModel and through a float32 TFLite model are the same."""
    for key in ("decision", "present", "reason", "bad_leads", "signal_unreadable"):
        assert lite[key] == saved[key], key
    assert lite["confidence"] == pytest.approx(saved["confidence"], abs=1e-4)
    assert [e["class"] for e in lite["top_k"]] == [e["class"] for e in saved["top_k"]]
    assert [e["probability"] for e in lite["top_k"]] == pytest.approx([e["probability"] for e in saved["top_k"]],
                                                                      abs=1e-4)
    assert (lite["heart_rate_bpm"] is None) == (saved["heart_rate_bpm"] is None)
    if saved["heart_rate_bpm"] is not None:
        assert lite["heart_rate_bpm"] == pytest.approx(saved["heart_rate_bpm"], abs=0.5)


def test_a_flat_recording_is_inconclusive_for_poor_signal_on_both_paths(tiny_export, tmp_path):
    np.save(tmp_path / "flat.npy", np.zeros((5000, 12), np.float32))
    model = tiny_export["version"] / "tflite" / "model_float32.tflite"
    reading = {"sample_rate": 500, "leads": ["standard12"], "units": "mV"}
    saved = predictors.diagnose(predictors.load_predictor(str(tiny_export["version"])), str(tmp_path / "flat.npy"),
                                3, **reading)
    assert saved["decision"] == "inconclusive" and saved["reason"] == "poor_signal" and saved["signal_unreadable"]
    assert saved["bad_leads"] == [name.lower() for name in UPPER_LEADS]
    _same_answer(saved, predictors.diagnose(predictors.TFLitePredictor(str(model)), str(tmp_path / "flat.npy"), 3,
                                            **reading))
    text = _run(f"--model={model}", "--sample_rate=500", "--units=mV", "--leads=standard12", str(tmp_path / "flat.npy"))
    assert text.returncode == 0 and f"{tmp_path / 'flat.npy'}: inconclusive (poor_signal; confidence" in text.stdout
    assert "signal unreadable: " in text.stdout and "bad leads: i,ii,iii,avr,avl,avf,v1" in text.stdout


@pytest.fixture(scope="module")
def lead_i_export(ptbxl_lead_i, tmp_path_factory) -> pathlib.Path:
    """The one-lead PTB-XL run exported with its float32 TFLite model only (the other variants are tested on the
    tiny export); the decision is fitted at export on validation fold 9."""
    version = export_run(str(ptbxl_lead_i["run"]), str(tmp_path_factory.mktemp("lead_i_export")), "ecg",
                         tflite=True, data_dir=str(ptbxl_lead_i["data"]), min_agreement_windows=1,
                         tflite_variants=("float32",))
    return pathlib.Path(version)


def test_one_lead_multi_label_model_takes_one_lead_csv_and_wfdb(ptbxl_dir, lead_i_export, tmp_path):
    """Lead I of real PTB-XL test-fold records as one-lead WFDB records and CSVs, and both records one after the
    other (20 s: two windows): the SavedModel and the TFLite model name the classes at or above the export's
    fitted thresholds (or say inconclusive), with the same calibrated probabilities, the mean of the windows'
    probabilities calibrated; averaging each window's calibrated probabilities would differ."""
    decision = Decision.load(str(lead_i_export / "tflite" / "decision.json"))
    assert decision.multi_label and decision.thresholds != (0.5,) * 5
    files, signals = [], []
    for record in ("00063", "00065"):  # MI, CD
        lead_i = wfdb.rdrecord(str(ptbxl_dir / "records100" / "00000" / f"{record}_lr"), channel_names=["I"])
        wfdb.wrsamp(f"lead_i_{record}", fs=100, units=["mV"], sig_name=["I"], p_signal=lead_i.p_signal,
                    fmt=["16"], adc_gain=[1000.0], baseline=[0], write_dir=str(tmp_path))
        np.savetxt(tmp_path / f"lead_i_{record}.csv", lead_i.p_signal, header="I", comments="", fmt="%.4f")
        files += [str(tmp_path / f"lead_i_{record}.hea"), str(tmp_path / f"lead_i_{record}.csv")]
        signals.append(lead_i.p_signal)
    both = np.concatenate(signals)
    np.savetxt(tmp_path / "both.csv", both, header="I", comments="", fmt="%.4f")
    files.append(str(tmp_path / "both.csv"))
    saved_predictor = predictors.load_predictor(str(lead_i_export))
    lite_predictor = predictors.TFLitePredictor(str(lead_i_export / "tflite" / "model_float32.tflite"))
    labels = saved_predictor.labels
    for path in files:
        saved = predictors.diagnose(saved_predictor, path, 5, sample_rate=100, units="mV")
        probability = {e["class"]: e["probability"] for e in saved["top_k"]}
        present = [name for name, t in zip(labels, decision.thresholds) if probability[name] >= t]
        assert saved["present"] == present
        assert saved["decision"] == ("inconclusive" if saved["reason"] else ",".join(present) or "none")
        lite = predictors.diagnose(lite_predictor, path, 5, sample_rate=100, units="mV")
        _same_answer(saved, lite)
    served = np.array([probability[name] for name in labels])  # of both.csv, the last file
    windows = np.stack([both[:1000], both[1000:2000]]).astype(np.float32)
    raw = np.concatenate([lite_predictor.runner(w[None]) for w in windows])
    np.testing.assert_allclose(decision.calibration.apply(raw.mean(axis=0, keepdims=True))[0], served, atol=1e-4)
    assert np.abs(decision.calibration.apply(raw).mean(axis=0) - served).max() > 3e-4  # 7.8e-4 (MI)
