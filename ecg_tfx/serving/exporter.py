"""Export of a training run: `<export_dir>/<model_name>/<version>/` as TF Serving expects it, whole or not at all.

The version holds the SavedModel (`saved_model.pb`, `variables/`, `assets/labels.txt`,
`assets.extra/tf_serving_warmup_requests`), the model card (`assets.extra/model_card.{md,json}`) and, with
`tflite`, `tflite/` (TFLite variants named by verdict, their `model_spec.json`, `input_contract.json` and
`decision.json`) and `export_report.json`. Whatever precision policy the run trained
under, the TFLite models compute in float32 (or integers) and the SavedModel in `compute_dtype`, float32 by default
(see `ecg_tfx.serving.precision`). It is written under a hidden temporary sibling (TF Serving ignores non-integer
names) and moved into place only when everything succeeded, so a local version directory is always whole; on
gs:// and s3:// (no folder rename) `saved_model.pb` is copied last.

The served decision (calibration, thresholds, abstention: `ecg_tfx.evaluation.decision`) is the run's
`decision.json`, fitted on validation when training ended. A run folder without one (trained before it existed)
gets it fitted on `data_dir`'s validation split now, or, without `data_dir`, exports with the defaults (no
calibration, argmax / 0.5, no abstention), logged and stated in the model card.
"""

from __future__ import annotations

import keras
import tensorflow as tf
from absl import logging

from ecg_tfx.core import storage
from ecg_tfx.core.manifest import Manifest
from ecg_tfx.core.model_spec import ModelSpec
from ecg_tfx.core.run_folder import RunFolder
from ecg_tfx.evaluation.decision import Decision
from ecg_tfx.evaluation.evaluate import fit_decision
from ecg_tfx.serving.model_card import write_model_card
from ecg_tfx.serving.precision import with_compute_dtype
from ecg_tfx.serving.saved_model import write_saved_model
from ecg_tfx.serving.tflite import MIN_AGREEMENT_WINDOWS, REPORT_FILE, write_tflite
from ecg_tfx.serving.versions import next_version


def load_run(run_dir: str) -> tuple[keras.Model, ModelSpec]:
    """The run's Keras model and ModelSpec, checked against each other."""
    spec = ModelSpec.load(run_dir)
    model = keras.saving.load_model(RunFolder(run_dir).model, compile=False)
    if model.output_shape[-1] != len(spec.labels):
        raise ValueError(f"{run_dir}: the model has {model.output_shape[-1]} outputs but the spec "
                         f"{len(spec.labels)} labels")
    if model.input_shape[-1] != len(spec.leads):
        raise ValueError(f"{run_dir}: the model takes {model.input_shape[-1]} leads, the spec names {len(spec.leads)}")
    return model, spec


def run_decision(run_dir: str, model: keras.Model, spec: ModelSpec, data_dir: str | None) -> Decision:
    """The run's fitted decision; for older runs fitted on `data_dir`'s validation split, else the defaults."""
    path = RunFolder(run_dir).decision
    if tf.io.gfile.exists(path):
        return Decision.load(path)
    if data_dir:
        logging.info("%s has no decision.json: fitting one on the validation split of %s", run_dir, data_dir)
        return fit_decision(model, spec, data_dir, Manifest.load(data_dir))
    logging.warning("%s has no decision.json and no data_dir was given: exporting the defaults (uncalibrated, "
                    "argmax / 0.5, no abstention)", run_dir)
    return Decision.default(len(spec.labels), spec.multi_label)


def export_run(run_dir: str, export_dir: str, model_name: str = "ecg", version: int | None = None,
               tflite: bool = False, data_dir: str | None = None, compute_dtype: str = "float32",
               min_agreement_windows: int = MIN_AGREEMENT_WINDOWS) -> str:
    """Exports a training run to `<export_dir>/<model_name>/<version>/`, whole or not at all; returns that path.

    The SavedModel computes in `compute_dtype` ('float32', or 'bfloat16'/'float16' for a run trained under a mixed
    policy, for serving hardware with those units). `tflite` also writes the float32-compute TFLite models and
    `export_report.json`, using `data_dir`'s train split to calibrate int8 and its test split to measure agreement
    with the SavedModel. `data_dir` also fits the decision of a run without one and fills the model card's data.
    """
    if tflite and not data_dir:
        raise ValueError("tflite export needs data_dir for representative and agreement windows")
    for path in (run_dir, export_dir, data_dir or ""):
        storage.enable_filesystem(path)
    trained, spec = load_run(run_dir)
    model = with_compute_dtype(trained, "float32")
    decision = run_decision(run_dir, model, spec, data_dir)
    served = model if compute_dtype == "float32" else with_compute_dtype(trained, compute_dtype)
    model_dir = storage.join(export_dir, model_name)
    version = version or next_version(model_dir)
    final = storage.join(model_dir, str(version))
    if tf.io.gfile.exists(final):
        raise FileExistsError(f"{final} exists; choose another --version or leave it out for the next free one")
    tf.io.gfile.makedirs(model_dir)
    tmp = storage.temporary_name(final)
    try:
        write_saved_model(served, spec, decision, tmp, model_name)
        write_model_card(tmp, spec, decision, run_dir, data_dir)
        if tflite:
            report = write_tflite(model, spec, decision, tmp, data_dir, min_agreement_windows)
            report["saved_model"]["compute_dtype"] = compute_dtype
            storage.write_json(storage.join(tmp, REPORT_FILE), report)
        storage.publish_dir(tmp, final)
    except BaseException:
        if tf.io.gfile.exists(tmp):
            tf.io.gfile.rmtree(tmp)
        raise
    logging.info("exported %s", final)
    return final
