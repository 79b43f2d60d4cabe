"""Reading WFDB records (PhysioNet's format) with the `wfdb` package, shared by the sources and `predict`.

Every read goes through wfdb; this module only adds the checks that turn wfdb's opaque failures (a truncated file
raises "cannot reshape array ...") into a RecordError with a clear reason, and converts samples to mV.
"""

from __future__ import annotations

import copy
import math
import os
from collections.abc import Sequence

import numpy as np
import wfdb
import wfdb.io._signal

from ecg_tfx.core.records import Record, RecordError, RecordRef, canonical_lead

# Bytes per stored sample of WFDB's uncompressed formats (212 packs 2 samples in 3 bytes, 310/311 3 in 4).
_BYTES_PER_SAMPLE = {
    "8": 1.0, "16": 2.0, "24": 3.0, "32": 4.0, "61": 2.0, "80": 1.0, "160": 2.0,
    "212": 1.5, "310": 4 / 3, "311": 4 / 3,
}
# Physical units we accept, as the factor that converts them to millivolts.
_TO_MV = {"mv": 1.0, "uv": 1e-3, "µv": 1e-3, "μv": 1e-3, "v": 1e3}


def read_header(path: str) -> wfdb.Record:
    """Reads a single-segment WFDB header (no samples), raising RecordError if it is missing or garbled, or if two
    signals name one lead (e.g. 'II' and 'MLII', the same lead to `canonical_lead`)."""
    try:
        header = wfdb.rdheader(path)
    except FileNotFoundError:
        raise RecordError(path, f"header file {path}.hea is missing") from None
    except (ValueError, UnicodeDecodeError, IndexError, TypeError) as err:  # wfdb's HeaderSyntaxError is a ValueError
        raise RecordError(path, f"unreadable header {path}.hea: {err}") from None
    if not isinstance(header, wfdb.Record):
        raise RecordError(path, "multi-segment WFDB records are not supported")
    if not header.n_sig or not header.fs or not header.sig_len:
        raise RecordError(path, f"header declares no samples (signals={header.n_sig}, fs={header.fs}, "
                                f"length={header.sig_len})")
    described = len(header.file_name or [])
    if described != header.n_sig:
        raise RecordError(path, f"header declares {header.n_sig} signals but describes {described}")
    names: dict[str, str] = {}
    for name in header.sig_name or []:
        other = names.setdefault(canonical_lead(name), name)
        if other != name or list(header.sig_name).count(name) > 1:
            raise RecordError(path, f"signals {other!r} and {name!r} both name lead {canonical_lead(name)!r}")
    return header


def available_channels(header: wfdb.Record, path: str, optional_suffixes: Sequence[str] = ()) -> list[int]:
    """Indices of the signals whose data file exists.

    A missing data file with one of `optional_suffixes` just drops its signals; any other missing file is an error.
    """
    folder = os.path.dirname(path)
    channels = []
    for index, file_name in enumerate(header.file_name):
        if os.path.isfile(os.path.join(folder, file_name)):
            channels.append(index)
        elif not file_name.endswith(tuple(optional_suffixes)):
            raise RecordError(path, f"data file {os.path.join(folder, file_name)} is missing")
    if not channels:
        raise RecordError(path, "none of the header's data files exists")
    return channels


def _check_file_sizes(header: wfdb.Record, path: str, channels: Sequence[int]) -> None:
    """Raises RecordError if a data file holds fewer bytes than the header's sig_len needs."""
    folder = os.path.dirname(path)
    for file_name in sorted({header.file_name[i] for i in channels}):
        in_file = [i for i, name in enumerate(header.file_name) if name == file_name]
        fmt = header.fmt[in_file[0]]
        if fmt not in _BYTES_PER_SAMPLE:
            continue  # compressed (FLAC) formats: the sample count check after reading still applies
        samples_per_frame = sum((header.samps_per_frame or [1] * header.n_sig)[i] for i in in_file)
        offset = (header.byte_offset or [None] * header.n_sig)[in_file[0]] or 0
        needed = offset + math.ceil(header.sig_len * samples_per_frame * _BYTES_PER_SAMPLE[fmt])
        file_path = os.path.join(folder, file_name)
        size = os.path.getsize(file_path)
        if size < needed:
            frames = max(size - offset, 0) / (samples_per_frame * _BYTES_PER_SAMPLE[fmt])
            raise RecordError(path, f"data file {file_path} is truncated: {size} bytes hold {int(frames)} of the "
                                    f"{header.sig_len} samples the header declares ({needed} bytes needed)")


def _mv_factors(header: wfdb.Record, path: str, channels: Sequence[int]) -> np.ndarray:
    """Per-channel factors converting the header's physical units to millivolts."""
    factors = []
    for i in channels:
        unit = (header.units[i] if header.units else None) or "mV"
        if unit.lower() not in _TO_MV:
            raise RecordError(path, f"signal {header.sig_name[i]!r} has unsupported units {unit!r}")
        factors.append(_TO_MV[unit.lower()])
    return np.asarray(factors, dtype=np.float64)


def _rdrecord(header: wfdb.Record, path: str, channels: list[int]) -> np.ndarray:
    """`wfdb.rdrecord(path, channels=channels).p_signal` from the already parsed `header`.

    rdrecord would parse the header again, which costs about as much as reading the samples (wfdb's header parser).
    This is rdrecord's single-segment path with wfdb's own steps (private in wfdb 4: `_rd_segment`,
    `_arrange_fields`); a test compares it with rdrecord on real records.
    """
    record = copy.copy(header)  # rdrecord's steps replace (never mutate) the header's fields
    record.check_read_inputs(0, record.sig_len, channels, True, True, 64)
    record.e_d_signal = wfdb.io._signal._rd_segment(
        file_name=record.file_name, dir_name=os.path.abspath(os.path.dirname(path)), pn_dir=None, fmt=record.fmt,
        n_sig=record.n_sig, sig_len=record.sig_len, byte_offset=record.byte_offset,
        samps_per_frame=record.samps_per_frame, skew=record.skew, init_value=record.init_value, sampfrom=0,
        sampto=record.sig_len, channels=channels, ignore_skew=False, no_file=False, sig_data=None, return_res=64)
    record._arrange_fields(channels=channels, sampfrom=0, smooth_frames=True)
    record.dac(expanded=False, return_res=64, inplace=True)
    return record.p_signal


def _read_signal(header: wfdb.Record, path: str, channels: Sequence[int]) -> np.ndarray:
    """Reads the physical samples of `channels` with wfdb, after checking that the data files can hold them."""
    _check_file_sizes(header, path, channels)
    try:
        signal = _rdrecord(header, path, list(channels))
    except (ValueError, OSError) as err:
        raise RecordError(path, f"wfdb could not read the samples: {err}") from None
    if signal is None or signal.shape != (header.sig_len, len(channels)):
        shape = None if signal is None else signal.shape
        raise RecordError(path, f"read samples of shape {shape}, header declares ({header.sig_len}, {len(channels)})")
    return signal


def _in_mv(signal: np.ndarray, header: wfdb.Record, path: str, channels: Sequence[int]) -> np.ndarray:
    """Checks the samples are finite and converts them to float32 mV, [time, leads]."""
    bad = ~np.isfinite(signal)
    if bad.any():
        time, lead = np.argwhere(bad)[0]
        raise RecordError(path, f"{int(bad.sum())} NaN/inf samples (invalid sample values), first at sample "
                                f"{time} of lead {header.sig_name[channels[lead]]!r}", "nan")
    return (signal * _mv_factors(header, path, channels)).astype(np.float32)


def read_wfdb_record(ref: RecordRef, optional_suffixes: Sequence[str] = ()) -> Record:
    """Loads `ref.path` with wfdb: the leads whose data files exist, in mV; RecordError on any broken part.

    The header is parsed here unless the listing parsed it already (`ref.header`), so once per record either way.
    Its canonical lead names must equal `ref.leads`, since shard planning trusted the listing.
    """
    header = ref.header if ref.header is not None else read_header(ref.path)
    channels = available_channels(header, ref.path, optional_suffixes)
    leads = tuple(canonical_lead(header.sig_name[i]) for i in channels)
    if leads != ref.leads:
        raise RecordError(ref.path, f"header leads {leads} differ from the listed leads {ref.leads}")
    signal = _read_signal(header, ref.path, channels)
    return Record(ref=ref, signal=_in_mv(signal, header, ref.path, channels), leads=ref.leads,
                  sample_rate_hz=float(header.fs))
