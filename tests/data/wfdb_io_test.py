"""Reading WFDB records from a parsed header: the samples are exactly what `wfdb.rdrecord` reads (the parse count is
in sources_test)."""

from __future__ import annotations

import pathlib

import numpy as np
import wfdb

from ecg_tfx.data.sources.ptb import PTBSource
from ecg_tfx.data.sources.ptbxl import PTBXLSource

# 15 leads (with the Frank .xyz file), 12 leads (.xyz missing), and a short record.
PTB_RECORDS = ("patient001/s0010_re", "patient002/s0015lre", "patient200/s0405_re")


def rdrecord_mv(path: str, channels: int) -> np.ndarray:
    return wfdb.rdrecord(path, channels=list(range(channels))).p_signal.astype(np.float32)


def test_ptb_samples_equal_rdrecords_from_the_listings_header(ptb_dir: pathlib.Path):
    refs = {ref.record_id: ref for ref in PTBSource(str(ptb_dir)).refs()[0]}
    leads = set()
    for record_id in PTB_RECORDS:
        ref = refs[record_id]
        assert ref.header is not None, "the listing keeps its parsed header for loading"
        record = PTBSource(str(ptb_dir)).load(ref)
        leads.add(len(record.leads))
        np.testing.assert_array_equal(record.signal, rdrecord_mv(ref.path, len(record.leads)))
    assert leads == {12, 15}


def test_ptbxl_samples_equal_rdrecord(ptbxl_dir: pathlib.Path):
    source = PTBXLSource(str(ptbxl_dir))
    for ref in source.refs()[0][:3]:
        assert ref.header is None, "PTB-XL lists from its CSV"
        np.testing.assert_array_equal(source.load(ref).signal, rdrecord_mv(ref.path, 12))
