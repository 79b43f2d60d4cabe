"""predict CLI tests: WFDB, CSV and .npy inputs through the exported SavedModel and TFLite model."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
import wfdb

from ecg_tfx.core.model_spec import ModelSpec
from ecg_tfx.data import transform
from ecg_tfx.serving import predictors
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
    expected = loaded.signatures["serving_default"](ecg=tf.constant(inputs["signal"][None], tf.float32),
                                                    sample_rate=tf.constant([250.0]))["probabilities"].numpy()[0]
    labels = [name.decode() for name in loaded.metadata()["class_names"].numpy()]
    for record in records:
        assert record["diagnosis"] == labels[expected.argmax()] == record["top_k"][0]["class"]
        assert record["confidence"] == pytest.approx(expected.max(), abs=1e-4)
        assert [e["probability"] for e in record["top_k"]] == pytest.approx(sorted(expected)[::-1][:2], abs=1e-4)
        assert record["sample_rate_hz"] == 250 and record["duration_s"] == pytest.approx(12)


def test_cli_text_output_and_npy_through_tflite(tiny_export, inputs):
    tflite = tiny_export["version"] / "tflite" / "model_float32.tflite"
    leads = ",".join(UPPER_LEADS)
    text = _run(f"--model={tflite}", "--sample_rate=250", "--units=V", f"--leads={leads}", inputs["npy"])
    assert text.returncode == 0, text.stderr[-2000:]
    assert text.stdout.startswith(f"{inputs['npy']}: ") and "top 3: " in text.stdout
    saved = predictors.diagnose(predictors.load_predictor(str(tiny_export["version"])), inputs["npy"], 5,
                                sample_rate=250, leads=UPPER_LEADS, units="V")
    lite = predictors.diagnose(predictors.TFLitePredictor(str(tflite)), inputs["npy"], 5, sample_rate=250,
                            leads=UPPER_LEADS, units="V")
    assert lite["diagnosis"] == saved["diagnosis"] and f"{saved['diagnosis']} (confidence" in text.stdout
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
