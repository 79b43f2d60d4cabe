"""Section 1, conversion: our converter vs the seed's way vs the floor (bare `wfdb.rdrecord`), worker scaling and
peak memory.

- Throughput: the same WFDB records read three ways, interleaved: the floor (rdrecord only), the seed's loop
  (rdrecord + a growing `np.concatenate`, no output) and `ecg_tfx.conversion.run` with one worker (listing,
  resampling to 250 Hz, windows, serialized shards, manifest).
- Workers: the converter with 1 and 2 workers on the records repeated 4x, end to end (the workers import no
  TensorFlow and share the listing) and in steady state (the time between the first and the last record loaded,
  stamped by a wrapping source in every worker), with the CPU seconds of all processes (this one and the workers),
  which a loaded machine does not inflate as it does wall time.
- Memory: peak RSS of a fresh process converting 1x and 10x as many records (real records repeated via symlinks).
"""

from __future__ import annotations

import cProfile
import json
import os
import pstats
import resource
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np
import wfdb

from bench import timing

SAMPLE_RATE = 250  # the PTB pipelines' rate: every record is resampled from 1000 Hz
SHARD_MB = 0.25  # ~2 records per shard, so two workers always have work to share
STANDARD_CHANNELS = list(range(12))


def source_records(work: str) -> tuple[str, str]:
    """The PTB subset's folder, or a stand-in written from the synthetic source; and what it is."""
    root = timing.SHARED_DATA / "ptbdb"
    if (root / "RECORDS").is_file():
        return str(root), f"real PTB subset ({root})"
    return write_synthetic_ptb(os.path.join(work, "synthetic_ptb")), \
        f"SYNTHETIC stand-in: {root} is absent, so 66 synthetic 10-s records at 1000 Hz were written as WFDB"


def write_synthetic_ptb(folder: str, count: int = 66) -> str:
    """Writes `count` synthetic 12-lead records in the PTB layout (1000 Hz, 16-bit, reason-for-admission comment)."""
    from ecg_tfx.data.sources.synthetic import SyntheticSource

    source = SyntheticSource(count, 1, 10.0, 1000.0, 0)
    lines = []
    for ref in source.refs()[0]:
        record = source.load(ref)
        patient = f"patient{len(lines) + 1:03d}"
        os.makedirs(os.path.join(folder, patient), exist_ok=True)
        wfdb.wrsamp("rec", fs=1000, units=["mV"] * 12, sig_name=list(record.leads),
                    p_signal=record.signal.astype(float), fmt=["16"] * 12,
                    comments=["Reason for admission: Healthy control"],
                    write_dir=os.path.join(folder, patient))
        lines.append(f"{patient}/rec")
    with open(os.path.join(folder, "RECORDS"), "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    return folder


def record_lines(root: str) -> list[str]:
    with open(os.path.join(root, "RECORDS"), encoding="utf-8") as f:
        return [line.strip() for line in f if line.strip()]


def repeated(root: str, dest: str, times: int) -> str:
    """A PTB-layout folder listing every record of `root` `times` times (symlinked files, new patient ids)."""
    if os.path.isdir(dest):
        return dest
    lines = []
    for repetition in range(times):
        for line in record_lines(root):
            patient, record = line.split("/")
            folder = os.path.join(dest, f"{patient}r{repetition}")
            os.makedirs(folder, exist_ok=True)
            for name in os.listdir(os.path.join(root, patient)):
                if name.startswith(record + "."):
                    os.symlink(os.path.join(root, patient, name), os.path.join(folder, name))
            lines.append(f"{patient}r{repetition}/{record}")
    with open(os.path.join(dest, "RECORDS"), "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    return dest


def untimed(_: object) -> None:
    """Drops a case's result, so `timing.interleaved` takes its wall time."""


def floor(paths: list[str]) -> None:
    """The least any converter must do: read every record's samples."""
    for path in paths:
        wfdb.rdrecord(path, channels=STANDARD_CHANNELS)


def seed_way(paths: list[str]) -> np.ndarray:
    """The seed project's loop: read each record and append it to one growing array (quadratic copying)."""
    data = np.empty((0, len(STANDARD_CHANNELS)))
    for path in paths:
        data = np.concatenate([data, wfdb.rdrecord(path, channels=STANDARD_CHANNELS).p_signal])
    return data


def config(input_dir: str):
    from ecg_tfx.data import conversion

    return conversion.ConversionConfig(source="ptb", input_dir=input_dir, labels="diagnoses", leads="standard12",
                                       sample_rate=SAMPLE_RATE, shard_size_mb=SHARD_MB)


def convert(input_dir: str, work: str, workers: int) -> dict:
    """One full conversion into a fresh folder (removed afterwards); returns the manifest."""
    from ecg_tfx.data import conversion

    output = tempfile.mkdtemp(dir=work)
    try:
        with timing.quiet():
            return conversion.run(config(input_dir), output, workers)
    finally:
        shutil.rmtree(output)


def peak_rss_mb(input_dir: str, work: str) -> dict[str, float]:
    """Peak RSS (MB) of a fresh process converting `input_dir` with one worker: of the whole process
    (TensorFlow's import included), during the conversion alone, and that minus the RSS before it."""
    output = tempfile.mkdtemp(dir=work)
    try:
        done = subprocess.run([sys.executable, "-m", "bench.conversion", "--rss-child", input_dir, output],
                              cwd=timing.REPO, capture_output=True, text=True, timeout=600, check=True)
    finally:
        shutil.rmtree(output)
    peaks = json.loads(done.stdout.strip().splitlines()[-1])
    return {"process": peaks["maxrss_kb"] / 1024, "conversion": peaks["conversion_peak_kb"] / 1024,
            "growth": (peaks["conversion_peak_kb"] - peaks["before_kb"]) / 1024}


class StampedSource:
    """Wraps a record source and appends the wall-clock time each record finished loading to a file.

    The file is shared by every worker process, so the steady-state speed (first to last record) can be told
    apart from the fixed cost of starting the workers.
    """

    def __init__(self, inner, stamp_file: str):
        self.inner, self.stamp_file = inner, stamp_file
        self.name = inner.name

    def refs(self, map_records=map):
        return self.inner.refs(map_records)

    def load(self, ref):
        record = self.inner.load(ref)
        with open(self.stamp_file, "a", encoding="utf-8") as f:
            f.write(f"{time.time()}\n")
        return record


def cpu_s() -> float:
    """CPU seconds (user + system) of this process and of its finished children (the conversion's workers)."""
    return sum(usage.ru_utime + usage.ru_stime for usage in (resource.getrusage(resource.RUSAGE_SELF),
                                                               resource.getrusage(resource.RUSAGE_CHILDREN)))


def stamped_convert(input_dir: str, work: str, workers: int) -> tuple[float, float, float]:
    """(end-to-end seconds, seconds scaled from the first-to-last record span to all records, CPU seconds of every
    process) of one conversion."""
    from ecg_tfx.data import conversion

    stamp_file = os.path.join(work, "stamps.txt")
    original = conversion.make_source
    conversion.make_source = lambda config: StampedSource(original(config), stamp_file)
    try:
        started, cpu_started = time.perf_counter(), cpu_s()
        manifest = convert(input_dir, work, workers)
        total, cpu = time.perf_counter() - started, cpu_s() - cpu_started
    finally:
        conversion.make_source = original
    with open(stamp_file, encoding="utf-8") as f:
        stamps = sorted(float(line) for line in f)
    os.remove(stamp_file)
    records = sum(split.records for split in manifest.splits.values())
    return total, (stamps[-1] - stamps[0]) * records / (len(stamps) - 1), cpu


def profile_converter(input_dir: str, work: str, top: int = 8) -> list[str]:
    """cProfile of one single-worker conversion: the functions with the most own time."""
    profiler = cProfile.Profile()
    profiler.runcall(convert, input_dir, work, 1)
    stats = pstats.Stats(profiler).sort_stats("tottime")
    total = sum(entry[2] for entry in stats.stats.values())
    rows = []
    ranked = sorted(stats.stats.items(), key=lambda kv: -kv[1][2])[:top]
    for (file, line, name), (_, calls, own, cumulative, _) in ranked:
        where = f"{os.path.basename(file)}:{line}({name})"
        rows.append(f"{own / total:5.1%} own, {cumulative:6.2f} s cum, {calls:6d} calls  {where}")
    return rows


def run(quick: bool = False) -> dict:
    """Measures the section and returns its results (metrics, ratios with targets, conditions, notes)."""
    from absl import logging

    logging.set_verbosity(logging.ERROR)
    reps = 3 if quick else 5
    work = tempfile.mkdtemp(prefix="bench_conversion_")
    try:
        root, data_note = source_records(work)
        paths = [os.path.join(root, line) for line in record_lines(root)]
        n = len(paths)
        times = timing.interleaved({
            "floor": lambda: floor(paths),
            "seed": lambda: untimed(seed_way(paths)),
            "converter": lambda: untimed(convert(root, work, 1)),
        }, reps)
        copies = 2 if quick else 4
        many = repeated(root, os.path.join(work, f"x{copies}"), copies)
        scaling: dict[str, list[float]] = {f"{w}w_{kind}": [] for w in (1, 2) for kind in ("total", "steady", "cpu")}

        def scaled(workers: int) -> None:
            total, steady, cpu = stamped_convert(many, work, workers)
            scaling[f"{workers}w_total"].append(total)
            scaling[f"{workers}w_steady"].append(steady)
            scaling[f"{workers}w_cpu"].append(cpu)

        timing.interleaved({"1w": lambda: scaled(1), "2w": lambda: scaled(2)}, 2 if quick else 3, warmup=0)
        ten = repeated(root, os.path.join(work, "x10"), 10)
        rss = {"1x": peak_rss_mb(root, work), "10x": peak_rss_mb(ten, work)}
        profile = profile_converter(root, work)
    finally:
        shutil.rmtree(work)
    rate = {name: n / timing.median(values) for name, values in times.items()}
    startup = {w: timing.median(scaling[f"{w}w_total"]) - timing.median(scaling[f"{w}w_steady"]) for w in (1, 2)}
    cpu_ratio = timing.median(scaling["2w_cpu"]) / timing.median(scaling["1w_cpu"])
    ratios = [
        timing.target("converter / floor (records/s)", timing.paired_ratio(times["floor"], times["converter"]), 0.5,
                      True, "the converter also lists headers, resamples 1000->250 Hz, serializes and writes shards"),
        timing.target("2 workers / 1 worker, steady state", timing.paired_ratio(scaling["1w_steady"],
                                                                               scaling["2w_steady"]), 1.8, True,
                      f"{copies * n} records; time from the first to the last record loaded, startup excluded"),
        timing.target(f"2 workers / 1 worker, end to end ({copies * n} records)",
                      timing.paired_ratio(scaling["1w_total"], scaling["2w_total"]), 1.5, True,
                      f"spawning 2 workers (no TensorFlow) that also parse the headers; time outside the records' "
                      f"span: ~{startup[2]:.1f} s (in-process: ~{startup[1]:.1f} s of listing and planning); CPU "
                      f"seconds 2 / 1 worker(s): {cpu_ratio:.2f}"),
        timing.target("peak RSS 10x / 1x records", rss["10x"]["conversion"] / rss["1x"]["conversion"], 1.2, False,
                      f"{rss['1x']['conversion']:.0f} MB vs {rss['10x']['conversion']:.0f} MB during the conversion "
                      f"(+{rss['1x']['growth']:.0f} / +{rss['10x']['growth']:.0f} MB over the RSS before it; "
                      f"process peaks incl. TF import {rss['1x']['process']:.0f} / {rss['10x']['process']:.0f} MB), "
                      "one worker, a fresh process each"),
    ]
    return {
        "findings": findings(ratios, rate, scaling, startup, copies * n),
        "title": "1. Conversion",
        "conditions": {"data": data_note, "records": n, "sample_rate_hz": SAMPLE_RATE, "shard_size_mb": SHARD_MB,
                       "reps": reps, "scaling_records": copies * n},
        "metrics": {
            "records_per_s": {name: round(value, 1) for name, value in rate.items()},
            "seed / floor (records/s)": round(timing.paired_ratio(times["floor"], times["seed"]), 3),
            "converter / seed (records/s)": round(timing.paired_ratio(times["seed"], times["converter"]), 3),
            "steady_records_per_s": {f"{w} worker(s)": round(copies * n / timing.median(scaling[f"{w}w_steady"]), 1)
                                     for w in (1, 2)},
            "startup_s": {f"{w} worker(s)": round(startup[w], 2) for w in (1, 2)},
            "cpu_s": {f"{w} worker(s)": round(timing.median(scaling[f"{w}w_cpu"]), 2) for w in (1, 2)},
            "peak_rss_mb": {key: {k: round(v, 1) for k, v in value.items()} for key, value in rss.items()},
            "times_s": {name: [round(v, 3) for v in values] for name, values in {**times, **scaling}.items()},
        },
        "ratios": ratios,
        "profile": profile,
    }


def findings(ratios: list[dict], rate: dict, scaling: dict, startup: dict, records: int) -> list[str]:
    """Why the missed targets were missed, from this run's own numbers."""
    notes = []
    if not ratios[0]["met"]:
        notes.append(
            f"converter/floor {ratios[0]['value']:.2f} ({rate['converter']:.0f} vs {rate['floor']:.0f} records/s): "
            "each header is parsed once (by the listing; the floor parses it too), so the rest is the converter's own "
            "work: resampling 1000->250 Hz (scipy's upfirdn), the mV and float32 conversions, CRC32C and the shard "
            "files; see the profile below.")
    if not ratios[1]["met"]:
        notes.append(f"2-worker steady state {ratios[1]['value']:.2f}x: both cores are busy with the two workers, so "
                     "anything else on the machine (see the load) and the parent's 50-ms polling take directly from "
                     "them; the scaling is only as good as the idle cores.")
    if not ratios[2]["met"]:
        cpu = timing.median(scaling["2w_cpu"]) / timing.median(scaling["1w_cpu"])
        notes.append(f"end to end {ratios[2]['value']:.2f}x with {cpu:.2f}x the CPU seconds of one worker: the extra "
                     "CPU is the workers' start (Python, numpy, scipy.signal, wfdb and pandas; no TensorFlow) and "
                     "moving refs and results between processes. Where the CPU ratio is near 1 but the wall ratio "
                     "is not, the cores were busy with other work (see the load).")
    return notes


def _status_kb(field: str) -> int:
    """A memory field of /proc/self/status (VmRSS, VmHWM) in kB."""
    with open("/proc/self/status", encoding="utf-8") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def _rss_child(input_dir: str, output_dir: str) -> None:
    """Converts with one worker after importing everything; prints the peaks as JSON.

    The peak of the conversion alone is VmHWM after resetting it (writing 5 to /proc/self/clear_refs) once
    TensorFlow is imported: importing TensorFlow peaks higher than converting 66 records.
    """
    import resource

    from absl import logging

    from ecg_tfx.data import conversion

    logging.set_verbosity(logging.ERROR)
    before = _status_kb("VmRSS")
    with open("/proc/self/clear_refs", "w", encoding="utf-8") as f:
        f.write("5")
    with timing.quiet():
        manifest = conversion.run(config(input_dir), output_dir, 1)
    records = sum(split.records for split in manifest.splits.values())
    print(json.dumps({"maxrss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, "before_kb": before,
                      "conversion_peak_kb": _status_kb("VmHWM"), "records": records}))


if __name__ == "__main__" and sys.argv[1:2] == ["--rss-child"]:
    _rss_child(sys.argv[2], sys.argv[3])
