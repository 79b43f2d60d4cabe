"""Reading ECG files and scoring them with an exported model (SavedModel or TFLite), for `predict`.

Inputs: WFDB records (the `.hea` path; rate, lead names and units come from the header), CSV (a header row of lead
names, one column per lead; the rate and units must be given) and `.npy` ([time, leads]; rate, units and lead
names must be given). Leads are matched to the model's by name (`records.LEAD_ALIASES` spellings included); rate
and units are never guessed. Both predictors check the export's input contract (`contract.py`) before the model or
the resampler sees a recording. Models and inputs may be local paths or URLs (s3://, gs://).
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import tensorflow as tf

from ecg_tfx.core import storage
from ecg_tfx.core.model_spec import ModelSpec, frame
from ecg_tfx.core.records import STANDARD12, RecordError, RecordRef, canonical_lead
from ecg_tfx.data.wfdb_io import available_channels, read_header, read_wfdb_record
from ecg_tfx.dsp.resample import resample
from ecg_tfx.evaluation.decision import Decision
from ecg_tfx.serving.contract import InputContract, check_recording
from ecg_tfx.serving.decide import record_outputs
from ecg_tfx.serving.tflite import DECISION_FILE, USABLE, TFLiteRunner, verdict_in_name, verdict_of
from ecg_tfx.serving.versions import list_versions

TO_MV = {"mV": 1.0, "uV": 1e-3, "V": 1e3}


class InputError(ValueError):
    """An input file cannot be used as given; the message says what to change."""


class UnusableModelError(InputError):
    """A TFLite model its export report (or its file name) does not call usable, loaded without `allow_unusable`."""


@dataclasses.dataclass(frozen=True)
class Recording:
    """One input: float32 mV samples [time, leads] with canonical lead names."""

    signal: np.ndarray
    leads: tuple[str, ...]
    sample_rate_hz: float


def read_recording(path: str, sample_rate: float | None = None, leads: list[str] | None = None,
                   units: str | None = None) -> Recording:
    """Reads a WFDB `.hea`, a CSV or a `.npy` file; what the file does not say must be given, never guessed."""
    extension = os.path.splitext(path)[1].lower()
    if extension == ".hea":
        with storage.local_copy(path, with_siblings=True) as local:
            return _read_wfdb(local, sample_rate)
    if extension not in (".csv", ".npy"):
        raise InputError(f"unknown input type {extension!r}; give a WFDB .hea, a .csv or a .npy file")
    if sample_rate is None:
        raise InputError(f"a {extension} file does not say its sample rate; pass --sample_rate=Hz")
    if units is None:
        raise InputError(f"a {extension} file does not say its units; pass --units=mV (or uV, V)")
    if extension == ".npy" and not leads:
        raise InputError("a .npy file has no lead names; pass --leads=i,ii,... (one per column)")
    with storage.local_copy(path) as local:
        if extension == ".csv":
            signal, names = _read_csv(local)
        else:
            signal, names = np.load(local), list(STANDARD12) if leads == ["standard12"] else leads
    if signal.ndim != 2 or signal.shape[1] != len(names):
        raise InputError(f"samples of shape {signal.shape} do not match {len(names)} leads {names}")
    return Recording((signal * TO_MV[units]).astype(np.float32), tuple(canonical_lead(n) for n in names),
                     sample_rate)


def _read_wfdb(path: str, sample_rate: float | None) -> Recording:
    record_path = path[: -len(".hea")]
    try:
        header = read_header(record_path)
        channels = available_channels(header, record_path, optional_suffixes=(".xyz",))
        leads = tuple(canonical_lead(header.sig_name[i]) for i in channels)
        ref = RecordRef(record_id=record_path, patient_id="", labels=(), leads=leads, sample_rate_hz=header.fs,
                        duration_s=header.sig_len / header.fs, path=record_path, header=header)
        record = read_wfdb_record(ref, optional_suffixes=(".xyz",))
    except RecordError as error:
        raise InputError(str(error)) from None
    if sample_rate is not None and sample_rate != record.sample_rate_hz:
        raise InputError(f"the header says {record.sample_rate_hz} Hz but --sample_rate={sample_rate}; "
                         "leave --sample_rate out for WFDB records")
    return Recording(record.signal, record.leads, record.sample_rate_hz)


def _read_csv(path: str) -> tuple[np.ndarray, list[str]]:
    with open(path) as f:
        names = [name.strip() for name in f.readline().split(",")]
    if not names or any(not name or _is_number(name) for name in names):
        raise InputError(f"the first row must name the leads (e.g. I,II,V1), got {names}")
    signal = np.loadtxt(path, delimiter=",", skiprows=1, dtype=np.float64, ndmin=2)
    return signal, names


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def match_leads(recording: Recording, model_leads: tuple[str, ...]) -> np.ndarray:
    """The recording's columns in the model's lead order; extra leads are dropped, missing ones are an error."""
    index = {name: i for i, name in enumerate(recording.leads)}
    missing = [name for name in model_leads if name not in index]
    if missing:
        raise InputError(f"the model needs leads {','.join(missing)}, which the input lacks "
                         f"(it has {','.join(recording.leads)})")
    return recording.signal[:, [index[name] for name in model_leads]]


class SavedModelPredictor:
    """The `serving_default` signature of an exported SavedModel: calibration, quality gate and decision in-graph."""

    quality_gate = "in the SavedModel"

    def __init__(self, path: str):
        self.model = tf.saved_model.load(path)
        metadata = self.model.metadata()
        self.labels = tuple(name.decode() for name in metadata["class_names"].numpy())
        self.leads = tuple(name.decode() for name in metadata["leads"].numpy())
        self.contract = InputContract.loads(metadata["input_contract_json"].numpy().decode())

    def __call__(self, signal: np.ndarray, sample_rate_hz: float) -> dict[str, np.ndarray]:
        """[time, model leads] mV -> `decide.record_outputs` of the recording, batch dimension dropped."""
        rate = check_recording(self.contract, signal, sample_rate_hz)
        outputs = self.model.signatures["serving_default"](
            ecg=tf.constant(signal[None], tf.float32), sample_rate=tf.constant([rate], tf.float32))
        return {name: value.numpy()[0] for name, value in outputs.items()}


class TFLitePredictor:
    """A TFLite window model. Resampling and windowing run here as in `serving_default` (the same TF ops), and
    the record's answer is `decide.record_outputs` of the mean window output with the export's
    `tflite/decision.json`: the same calibration, thresholds, abstention and quality gate as the SavedModel (the
    gate runs here in TensorFlow; the TFLite file holds only the window model).

    A model whose `export_report.json` entry is not 'usable' (too little agreement with the SavedModel, a failed
    interpreter, too few windows to tell), or without that report one whose file name says so
    (`tflite.tflite_file_name`), is refused unless `allow_unusable`.
    """

    quality_gate = "run by predict (the TFLite model has no gate)"

    def __init__(self, path: str, allow_unusable: bool = False):
        # The report, or where it is not beside the model (a tflite/ folder copied alone, or an object-store export
        # still being copied), the verdict the file's name carries.
        entry = verdict_of(path)
        verdict, source = ((entry["verdict"], f"its export report ({entry['reason']})") if entry else
                           (verdict_in_name(path) or USABLE, "its file name (no export report beside it names it)"))
        if verdict != USABLE and not allow_unusable:
            raise UnusableModelError(f"{path} is flagged {verdict.upper()} by {source}; "
                                     "pass --allow_unusable to use it anyway")
        folder = os.path.dirname(path)
        self.spec = ModelSpec.load(folder)
        self.runner = TFLiteRunner(storage.read_bytes(path))
        self.labels, self.leads = self.spec.labels, self.spec.leads
        self.contract = InputContract.load(folder)
        self.decision = Decision.load(storage.join(folder, DECISION_FILE))

    def __call__(self, signal: np.ndarray, sample_rate_hz: float) -> dict[str, np.ndarray]:
        """[time, model leads] mV -> `decide.record_outputs` of the recording, batch dimension dropped."""
        spec = self.spec
        rate = check_recording(self.contract, signal, sample_rate_hz)
        resampled = resample(tf.constant(signal[None], tf.float32), int(rate), spec.sample_rate_hz)
        windows = frame(resampled, spec.window_samples, spec.stride_samples)[0].numpy()
        raw = np.mean([self.runner(window[None])[0] for window in windows], axis=0)
        outputs = record_outputs(tf.constant(raw[None], tf.float32), resampled, spec.sample_rate_hz, self.decision,
                                 tf.constant(self.labels))
        return {name: value.numpy()[0] for name, value in outputs.items()}


def load_predictor(path: str, allow_unusable: bool = False) -> SavedModelPredictor | TFLitePredictor:
    """A predictor for a .tflite file, a SavedModel version folder, or a model folder (its newest version)."""
    storage.enable_filesystem(path)
    if path.endswith(".tflite"):
        return TFLitePredictor(path, allow_unusable)
    if not storage.exists(storage.join(path, "saved_model.pb")):
        versions = list_versions(path)
        if not versions:
            raise InputError(f"{path} is neither a SavedModel, a folder of numbered versions nor a .tflite file")
        path = storage.join(path, str(versions[-1]))
    return SavedModelPredictor(path)


def diagnose(predictor: SavedModelPredictor | TFLitePredictor, path: str, top_k: int, **reading) -> dict:
    """The export's answer for one file: `decision` (the present classes' names, "none", or "inconclusive"),
    `present` (names), `reason` ("", "low_confidence" or "poor_signal"), `confidence`, the signal-quality gate's
    `bad_leads` (names), `heart_rate_bpm` (None when no rate was found) and `signal_unreadable`, and the top-k
    classes by calibrated probability."""
    recording = read_recording(path, **reading)
    outputs = predictor(match_leads(recording, predictor.leads), recording.sample_rate_hz)
    probabilities = outputs["probabilities"]
    order = np.argsort(-probabilities)[:top_k]
    heart_rate = float(outputs["heart_rate_bpm"])
    return {
        "file": path,
        "decision": outputs["decision"].decode(),
        "present": [name for name, present in zip(predictor.labels, outputs["present"]) if present],
        "reason": outputs["reason"].decode(),
        "confidence": float(outputs["confidence"]),
        "top_k": [{"class": predictor.labels[i], "probability": float(probabilities[i])} for i in order],
        "bad_leads": [name for name, bad in zip(predictor.leads, outputs["bad_leads"]) if bad],
        "heart_rate_bpm": heart_rate if np.isfinite(heart_rate) else None,
        "signal_unreadable": bool(outputs["signal_unreadable"]),
        "quality_gate": predictor.quality_gate,
        "sample_rate_hz": recording.sample_rate_hz,
        "duration_s": len(recording.signal) / recording.sample_rate_hz,
    }
