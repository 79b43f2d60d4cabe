"""Diagnoses ECG files with an exported model (SavedModel or TFLite).

    python -m ecg_tfx.predict --model=exports/ecg/1 records/s0010_re.hea
    python -m ecg_tfx.predict --model=exports/ecg/1 --sample_rate=500 --units=mV ecg.csv
    python -m ecg_tfx.predict --model=exports/ecg/1/tflite/model_float32.tflite --sample_rate=500 --units=mV \\
        --leads=i,ii,iii,avr,avl,avf,v1,v2,v3,v4,v5,v6 --top_k=3 --json ecg.npy

Prints, per file, the decision the export makes (`serving_default`'s, for a SavedModel and a TFLite model alike):
the present classes (multi-label: those at or above their fitted thresholds; single-label: the argmax), "none",
or "inconclusive" with its reason (low_confidence, or poor_signal from the signal-quality gate), the decision's
confidence, the gate's heart rate and bad leads, and the top-k classes by calibrated probability.

Inputs: WFDB records (the `.hea` path; rate, lead names and units come from the header), CSV (a header row of lead
names, one column per lead; `--sample_rate` and `--units` required) and `.npy` ([time, leads]; `--sample_rate`,
`--units` and `--leads` required). Leads are matched to the model's by name; rate and units are never guessed.
A TFLite model that its export report does not call usable is refused unless `--allow_unusable` is given; without
the report beside it, so is one whose file name says it (`model_<variant>_unusable.tflite`, `..._not_measured`).
"""

from __future__ import annotations

import json
import sys

from absl import app, flags

from ecg_tfx.core import storage
from ecg_tfx.serving.contract import ContractError
from ecg_tfx.serving.predictors import InputError, diagnose, load_predictor

_MODEL = flags.DEFINE_string("model", None, "A SavedModel version folder (or its model folder: newest version) "
                                            "or a .tflite file written by ecg_tfx.export.")
_SAMPLE_RATE = flags.DEFINE_float("sample_rate", None, "Sample rate in Hz of CSV and .npy inputs.", lower_bound=1)
_LEADS = flags.DEFINE_list("leads", None, "Comma-separated lead names of the .npy columns, or standard12.")
_UNITS = flags.DEFINE_enum("units", None, ["mV", "uV", "V"], "Units of CSV and .npy samples.")
_TOP_K = flags.DEFINE_integer("top_k", 3, "How many classes to list per record.", lower_bound=1)
_JSON = flags.DEFINE_bool("json", False, "Print one JSON document instead of text.")
_ALLOW_UNUSABLE = flags.DEFINE_bool("allow_unusable", False, "Use a TFLite model even though its export report (or, "
                                    "without one beside it, its file name) does not call it usable (it disagrees "
                                    "with the SavedModel, or was not measured).")

flags.mark_flag_as_required("model")


def format_text(result: dict) -> str:
    """Three lines per file: the export's decision (with why, when inconclusive), the quality gate, the top-k."""
    why = f"{result['reason']}; " if result["reason"] else ""
    ranked = ", ".join(f"{entry['class']} {entry['probability']:.3f}" for entry in result["top_k"])
    rate = "no heart rate" if result["heart_rate_bpm"] is None else f"heart rate {result['heart_rate_bpm']:.0f} bpm"
    verdict = "unreadable" if result["signal_unreadable"] else "readable"
    return (f"{result['file']}: {result['decision']} ({why}confidence {result['confidence']:.3f}; "
            f"{result['duration_s']:.1f} s at {result['sample_rate_hz']:g} Hz)\n"
            f"  signal {verdict}: {rate}, bad leads: {','.join(result['bad_leads']) or 'none'} "
            f"(quality gate {result['quality_gate']})\n"
            f"  top {len(result['top_k'])}: {ranked}")


def main(argv: list[str]) -> None:
    files = argv[1:]
    if not files:
        raise app.UsageError("give one or more ECG files (.hea, .csv or .npy)")
    try:
        predictor = load_predictor(_MODEL.value, _ALLOW_UNUSABLE.value)
    except (InputError, OSError) as error:
        sys.exit(f"error: {error}")
    results, failed = [], 0
    for path in files:
        try:
            result = diagnose(predictor, path, _TOP_K.value, sample_rate=_SAMPLE_RATE.value, leads=_LEADS.value,
                              units=_UNITS.value)
        except (InputError, ContractError, OSError) as error:
            print(f"error: {path}: {error}", file=sys.stderr)
            failed += 1
            continue
        results.append(result)
        if not _JSON.value:
            print(format_text(result))
    if _JSON.value:
        print(json.dumps(results, indent=2))
    if failed:
        sys.exit(1)


if __name__ == "__main__":
    storage.run_app(main)
