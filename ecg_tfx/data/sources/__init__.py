"""Record sources. Each source lists cheap `RecordRef`s and loads one `Record` at a time.

A source is a small picklable object (it crosses process boundaries to the conversion workers):

    refs(map_records=map) -> (list[RecordRef], list[RecordError])   every readable record sorted by record_id,
                                  and the records whose metadata is broken; raises SourceError on a bad folder.
                                  A source that reads a file per record (PTB's headers) maps that work with
                                  `map_records` (the converter passes its worker pool's `imap`)
    load(ref) -> Record           the signal in mV; raises RecordError(path, reason) on a broken record
"""

from __future__ import annotations


class SourceError(ValueError):
    """The source as a whole cannot be read (missing or empty folder, missing index file)."""
