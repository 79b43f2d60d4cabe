"""`evaluate` on several run folders scores their seed ensemble like a run: the same outputs, with the decision the
ensemble's export serves; runs of different tasks and an ensemble without --out_dir are refused."""

from __future__ import annotations

import json
import pathlib
import shutil
import subprocess
import sys

from ecg_tfx.core.manifest import Manifest
from ecg_tfx.core.model_spec import FILENAME
from ecg_tfx.evaluation.decision import Decision
from ecg_tfx.evaluation.evaluate import evaluate
from ecg_tfx.models.ensemble import average, load_runs

REPO = pathlib.Path(__file__).resolve().parents[2]


def _evaluate(*flags: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ecg_tfx.evaluate", *flags], cwd=REPO, capture_output=True,
                          text=True, timeout=300)


def test_cli_scores_the_ensemble_with_the_decision_its_export_serves(tiny_ensemble_export, tmp_path):
    runs = [str(run) for run in tiny_ensemble_export["runs"]]
    data_dir = str(tiny_ensemble_export["data"])
    out = tmp_path / "ensemble"
    done = _evaluate(f"--run_dir={','.join(runs)}", f"--data_dir={data_dir}", f"--out_dir={out}")
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"seed ensemble of 2 runs: {', '.join(runs)}" in done.stdout
    assert "record 95% CI roc_auc_macro=[" in done.stdout
    served = Decision.load(str(tiny_ensemble_export["version"] / "tflite" / "decision.json"))
    assert Decision.load(str(out / "decision.json")) == served
    metrics = json.loads((out / "metrics.json").read_text())
    # What a single run's evaluation writes, of the ensemble's probabilities with the served decision.
    models, spec = load_runs(runs)
    expected = evaluate(average(models), spec, data_dir, Manifest.load(data_dir), "test", str(tmp_path / "expected"),
                        decision=served)
    assert metrics == json.loads(json.dumps(expected))
    assert sorted(p.name for p in out.iterdir()) == sorted([p.name for p in (tmp_path / "expected").iterdir()]
                                                           + ["decision.json"])
    single = evaluate(models[0], spec, data_dir, Manifest.load(data_dir), "test", str(tmp_path / "single"))
    assert metrics.keys() == single.keys() and metrics["record"].keys() == single["record"].keys()
    assert metrics["record"]["confidence_intervals"].keys() == single["record"]["confidence_intervals"].keys()


def test_cli_refuses_runs_of_another_task_and_an_ensemble_without_out_dir(tiny_run, tiny_conversion, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(tiny_run, other)
    spec = json.loads((other / FILENAME).read_text())
    (other / FILENAME).write_text(json.dumps({**spec, "labels": list(reversed(spec["labels"]))}))
    data_dir = str(tiny_conversion[0])
    done = _evaluate(f"--run_dir={tiny_run},{other}", f"--data_dir={data_dir}", f"--out_dir={tmp_path / 'out'}")
    assert done.returncode != 0 and "but labels differs" in done.stderr and str(other) in done.stderr
    assert not (tmp_path / "out").exists()
    done = _evaluate(f"--run_dir={tiny_run},{other}", f"--data_dir={data_dir}")
    assert done.returncode != 0 and "an ensemble (several --run_dir) needs --out_dir" in done.stderr
