"""`evaluate` of a run trained on synthetic ECGs, on real PTB-XL records: the realism score. It is scored zero-shot
into its own folder (per-class AUCs with bootstrap CIs), and data with other classes, leads or rate is refused."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

import keras
import pytest

from ecg_tfx.core import storage
from ecg_tfx.core.run_folder import RunFolder
from ecg_tfx.data import conversion, input_pipeline
from ecg_tfx.models import build_model

REPO = pathlib.Path(__file__).resolve().parents[2]


def _evaluate(*flags: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ecg_tfx.evaluate", *flags], cwd=REPO, capture_output=True,
                          text=True, timeout=300)


@pytest.fixture(scope="module")
def synthetic_run(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    """The small `features` model fitted for 3 epochs on 40 synthetic superdiagnostic patients converted as
    `ptbxl_lead_i` converts PTB-XL (lead I, 100 Hz, 10-s windows), saved as a run folder whose run_info.json names
    its data."""
    data_dir = tmp_path_factory.mktemp("synthetic_superdiagnostic")
    config = conversion.ConversionConfig(labels="superdiagnostic", synthetic_patients=40,
                                         synthetic_records_per_patient=1, synthetic_duration_s=10,
                                         synthetic_sample_rate=100, sample_rate=100, leads="I")
    manifest = conversion.run(config, str(data_dir))
    spec = manifest.model_spec("features", input_seconds=2.5, eval_stride_seconds=2.5)
    keras.utils.set_random_seed(0)
    model = build_model("features", len(spec.leads), len(spec.labels), True, spec.sample_rate_hz)
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="binary_crossentropy")
    model.fit(input_pipeline.make_dataset(str(data_dir), manifest, "train", spec, 16, training=False), epochs=3,
              verbose=0)
    run = RunFolder(str(tmp_path_factory.mktemp("synthetic_run")))
    model.save(run.model)
    spec.save(run.path)
    storage.write_json(run.run_info, {"data_dir": str(data_dir)})
    return pathlib.Path(run.path)


def test_real_records_are_scored_zero_shot_per_class_with_cis(synthetic_run, ptbxl_lead_i):
    done = _evaluate(f"--run_dir={synthetic_run}", f"--data_dir={ptbxl_lead_i['data']}")
    assert done.returncode == 0, done.stderr[-3000:]
    out = synthetic_run / "zero_shot_ptbxl_test"
    assert f"-> {out}" in done.stdout
    assert "zero-shot on ptbxl (trained on synthetic): record ROC AUC macro" in done.stdout
    assert not (synthetic_run / "metrics.json").exists()  # the run's own evaluation is not replaced
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["zero_shot"] == {"trained_on": "synthetic", "source": "ptbxl", "label_preset": "superdiagnostic",
                                    "data_dir": str(ptbxl_lead_i["data"])}
    assert metrics["records"] == ptbxl_lead_i["manifest"].split("test").records  # fold 10, every record once
    record = metrics["record"]
    intervals = record["confidence_intervals"]["roc_auc_per_class"]
    assert set(record["roc_auc_per_class"]) == set(intervals) == {"NORM", "MI", "STTC", "CD", "HYP"}
    for name, interval in intervals.items():
        assert interval[0] <= record["roc_auc_per_class"][name] <= interval[1], name
        assert f"{name} {record['roc_auc_per_class'][name]:.3f} [{interval[0]:.3f}, {interval[1]:.3f}]" in done.stdout


def test_data_with_other_classes_leads_or_rate_is_refused(synthetic_run, tiny_conversion):
    done = _evaluate(f"--run_dir={synthetic_run}", f"--data_dir={tiny_conversion[0]}")
    assert done.returncode != 0
    assert ("error: the data does not match the model: labels: model ['NORM', 'MI', 'STTC', 'CD', 'HYP'], data "
            "['normal', 'myocardial_infarction'") in done.stderr
    assert "leads: model ['i'], data ['i', 'ii'" in done.stderr and "sample_rate_hz: model 100, data 500" in done.stderr
    assert not (synthetic_run / "metrics.json").exists()
