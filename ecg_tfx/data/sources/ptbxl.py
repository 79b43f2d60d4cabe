"""The PTB-XL source: listing from `ptbxl_database.csv`, labels = diagnostic superclasses, signals via wfdb.

Listing reads only the two CSVs (no header per record): labels live in the CSV, and the 21 799 headers of the full
database would cost a file open each.
"""

from __future__ import annotations

import ast
import csv
import os
from collections.abc import Callable

from ecg_tfx.core.records import STANDARD12, Record, RecordError, RecordRef
from ecg_tfx.data.sources import SourceError
from ecg_tfx.data.wfdb_io import read_wfdb_record

DATABASE_CSV = "ptbxl_database.csv"
STATEMENTS_CSV = "scp_statements.csv"
_FILENAME_COLUMN = {500: "filename_hr", 100: "filename_lr"}
_DATABASE_COLUMNS = ("ecg_id", "patient_id", "scp_codes", "strat_fold", "filename_hr", "filename_lr")
_STATEMENT_COLUMNS = ("diagnostic", "diagnostic_class")
RECORD_DURATION_S = 10.0


def _parse_int(text: str | None, column: str) -> int:
    """Parses an integral CSV value that may be written as a float ('15709.0')."""
    try:
        value = float(text or "")
    except ValueError:
        raise ValueError(f"{column} {text!r} is not a number") from None
    if not value.is_integer():
        raise ValueError(f"{column} {text!r} is not an integer")
    return int(value)


def _read_csv(path: str, columns: tuple[str, ...]) -> list[dict[str, str]]:
    """Reads a CSV as dicts, raising SourceError if it is missing or lacks a needed column."""
    if not os.path.isfile(path):
        raise SourceError(f"PTB-XL file {path} is missing")
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = [c for c in columns if c not in (reader.fieldnames or [])]
        if missing:
            raise SourceError(f"{path} lacks the columns {missing}")
        return list(reader)


def diagnostic_superclasses(statements_path: str) -> dict[str, str]:
    """Maps every diagnostic SCP code (diagnostic == 1) to its superclass (diagnostic_class)."""
    mapping = {}
    for row in _read_csv(statements_path, _STATEMENT_COLUMNS):
        code = (next(iter(row.values())) or "").strip()  # the code is the first (unnamed index) column
        flag = (row["diagnostic"] or "").strip()
        try:
            diagnostic = bool(flag) and float(flag) == 1
        except ValueError:
            raise SourceError(f"{statements_path}: code {code!r} has diagnostic flag {flag!r}") from None
        if code and diagnostic and (row["diagnostic_class"] or "").strip():
            mapping[code] = row["diagnostic_class"].strip()
    return mapping


class PTBXLSource:
    """PTB-XL at 500 Hz (`records500`) or 100 Hz (`records100`); fold = strat_fold."""

    name = "ptbxl"

    def __init__(self, root: str, resolution: int = 500):
        if resolution not in _FILENAME_COLUMN:
            raise ValueError(f"resolution must be one of {sorted(_FILENAME_COLUMN)}, not {resolution}")
        self.root = root
        self.resolution = resolution

    def refs(self, map_records: Callable = map) -> tuple[list[RecordRef], list[RecordError]]:
        """Lists every CSV row; a malformed row goes to the failures list, the rest go on. The CSV is read in this
        process, so `map_records` is not used."""
        if not os.path.isdir(self.root):
            raise SourceError(f"PTB-XL root {self.root!r} is not a directory")
        superclass = diagnostic_superclasses(os.path.join(self.root, STATEMENTS_CSV))
        database = os.path.join(self.root, DATABASE_CSV)
        refs, failures = [], []
        for row_number, row in enumerate(_read_csv(database, _DATABASE_COLUMNS), start=1):
            try:
                refs.append(self._ref(row, superclass))
            except (ValueError, SyntaxError, TypeError, AttributeError) as err:
                failures.append(RecordError(f"{database} data row {row_number}", f"malformed row: {err}"))
        return sorted(refs, key=lambda ref: ref.record_id), failures

    def load(self, ref: RecordRef) -> Record:
        """Reads the 12 leads of one record, in mV."""
        return read_wfdb_record(ref)

    def _ref(self, row: dict[str, str], superclass: dict[str, str]) -> RecordRef:
        filename = (row[_FILENAME_COLUMN[self.resolution]] or "").strip()
        if not filename:
            raise ValueError(f"empty {_FILENAME_COLUMN[self.resolution]}")
        codes = ast.literal_eval(row["scp_codes"] or "")
        if not isinstance(codes, dict):
            raise ValueError(f"scp_codes {row['scp_codes']!r} is not a dict")
        return RecordRef(
            record_id=f"{_parse_int(row['ecg_id'], 'ecg_id'):05d}",
            patient_id=str(_parse_int(row["patient_id"], "patient_id")),
            labels=tuple(sorted({superclass[code] for code in codes if code in superclass})),
            leads=STANDARD12,
            sample_rate_hz=float(self.resolution),
            duration_s=RECORD_DURATION_S,
            path=os.path.join(self.root, filename),
            fold=_parse_int(row["strat_fold"], "strat_fold"),
        )
