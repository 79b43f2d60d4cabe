"""Exports a training run, or a seed ensemble of runs, for TF Serving and, with --tflite, for phones (see
`ecg_tfx.serving.exporter`).

    python -m ecg_tfx.export --run_dir=workspace/runs/ptb --export_dir=workspace/exports [--model_name=ecg]
                             [--version=N] [--tflite --data_dir=workspace/tfrecords/ptb] [--compute_dtype=float32]

    python -m ecg_tfx.export --run_dir=workspace/runs/s0,workspace/runs/s1,workspace/runs/s2 \
                             --export_dir=workspace/exports --data_dir=workspace/tfrecords/ptbxl   # an ensemble

Several --run_dir (comma-separated) of one task export as one model serving the mean of their probabilities, with
a decision fitted on the ensemble's validation outputs (--data_dir; without it the defaults).

With --tflite it prints one line per TFLite variant: size, agreement with the SavedModel, latency and its verdict.
"""

from __future__ import annotations

import re

from absl import app, flags

from ecg_tfx.core import storage
from ecg_tfx.serving.exporter import REPORT_FILE, export_run
from ecg_tfx.serving.precision import COMPUTE_DTYPES
from ecg_tfx.serving.tflite import summary_lines
from ecg_tfx.serving.tflite_flags import TFLITE_VARIANTS

_RUN_DIR = flags.DEFINE_list("run_dir", None, "Training run folder (model.keras, model_spec.json), or a "
                             "comma-separated list of runs of one task (one model spec): their seed ensemble.")
_EXPORT_DIR = flags.DEFINE_string("export_dir", None, "Base folder; the model goes to <export_dir>/<model_name>/<N>.")
_MODEL_NAME = flags.DEFINE_string("model_name", "ecg", "Model name (TF Serving's model folder).")
_VERSION = flags.DEFINE_integer("version", None, "Version number; default: the next free one.", lower_bound=1)
_TFLITE = flags.DEFINE_bool("tflite", False, "Also write the TFLite variants (float32, float16, dynamic_range, "
                            "int8, int8_body, int16x8; one not usable is named so) and export_report.json.")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "Converted TFRecords: representative (train) and agreement "
                                "(test) windows for --tflite; its validation split fits the decision of an "
                                "ensemble (or of a run without decision.json).")
_COMPUTE_DTYPE = flags.DEFINE_enum("compute_dtype", "float32", COMPUTE_DTYPES,
                                   "The SavedModel's compute dtype: float32 runs on every CPU and GPU; bfloat16 "
                                   "(CPUs with AVX-512 BF16/AMX, TPUs) or float16 (GPUs) need a run trained under a "
                                   "mixed policy. TFLite models always compute in float32 (or integers).")
flags.mark_flags_as_required(["run_dir", "export_dir"])
flags.register_validator("model_name", lambda name: bool(re.fullmatch(r"[A-Za-z0-9_.-]+", name)),
                         "--model_name may hold only letters, digits, '_', '.' and '-'")
flags.register_multi_flags_validator(["tflite", "data_dir"], lambda f: not f["tflite"] or bool(f["data_dir"]),
                                     "--tflite needs --data_dir (representative and agreement windows)")


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    path = export_run(_RUN_DIR.value, _EXPORT_DIR.value, _MODEL_NAME.value, _VERSION.value, _TFLITE.value,
                      _DATA_DIR.value, _COMPUTE_DTYPE.value, tflite_variants=TFLITE_VARIANTS.value)
    print(f"wrote {path}")
    if _TFLITE.value:
        print("\n".join(summary_lines(storage.read_json(storage.join(path, REPORT_FILE)))))


if __name__ == "__main__":
    storage.run_app(main)
