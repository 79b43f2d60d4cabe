"""The PTB Diagnostic ECG Database source.

PhysioNet layout: `RECORDS` lists `patientNNN/<record>` paths; each record is a header `.hea` plus data files
(`.dat` with the 12 standard leads, optionally `.xyz` with the 3 Frank leads). The diagnosis is the header comment
`Reason for admission: ...`. Records are read with `wfdb_io`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Sequence

from ecg_tfx.core.records import Record, RecordError, RecordRef, canonical_lead
from ecg_tfx.data.sources import SourceError
from ecg_tfx.data.wfdb_io import available_channels, read_header, read_wfdb_record

_REASON = re.compile(r"^\s*reason for admission\s*:(.*)$", re.IGNORECASE | re.DOTALL)
# Data files a PTB record may lack: the Frank leads (.xyz) are absent from some copies of the database.
_PTB_OPTIONAL_SUFFIXES = (".xyz",)


def reason_for_admission(comments: Sequence[str]) -> str | None:
    """The whitespace-normalized `Reason for admission` header comment, or None if absent or empty."""
    for comment in comments:
        match = _REASON.match(comment)
        if match:
            return " ".join(match.group(1).split()) or None
    return None


class PTBSource:
    """PTB Diagnostic ECG Database in PhysioNet layout; labels = (reason for admission,)."""

    name = "ptb"

    def __init__(self, root: str):
        self.root = root

    def refs(self, map_records: Callable = map) -> tuple[list[RecordRef], list[RecordError]]:
        """Lists every record in RECORDS from its header alone, parsing the headers with `map_records` (the builtin
        map, or a process pool's imap); broken headers go to the failures list."""
        refs, failures = [], []
        for listed in map_records(self.ref_or_error, self._record_lines()):
            (failures if isinstance(listed, RecordError) else refs).append(listed)
        return sorted(refs, key=lambda ref: ref.record_id), failures

    def ref_or_error(self, line: str) -> RecordRef | RecordError:
        """The ref of one RECORDS line, or the RecordError that says why its header is unusable."""
        try:
            return self._ref(line)
        except RecordError as err:
            return err

    def load(self, ref: RecordRef) -> Record:
        """Reads the available leads of one record (12 standard, plus Frank leads when `.xyz` exists)."""
        return read_wfdb_record(ref, _PTB_OPTIONAL_SUFFIXES)

    def _record_lines(self) -> list[str]:
        if not os.path.isdir(self.root):
            raise SourceError(f"PTB root {self.root!r} is not a directory")
        index = os.path.join(self.root, "RECORDS")
        if not os.path.isfile(index):
            raise SourceError(f"PTB root {self.root!r} has no RECORDS index file")
        with open(index, encoding="utf-8") as f:
            lines = [line.strip() for line in f if line.strip()]
        if not lines:
            raise SourceError(f"PTB index {index} lists no records")
        return lines

    def _ref(self, line: str) -> RecordRef:
        path = os.path.join(self.root, line)
        patient, _, record = line.partition("/")
        if not record:
            raise RecordError(path, f"RECORDS line {line!r} does not name a patient folder")
        header = read_header(path)
        reason = reason_for_admission(header.comments or [])
        if reason is None:
            raise RecordError(path, "header has no 'Reason for admission' comment")
        channels = available_channels(header, path, _PTB_OPTIONAL_SUFFIXES)
        return RecordRef(
            record_id=line,
            patient_id=patient,
            labels=(reason,),
            leads=tuple(canonical_lead(header.sig_name[i]) for i in channels),
            sample_rate_hz=float(header.fs),
            duration_s=header.sig_len / header.fs,
            path=path,
            header=header,
        )
