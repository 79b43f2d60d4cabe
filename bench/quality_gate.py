"""False alarms of the signal-quality gate (`ecg_tfx.dsp.quality`) on the shared real records.

    python bench/quality_gate.py            # prints a markdown table (about a minute on 2 busy cores)

Every record is taken as it is: an alarm is a record with a flagged lead or an `unreadable` verdict. PTB-XL's
annotators noted baseline drift, static or burst noise and electrode problems on some records
(`ptbxl_database.csv`); alarms on records without such a note are the false alarms proper.
"""

from __future__ import annotations

import collections
import csv
import pathlib
import sys

import numpy as np
import wfdb

if __package__ in (None, ""):  # run as a script: make `ecg_tfx` importable
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

from ecg_tfx.dsp.quality import CHECKS, signal_quality  # noqa: E402

DATA = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data"
NOTES = ("baseline_drift", "static_noise", "burst_noise", "electrodes_problems")


def alarms(signals: np.ndarray, rate: float) -> list[collections.Counter]:
    """Per record [records, time, leads]: the count of each alarm kind (empty when the record passes)."""
    result = {name: value.numpy() for name, value in signal_quality(signals, rate).items()}
    counts = []
    for index in range(len(signals)):
        kinds = collections.Counter({check: int(result[check][index].sum()) for check in CHECKS})
        kinds["implausible_heart_rate"] = int(result["implausible_heart_rate"][index])
        kinds["unreadable"] = int(result["unreadable"][index])
        counts.append(+kinds)
    return counts


def row(name: str, found: list[collections.Counter], noted: list[bool]) -> str:
    alarmed = [bool(kinds) for kinds in found]
    clean = [alarm for alarm, note in zip(alarmed, noted) if not note]
    kinds = sum(found, collections.Counter())
    detail = ", ".join(f"{kind} {count}" for kind, count in sorted(kinds.items()))
    return (f"| {name} | {len(found)} | {sum(alarmed)} ({sum(alarmed) / len(found):.1%}) | "
            f"{sum(clean)} of {len(clean)} ({sum(clean) / max(len(clean), 1):.1%}) | {detail or '-'} |")


def main() -> None:
    with open(DATA / "ptbxl" / "ptbxl_database.csv", newline="") as file:
        table = list(csv.DictReader(file))
    noted = [any(entry[note].strip() for note in NOTES) for entry in table]
    fold10 = [entry["strat_fold"] == "10" for entry in table]
    lines = ["| records | count | alarms | alarms on records without a noise note | flags (leads; records) |",
             "|---|---|---|---|---|"]
    for column, rate in (("filename_hr", 500.0), ("filename_lr", 100.0)):
        signals = np.stack([wfdb.rdrecord(str(DATA / "ptbxl" / entry[column])).p_signal for entry in table])
        found = alarms(signals.astype(np.float32), rate)
        pick = [index for index, test in enumerate(fold10) if test]
        lines.append(row(f"PTB-XL fold 10, {rate:.0f} Hz", [found[i] for i in pick], [noted[i] for i in pick]))
        lines.append(row(f"PTB-XL 1-400, {rate:.0f} Hz", found, noted))
    names = (DATA / "ptbdb" / "RECORDS").read_text().split()
    found = []
    for name in names:  # one at a time: lengths differ (10 s to 115 s)
        record = wfdb.rdrecord(str(DATA / "ptbdb" / name), channels=list(range(12)))
        found += alarms(record.p_signal[None].astype(np.float32), float(record.fs))
    lines.append(row("PTB subset, 1000 Hz", found, [False] * len(names)))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
