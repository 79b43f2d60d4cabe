"""Every pipeline flagfile parses with the trainer's flags and passes their validators."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

import pytest
from conftest import ON_PINNED_STACK

from ecg_tfx.serving import tflite

REPO = pathlib.Path(__file__).resolve().parents[2]
FLAGFILES = sorted((REPO / "pipelines").glob("*.flags"))
# Parsed in one fresh process for all flagfiles: the CLI module defines its flags on import, and tests never import
# CLIs; one TensorFlow import instead of one per flagfile.
PARSE = """
import json, sys
from absl import flags
import ecg_tfx.train
for job in json.loads(sys.argv[1]):
    flags.FLAGS.unparse_flags()
    try:
        flags.FLAGS(["train", "--flagfile=" + job[0], *job[1:]])
    except (flags.Error, ValueError) as error:
        print(json.dumps({"error": f"{type(error).__name__}: {error}"}))
        continue
    print(json.dumps({name: flags.FLAGS[name].value for name in ("data_dir", "run_dir", "init_from", "model",
                                                                 "leads", "sample_rate", "window_seconds",
                                                                 "input_seconds")}))
"""
PRETRAIN = REPO / "pipelines" / "synthetic_pretrain.flags"
DEMO = REPO / "pipelines" / "synthetic_quick.flags"
BAD_VARIANT = (str(DEMO), "--tflite_variants=float32,int4")
JOBS = [(str(path),) for path in FLAGFILES] + [(str(PRETRAIN), "--labels="),  # labels do not matter for --init_from
                                               BAD_VARIANT]


@pytest.fixture(scope="module")
def parsed() -> dict[tuple[str, ...], dict]:
    """Each job's values as the `train` command parses them (nested --flagfile included), or its error."""
    result = subprocess.run([sys.executable, "-c", PARSE, json.dumps(JOBS)], capture_output=True, text=True,
                            cwd=REPO, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.strip().splitlines()[-len(JOBS):]
    return {job: json.loads(line) for job, line in zip(JOBS, lines, strict=True)}


def test_the_four_pipelines_exist():
    assert {path.stem for path in FLAGFILES} >= {"synthetic_quick", "ptb_mi_vs_healthy", "ptb_diagnoses",
                                                 "ptbxl_superdiagnostic"}


@pytest.mark.parametrize("flagfile", FLAGFILES, ids=[path.stem for path in FLAGFILES])
def test_flagfile_parses(flagfile: pathlib.Path, parsed):
    values = parsed[(str(flagfile),)]
    assert "error" not in values, values
    # Its own run folder; its own data folder, or the one of the pipeline it includes (the same conversion).
    included = [line.split("=", 1)[1] for line in flagfile.read_text().split() if line.startswith("--flagfile=")]
    data_owners = {flagfile.stem} | {pathlib.Path(path).stem for path in included}
    assert values["run_dir"].endswith(flagfile.stem), "each pipeline has its own run folder"
    assert any(values["data_dir"].endswith(owner) for owner in data_owners), "each pipeline has its own data folder"


@pytest.mark.parametrize("name", ["ptbxl_superdiagnostic_pretrained", "ptb_mi_vs_healthy_pretrained"])
def test_fine_tuning_pipelines_take_the_pretrained_models_input(name: str, parsed):
    """What --init_from checks (architecture, leads, rate, input length; windows too), from the flagfiles: the
    fine-tuning pipelines start from synthetic_pretrain's run folder and feed its model the same input."""
    pretrain = parsed[(str(PRETRAIN), "--labels=")]
    fine_tune = parsed[(str(REPO / "pipelines" / f"{name}.flags"),)]
    assert fine_tune["init_from"] == pretrain["run_dir"]
    for key in ("model", "leads", "sample_rate", "window_seconds", "input_seconds"):
        assert fine_tune[key] == pretrain[key], key


def test_an_unknown_tflite_variant_is_refused_when_the_flags_are_parsed(parsed):
    assert "--tflite_variants takes some of float32,float16," in parsed[BAD_VARIANT]["error"]


# Plans the demo's conversion (record metadata only, no signal is made) and counts its test windows.
DEMO_TEST_WINDOWS = """
import sys
from absl import flags
import ecg_tfx.train
from ecg_tfx.data import conversion, conversion_flags
flags.FLAGS(["train", "--flagfile=" + sys.argv[1]])
plan = conversion.plan_conversion(conversion_flags.config_from_flags())
print(sum(plan.window.window_count(round(item.ref.duration_s * plan.window.sample_rate_hz))
          for task in plan.tasks if task.split == "test" for item in task.items))
"""


def test_the_demo_exports_tflite_with_enough_test_windows_to_judge_each_variant():
    assert "--tflite" in DEMO.read_text().split()
    result = subprocess.run([sys.executable, "-c", DEMO_TEST_WINDOWS, str(DEMO)], capture_output=True, text=True,
                            cwd=REPO, timeout=600)  # TensorFlow's import alone took > 120 s at load 11 on 2 cores
    assert result.returncode == 0, result.stderr[-2000:]
    assert int(result.stdout.strip().splitlines()[-1]) >= tflite.MIN_AGREEMENT_WINDOWS


@pytest.mark.skipif(not ON_PINNED_STACK, reason="`make demo` installs the pinned stack; on the current stack the Colab "
                    "notebook's test converts, trains, exports and predicts")
def test_make_demo_runs_its_three_commands_end_to_end_on_fewer_records(tmp_path):
    """`make demo` as the Makefile runs it (the flagfile's convert, train, evaluate and TFLite export, then
    make_sample and predict on the sample's header), on 30 patients and 1 epoch instead of 125 and 10."""
    data, run, sample = tmp_path / "data", tmp_path / "run", tmp_path / "af"

    def command(module: str, *args: str) -> str:
        done = subprocess.run([sys.executable, "-m", f"ecg_tfx.{module}", *args], capture_output=True, text=True,
                              cwd=REPO, timeout=600)
        assert done.returncode == 0, f"{module}: {done.stderr[-3000:]}"
        return done.stdout

    command("train", f"--flagfile={DEMO}", f"--data_dir={data}", f"--run_dir={run}", "--synthetic_patients=30",
            "--synthetic_records_per_patient=1", "--epochs=1", "--warmup_epochs=0")
    variants = next(line for line in DEMO.read_text().split() if line.startswith("--tflite_variants="))
    report = json.loads((run / "export" / "ecg" / "1" / "export_report.json").read_text())
    assert sorted(report["tflite"]) == sorted(variants.split("=", 1)[1].split(","))  # each converted and judged
    assert all("file" in entry for entry in report["tflite"].values())
    command("make_sample", "--condition=atrial_fibrillation", f"--output={sample}")
    [result] = json.loads(command("predict", f"--model={run / 'export' / 'ecg'}", "--json", f"{sample}.hea"))
    labels = json.loads((run / "model_spec.json").read_text())["labels"]
    assert result["file"] == f"{sample}.hea" and result["quality_gate"] == "in the SavedModel"
    assert result["top_k"][0]["class"] in labels and "atrial_fibrillation" in labels
