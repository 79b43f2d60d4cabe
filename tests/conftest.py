"""Shared fixtures: the real recordings in ../shared/data (skipped with a clear reason when absent), and a tiny
conversion, trained run and export made once per test run for the tests of every later stage."""

from __future__ import annotations

import fcntl
import importlib.metadata
import os
import pathlib
import shutil
from collections.abc import Callable, Iterator

import keras
import pytest

from ecg_tfx.core.manifest import Manifest
from ecg_tfx.core.model_spec import ModelSpec
from ecg_tfx.core.run_folder import RunFolder
from ecg_tfx.data import conversion, input_pipeline
from ecg_tfx.models import build_model
from ecg_tfx.serving import tflite
from ecg_tfx.serving.exporter import export_run
from ecg_tfx.serving.servables import Servable

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
# The pinned stack (constraints.txt) rather than the current one (constraints-current.txt, what Colab installs).
ON_PINNED_STACK = f"tensorflow=={importlib.metadata.version('tensorflow')}" in (REPO / "constraints.txt").read_text()


def built_once(tmp_path_factory: pytest.TempPathFactory, name: str,
               build: Callable[[pathlib.Path], None]) -> pathlib.Path:
    """The folder `name`, filled by `build` once per test run. Under pytest-xdist every worker has its own session
    fixtures, so each would build it again on the same cores: here the first worker to ask builds it in the run's
    shared temporary folder, holding a file lock, and the others wait for it and reuse it. Tests only read it."""
    if "PYTEST_XDIST_WORKER" not in os.environ:
        folder = tmp_path_factory.mktemp(name)
        build(folder)
        return folder
    root = tmp_path_factory.getbasetemp().parent  # this run's folder, the parent of every worker's own
    folder, done = root / name, root / f"{name}.done"
    with open(root / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if not done.exists():
            shutil.rmtree(folder, ignore_errors=True)  # left by a worker whose build failed
            folder.mkdir()
            build(folder)
            done.touch()
    return folder


def _data_dir(name: str) -> pathlib.Path:
    path = SHARED_DATA / name
    if not path.is_dir():
        pytest.skip(f"real data {path} is not present (it lives beside the repository in ../shared/data)")
    return path


@pytest.fixture(scope="session")
def ptb_dir() -> pathlib.Path:
    """The 66-record PTB Diagnostic ECG Database subset."""
    return _data_dir("ptbdb")


@pytest.fixture(scope="session")
def ptbxl_dir() -> pathlib.Path:
    """The first 400 PTB-XL records."""
    return _data_dir("ptbxl")


@pytest.fixture(scope="session")
def tiny_conversion(tmp_path_factory: pytest.TempPathFactory) -> tuple[pathlib.Path, Manifest]:
    """40 synthetic 10-s records (20 patients, 5 conditions) at 500 Hz, converted once: (data folder, manifest)."""
    config = conversion.ConversionConfig(synthetic_patients=20, synthetic_records_per_patient=2,
                                         synthetic_duration_s=10)
    data_dir = built_once(tmp_path_factory, "tiny_data", lambda folder: conversion.run(config, str(folder)))
    return data_dir, Manifest.load(str(data_dir))


def _train_tiny_run(tiny_conversion, run_dir: pathlib.Path, seed: int) -> None:
    """The seed CNN on 2.5-s inputs fitted for one epoch from seed `seed`, saved as a run folder (model.keras,
    model_spec.json)."""
    data_dir, manifest = tiny_conversion
    spec = manifest.model_spec("cnn", input_seconds=2.5, eval_stride_seconds=2.5)
    keras.utils.set_random_seed(seed)
    model = build_model("cnn", len(spec.leads), len(spec.labels), False, spec.sample_rate_hz)
    model.compile(optimizer="adam", loss="categorical_crossentropy")
    model.fit(input_pipeline.make_dataset(str(data_dir), manifest, "train", spec, 16, training=False), epochs=1,
              verbose=0)
    model.save(RunFolder(str(run_dir)).model)
    spec.save(str(run_dir))


@pytest.fixture(scope="session")
def tiny_run(tiny_conversion, tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    """A run folder (model.keras, model_spec.json) with the seed CNN on 2.5-s inputs, fitted for one epoch."""
    return built_once(tmp_path_factory, "tiny_run", lambda folder: _train_tiny_run(tiny_conversion, folder, seed=0))


@pytest.fixture(scope="session")
def tiny_run_seed1(tiny_conversion, tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    """`tiny_run` trained from seed 1: with it, a two-member seed ensemble."""
    return built_once(tmp_path_factory, "tiny_run_seed1",
                      lambda folder: _train_tiny_run(tiny_conversion, folder, seed=1))


def _convert_and_train_lead_i(ptbxl_dir: pathlib.Path, folder: pathlib.Path) -> None:
    """`ptbxl_lead_i`'s conversion (folder/data) and run (folder/run)."""
    config = conversion.ConversionConfig(source="ptbxl", input_dir=str(ptbxl_dir), labels="superdiagnostic",
                                         ptbxl_resolution=100, sample_rate=100, leads="I")
    manifest = conversion.run(config, str(folder / "data"))
    spec = manifest.model_spec("features", input_seconds=2.5, eval_stride_seconds=2.5)
    keras.utils.set_random_seed(0)
    model = build_model("features", len(spec.leads), len(spec.labels), True, spec.sample_rate_hz)
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="binary_crossentropy")
    model.fit(input_pipeline.make_dataset(str(folder / "data"), manifest, "train", spec, 64, training=False),
              epochs=5, verbose=0)
    (folder / "run").mkdir()
    model.save(RunFolder(str(folder / "run")).model)
    spec.save(str(folder / "run"))


@pytest.fixture(scope="session")
def ptbxl_lead_i(ptbxl_dir, tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """PTB-XL records 1-400 as `pipelines/ptbxl_lead_i.flags` converts them (superclasses, multi-label, lead I alone,
    100 Hz, folds 1-8 / 9 / 10) and a run of the small `features` model fitted for 5 epochs (~10 s of training on 2
    cores), with no decision.json: data folder, manifest, run folder, spec and the Keras model."""
    folder = built_once(tmp_path_factory, "ptbxl_lead_i", lambda out: _convert_and_train_lead_i(ptbxl_dir, out))
    data_dir, run_dir = folder / "data", folder / "run"
    return {"data": data_dir, "manifest": Manifest.load(str(data_dir)), "run": run_dir,
            "spec": ModelSpec.load(str(run_dir)),
            "model": keras.saving.load_model(RunFolder(str(run_dir)).model, compile=False)}


@pytest.fixture(scope="session", autouse=True)
def quick_tflite_export() -> Iterator[None]:
    """Tests check that TFLite latencies are reported and that the integer variants are calibrated, not the values:
    one timed call each, not LATENCY_RUNS, and 8 calibration windows, not REPRESENTATIVE_WINDOWS (int8 and int16x8
    run the model on each of them, most of a tiny export's time)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(tflite, "LATENCY_RUNS", 1)
        patch.setattr(tflite, "REPRESENTATIVE_WINDOWS", 8)
        yield


@pytest.fixture(scope="session")
def tiny_export(tiny_conversion, tiny_run, tmp_path_factory: pytest.TempPathFactory) -> dict[str, pathlib.Path]:
    """The tiny run exported with TFLite: its data, run, export base and version folders. Its test split has 4
    windows, so the TFLite verdicts count from 1 window (a real export asks for `tflite.MIN_AGREEMENT_WINDOWS`)."""
    data_dir, _ = tiny_conversion
    export_dir = built_once(tmp_path_factory, "tiny_export", lambda folder: export_run(
        str(tiny_run), str(folder), "ecg", tflite=True, data_dir=str(data_dir), min_agreement_windows=1))
    return {"data": data_dir, "run": tiny_run, "export_dir": export_dir, "version": export_dir / "ecg" / "1"}


@pytest.fixture(scope="session")
def tiny_spec(tiny_export) -> ModelSpec:
    """The tiny run's model spec."""
    return ModelSpec.load(str(tiny_export["run"]))


@pytest.fixture(scope="session")
def tiny_servable(tiny_export) -> Servable:
    """The tiny export loaded once, unbatched, as the server loads a version."""
    return Servable.load(str(tiny_export["version"]), 1)


@pytest.fixture(scope="session")
def tiny_ensemble_export(tiny_conversion, tiny_run, tiny_run_seed1,
                         tmp_path_factory: pytest.TempPathFactory) -> dict[str, pathlib.Path | list[pathlib.Path]]:
    """The seed ensemble of `tiny_run` and `tiny_run_seed1` exported with its float32 and dynamic-range TFLite
    models (the calibrated variants are tested on `tiny_export`), its decision fitted on the tiny validation split:
    its data, runs and version folder."""
    data_dir, _ = tiny_conversion
    runs = [tiny_run, tiny_run_seed1]

    def build(folder: pathlib.Path) -> None:
        export_run([str(run) for run in runs], str(folder), "ecg", tflite=True, data_dir=str(data_dir),
                   min_agreement_windows=1, tflite_variants=("float32", "dynamic_range"))

    export_dir = built_once(tmp_path_factory, "tiny_ensemble_export", build)
    return {"data": data_dir, "runs": runs, "version": export_dir / "ecg" / "1"}
