"""Export of a training run: `<export_dir>/<model_name>/<version>/` as TF Serving expects it, whole or not at all.

The version holds the SavedModel (`saved_model.pb`, `variables/`, `assets/labels.txt`,
`assets.extra/tf_serving_warmup_requests`), the model card (`assets.extra/model_card.{md,json}`) and, with
`tflite`, `tflite/` (TFLite variants named by verdict, their `model_spec.json`, `input_contract.json` and
`decision.json`) and `export_report.json`. Whatever precision policy the run trained
under, the TFLite models compute in float32 (or integers) and the SavedModel in `compute_dtype`, float32 by default
(see `ecg_tfx.serving.precision`). It is written under a hidden temporary sibling (TF Serving ignores non-integer
names) and moved into place only when everything succeeded, so a local version directory is always whole; on
gs:// and s3:// (no folder rename) `saved_model.pb` is copied last.

Several run folders of one task (same ModelSpec) export as one seed ensemble: one preprocessing, the members'
networks side by side, the mean of their probabilities (`ecg_tfx.models.ensemble`), with every signature.

The served decision (calibration, thresholds, abstention: `ecg_tfx.evaluation.decision`) is the run's
`decision.json`, fitted on validation when training ended. An ensemble, or a run folder without one (trained
before it existed), gets it fitted on `data_dir`'s validation split now (an ensemble's on its own mean
probabilities), or, without `data_dir`, exports with the defaults (no calibration, argmax / 0.5, no abstention),
logged and stated in the model card.
"""

from __future__ import annotations

from collections.abc import Sequence

import keras
from absl import logging

from ecg_tfx.core import storage
from ecg_tfx.core.manifest import Manifest
from ecg_tfx.core.model_spec import ModelSpec
from ecg_tfx.core.run_folder import RunFolder
from ecg_tfx.evaluation.decision import Decision
from ecg_tfx.evaluation.evaluate import fit_decision
from ecg_tfx.models.ensemble import average, load_runs
from ecg_tfx.serving.model_card import write_model_card
from ecg_tfx.serving.precision import with_compute_dtype
from ecg_tfx.serving.saved_model import write_saved_model
from ecg_tfx.serving.tflite import MIN_AGREEMENT_WINDOWS, REPORT_FILE, VARIANTS, check_variants, write_tflite
from ecg_tfx.serving.versions import next_version


def run_decision(run_dirs: Sequence[str], model: keras.Model, spec: ModelSpec, data_dir: str | None) -> Decision:
    """The served decision: a single run's fitted `decision.json`; for an ensemble (whose members' decisions do not
    apply to their mean) or an older run, one fitted now on `data_dir`'s validation split; else the defaults."""
    path = RunFolder(run_dirs[0]).decision
    if len(run_dirs) == 1 and storage.exists(path):
        return Decision.load(path)
    what = f"an ensemble of {len(run_dirs)} runs" if len(run_dirs) > 1 else f"{run_dirs[0]} has no decision.json"
    if data_dir:
        logging.info("%s: fitting its decision on the validation split of %s", what, data_dir)
        return fit_decision(model, spec, data_dir, Manifest.load(data_dir))
    logging.warning("%s and no data_dir was given: exporting the defaults (uncalibrated, argmax / 0.5, "
                    "no abstention)", what)
    return Decision.default(len(spec.labels), spec.multi_label)


def export_run(run_dirs: str | Sequence[str], export_dir: str, model_name: str = "ecg", version: int | None = None,
               tflite: bool = False, data_dir: str | None = None, compute_dtype: str = "float32",
               min_agreement_windows: int = MIN_AGREEMENT_WINDOWS, tflite_variants: Sequence[str] = VARIANTS) -> str:
    """Exports a training run, or a seed ensemble of several (`run_dirs`: one folder or a list; one SavedModel
    serving the mean of their probabilities, `models.ensemble`), to `<export_dir>/<model_name>/<version>/`, whole
    or not at all; returns that path.

    The SavedModel computes in `compute_dtype` ('float32', or 'bfloat16'/'float16' for a run trained under a mixed
    policy, for serving hardware with those units). `tflite` also writes the float32-compute TFLite models and
    `export_report.json` (`tflite_variants` of them), using `data_dir`'s train split to calibrate int8 and its test
    split to measure agreement with the SavedModel. `data_dir` also fits the decision of an ensemble or of a run
    without one and fills the model card's data.
    """
    run_dirs = [run_dirs] if isinstance(run_dirs, str) else list(run_dirs)
    if tflite and not data_dir:
        raise ValueError("tflite export needs data_dir for representative and agreement windows")
    check_variants(tflite_variants)
    for path in (*run_dirs, export_dir, data_dir or ""):
        storage.enable_filesystem(path)
    trained, spec = load_runs(run_dirs)
    model = average([with_compute_dtype(member, "float32") for member in trained])
    decision = run_decision(run_dirs, model, spec, data_dir)
    served = model if compute_dtype == "float32" else average(
        [with_compute_dtype(member, compute_dtype) for member in trained])
    model_dir = storage.join(export_dir, model_name)
    version = version or next_version(model_dir)
    final = storage.join(model_dir, str(version))
    if storage.exists(final):
        raise FileExistsError(f"{final} exists; choose another --version or leave it out for the next free one")
    storage.makedirs(model_dir)
    tmp = storage.temporary_name(final)
    try:
        write_saved_model(served, spec, decision, tmp, model_name)
        write_model_card(tmp, spec, decision, run_dirs, data_dir)
        if tflite:
            report = {"runs": run_dirs, **write_tflite(model, spec, decision, tmp, data_dir, min_agreement_windows,
                                                                tflite_variants)}
            report["saved_model"]["compute_dtype"] = compute_dtype
            storage.write_json(storage.join(tmp, REPORT_FILE), report)
        storage.publish_dir(tmp, final)
    except BaseException:
        if storage.exists(tmp):
            storage.remove(tmp)
        raise
    logging.info("exported %s", final)
    return final
