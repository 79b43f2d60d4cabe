"""The model card of an export: the facts of the run, its data, its decision and its contract, or what is missing."""

from __future__ import annotations

import json
import shutil

import keras

from ecg_tfx.core.manifest import Manifest
from ecg_tfx.core.model_spec import ModelSpec
from ecg_tfx.core.run_folder import RunFolder
from ecg_tfx.evaluation.evaluate import evaluate, fit_decision
from ecg_tfx.serving.contract import InputContract
from ecg_tfx.serving.exporter import export_run


def _card(version) -> tuple[dict, str]:
    extra = version / "assets.extra"
    return json.loads((extra / "model_card.json").read_text()), (extra / "model_card.md").read_text()


def test_export_of_a_run_without_decision_fits_one_on_validation_and_says_what_it_lacks(tiny_export):
    card, text = _card(tiny_export["version"])
    spec = ModelSpec.load(str(tiny_export["run"]))
    manifest = Manifest.load(str(tiny_export["data"]))
    assert card["model"]["classes"] == list(spec.labels) and card["model"]["input_seconds"] == 2.5
    assert card["data"]["splits"]["validation"]["records"] == manifest.splits["validation"].records
    assert card["decision"]["fitted_on"] == {"split": "validation", "records": manifest.splits["validation"].records}
    assert card["input_contract"] == json.loads(InputContract.for_spec(spec).dumps())
    assert card["test_metrics"] is None  # the fixture run was never evaluated
    assert any("no test metrics" in limit for limit in card["limits"])
    for heading in ("## Intended use", "## Data and splits", "## Test metrics", "## Decision", "## Input contract",
                    "## Limits"):
        assert heading in text
    assert "Fitted on: the validation split" in text and "temperature scaling" in text


def test_evaluated_run_card_holds_test_metrics_with_cis_of_the_served_decision(tiny_export, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(tiny_export["run"], run_dir)
    data_dir = str(tiny_export["data"])
    spec, manifest = ModelSpec.load(str(run_dir)), Manifest.load(data_dir)
    run = RunFolder(str(run_dir))
    model = keras.saving.load_model(run.model, compile=False)
    decision = fit_decision(model, spec, data_dir, manifest)
    decision.save(run.decision)  # as training does when it ends
    result = evaluate(model, spec, data_dir, manifest, "test", run.evaluation_dir("test"), decision=decision)
    version = export_run(str(run_dir), str(tmp_path / "export"), data_dir=data_dir)
    card, text = _card(tmp_path / "export" / "ecg" / "1")
    assert version.endswith("/1")
    metrics = card["test_metrics"]
    assert metrics["records"] == manifest.splits["test"].records
    assert metrics["accuracy"] == result["record"]["accuracy"]
    assert metrics["confidence_intervals"]["accuracy"] == result["record"]["confidence_intervals"]["accuracy"]
    assert metrics["decision"]["abstention"] == result["decision"]["abstention"]
    assert metrics["decision"]["per_class"].keys() == set(spec.labels)
    assert not any("computed before this decision" in limit for limit in card["limits"])
    assert any("only" in limit and "records" in limit for limit in card["limits"])  # a tiny test split
    low, high = metrics["confidence_intervals"]["accuracy"]
    assert f"| accuracy | {metrics['accuracy']:.3f} | [{low:.3f}, {high:.3f}] |" in text


def test_run_without_decision_and_data_exports_the_defaults_and_says_so(tiny_export, tmp_path):
    export_run(str(tiny_export["run"]), str(tmp_path))
    card, text = _card(tmp_path / "ecg" / "1")
    decision = card["decision"]
    assert decision["fitted_on"] is None and decision["abstain_below"] == 0.0
    assert set(decision["calibration"]["scale"]) == {1.0} and set(decision["calibration"]["offset"]) == {0.0}
    assert card["data"] is None
    assert any("No decision was fitted" in limit for limit in card["limits"])
    assert "Fitted on: nothing (defaults)." in text and "The data folder was not available" in text
