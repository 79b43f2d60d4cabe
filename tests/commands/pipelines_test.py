"""Every pipeline flagfile parses with the trainer's flags and passes their validators."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

import pytest

from ecg_tfx.serving import tflite

REPO = pathlib.Path(__file__).resolve().parents[2]
FLAGFILES = sorted((REPO / "pipelines").glob("*.flags"))
# Parses in a fresh process: the CLI module defines its flags on import, and tests never import CLIs.
PARSE = """
import json, sys
from absl import flags
import ecg_tfx.train
flags.FLAGS(["train", "--flagfile=" + sys.argv[1]])
print(json.dumps({name: flags.FLAGS[name].value for name in ("data_dir", "run_dir")}))
"""


def test_the_four_pipelines_exist():
    assert {path.stem for path in FLAGFILES} >= {"synthetic_quick", "ptb_mi_vs_healthy", "ptb_diagnoses",
                                                 "ptbxl_superdiagnostic"}


@pytest.mark.parametrize("flagfile", FLAGFILES, ids=[path.stem for path in FLAGFILES])
def test_flagfile_parses(flagfile: pathlib.Path):
    result = subprocess.run([sys.executable, "-c", PARSE, str(flagfile)], capture_output=True, text=True,
                            cwd=REPO, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    values = json.loads(result.stdout.strip().splitlines()[-1])
    assert values["run_dir"].endswith(flagfile.stem) and values["data_dir"].endswith(flagfile.stem), (
        "each pipeline has its own data and run folders")


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
    flagfile = REPO / "pipelines" / "synthetic_quick.flags"
    assert "--tflite" in flagfile.read_text().split()
    result = subprocess.run([sys.executable, "-c", DEMO_TEST_WINDOWS, str(flagfile)], capture_output=True, text=True,
                            cwd=REPO, timeout=600)  # TensorFlow's import alone took > 120 s at load 11 on 2 cores
    assert result.returncode == 0, result.stderr[-2000:]
    assert int(result.stdout.strip().splitlines()[-1]) >= tflite.MIN_AGREEMENT_WINDOWS
