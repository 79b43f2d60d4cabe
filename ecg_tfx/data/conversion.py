"""Conversion of a record source into sharded TFRecords and a manifest (the engine behind `convert`)."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import multiprocessing
import multiprocessing.pool
import sys
import time
import types
from collections import Counter
from collections.abc import Callable, Iterator

from absl import logging

from ecg_tfx.core import labels, schema, storage
from ecg_tfx.core.manifest import FILENAME as MANIFEST_FILE
from ecg_tfx.core.manifest import SPLITS, Manifest, ShardFile, SplitSummary
from ecg_tfx.core.records import ALL_LEADS, STANDARD12, RecordRef, canonical_lead, standard_order
from ecg_tfx.data import shards, splits, transform
from ecg_tfx.data.sources import SourceError


@dataclasses.dataclass(frozen=True)
class ConversionConfig:
    """Everything that decides the output (and so must match for a run to resume or be reused), and the
    failure limit (recorded, but not part of the output's identity: see `identity`)."""

    source: str = "synthetic"
    input_dir: str = ""
    labels: str = ""  # label preset; '' = the source's default
    min_class_records: int = 0
    sample_rate: int = 500
    leads: str = "auto"
    window_seconds: float = 10.0
    window_stride_seconds: float = 0.0  # 0 = the window length (no overlap)
    short_records: str = "pad"  # 'pad' or 'skip'
    split: str = "0.8,0.1,0.1"
    split_by: str = "auto"  # 'auto' (the source's folds if it has them), 'folds' or 'patients'
    split_seed: int = 0  # the patient split and the synthetic generator; training has its own --seed
    ptbxl_resolution: int = 500
    synthetic_patients: int = 100
    synthetic_records_per_patient: int = 3
    synthetic_duration_s: float = 20.0
    synthetic_sample_rate: float = 500.0
    max_records: int = 0  # 0 = all; otherwise the first N records (by record_id), for quick trials
    compression: str = "NONE"
    shard_size_mb: float = 100.0
    max_failure_fraction: float = 0.05  # why 0.05: conversion_flags' --max_failure_fraction


# Recorded in the manifest but not deciding its content: changing it reuses a finished conversion.
_NOT_IDENTITY = ("max_failure_fraction",)


def identity(recorded: dict) -> dict:
    """The part of a recorded config that decides the output; reads configs of older versions too (their
    `seed` seeded the split and is now `split_seed`)."""
    value = {key: v for key, v in recorded.items() if key not in _NOT_IDENTITY}
    if "seed" in value and "split_seed" not in value:
        value["split_seed"] = value.pop("seed")
    return value


class ConversionError(RuntimeError):
    """The run cannot go on; the message says why."""


def make_source(config: ConversionConfig):
    """The record source the config names."""
    if config.source == "synthetic":
        from ecg_tfx.data.sources.synthetic import SyntheticSource

        return SyntheticSource(config.synthetic_patients, config.synthetic_records_per_patient,
                               config.synthetic_duration_s, config.synthetic_sample_rate, config.split_seed,
                               labels.get_preset(config.source, config.labels or None).name)
    if not config.input_dir:
        raise SourceError(f"--source={config.source} needs --input_dir (the database folder)")
    if config.source == "ptb":
        from ecg_tfx.data.sources.ptb import PTBSource

        return PTBSource(config.input_dir)
    if config.source == "ptbxl":
        from ecg_tfx.data.sources.ptbxl import PTBXLSource

        return PTBXLSource(config.input_dir, config.ptbxl_resolution)
    raise SourceError(f"unknown source {config.source!r}")


def resolve_leads(spec: str, refs: list[RecordRef]) -> tuple[str, ...]:
    """Lead names from --leads: a comma list, 'standard12', 'all', or 'auto' (leads every record has)."""
    if spec == "standard12":
        return STANDARD12
    if spec == "all":
        return ALL_LEADS
    if spec == "auto":
        common = set.intersection(*(set(ref.leads) for ref in refs)) if refs else set()
        if not common:
            raise ConversionError("--leads=auto: the selected records share no lead")
        return tuple(standard_order(common))
    return tuple(canonical_lead(name) for name in spec.split(","))


def select(config: ConversionConfig, refs: list[RecordRef], preset: labels.LabelPreset
           ) -> tuple[list[shards.Item], tuple[str, ...], tuple[str, ...], list[dict]]:
    """Chooses records and classes by the label preset; returns items, vocabulary, leads and the skipped."""
    skipped: list[dict] = []
    items: list[shards.Item] = []
    for ref in refs:
        classes = preset.to_classes(ref.labels)
        if classes:
            items.append(shards.Item(ref, classes))
        else:
            raw = ", ".join(ref.labels) or "none"
            skipped.append(transform.skip_entry(ref, f"labels ({raw}) not in preset {preset.name}", "label"))
    per_class = Counter(name for item in items for name in item.classes)
    rare = {name for name, n in per_class.items() if n < config.min_class_records}
    if rare:
        logging.info("folding out rare classes (< %d records): %s", config.min_class_records,
                     {name: per_class[name] for name in sorted(rare)})
        kept = []
        for item in items:
            classes = tuple(name for name in item.classes if name not in rare)
            if classes:
                kept.append(dataclasses.replace(item, classes=classes))
            else:
                reason = f"class {item.classes[0]} has fewer than {config.min_class_records} records"
                skipped.append(transform.skip_entry(item.ref, reason, "label"))
        items = kept
    vocabulary = preset.classes or tuple(sorted({name for item in items for name in item.classes}))
    vocabulary = tuple(name for name in vocabulary if name not in rare)
    leads = resolve_leads(config.leads, [item.ref for item in items])
    with_leads = []
    for item in items:
        missing = [name for name in leads if name not in item.ref.leads]
        if missing:
            skipped.append(transform.skip_entry(item.ref, f"record lacks leads {','.join(missing)}", "leads"))
        else:
            with_leads.append(item)
    return with_leads, vocabulary, leads, skipped


def window_plan(config: ConversionConfig, leads: tuple[str, ...], vocabulary: tuple[str, ...]
                ) -> transform.WindowPlan:
    window = round(config.window_seconds * config.sample_rate)
    stride = round((config.window_stride_seconds or config.window_seconds) * config.sample_rate)
    return transform.WindowPlan(leads, config.sample_rate, window, stride, config.short_records == "pad", vocabulary)


def assign_splits(config: ConversionConfig, items: list[shards.Item]) -> dict[str, list[shards.Item]]:
    """Patient-wise splits: the source's own folds (PTB-XL strat_fold) or a stratified group split.

    Raises ConversionError (before any signal is read) when the --split fractions do not fit the records.
    """
    use_folds = config.split_by == "folds" or (
        config.split_by == "auto" and items and all(item.ref.fold is not None for item in items))
    if use_folds:
        names = [splits.FOLD_SPLITS[item.ref.fold] for item in items]
    else:
        try:
            names = splits.stratified_patient_split(
                [item.ref.patient_id for item in items], ["|".join(item.classes) for item in items],
                splits.parse_fractions(config.split), config.split_seed)
        except ValueError as error:
            raise ConversionError(str(error)) from None
    return {split: [item for item, name in zip(items, names, strict=True) if name == split]
            for split in SPLITS}


class Progress:
    """Records converted so far: one line rewritten in place on a terminal; a log line every 10% otherwise (CI logs,
    notebooks, files)."""

    def __init__(self, total: int):
        self.total, self.done, self.logged = total, 0, 0
        self.start, self.terminal = time.monotonic(), sys.stdout.isatty()

    def add(self, count: int) -> None:
        self.done += count
        if self.terminal:
            rate = self.done / max(time.monotonic() - self.start, 1e-6)
            print(f"\rconverted {self.done}/{self.total} records ({rate:.1f}/s)", end="", flush=True)
            if self.done == self.total:
                print()
        elif self.done * 10 // max(self.total, 1) > self.logged or self.done == self.total:
            self.logged = self.done * 10 // max(self.total, 1)
            logging.info("converted %d/%d records", self.done, self.total)


@contextlib.contextmanager
def _without_main_module():
    """Hides the parent's `__main__` while worker processes start.

    A spawned process re-runs the parent's main module first: a command (`ecg_tfx.convert`, `ecg_tfx.train`) that
    imports TensorFlow, ~4 s per worker before its first record. The workers need only `shards.write_in_worker`.
    """
    main = sys.modules["__main__"]
    sys.modules["__main__"] = types.ModuleType("__main__")
    try:
        yield
    finally:
        sys.modules["__main__"] = main


@contextlib.contextmanager
def _workers(num_workers: int) -> Iterator[tuple[multiprocessing.pool.Pool, object] | None]:
    """A pool of `num_workers` spawned processes and the queue they report records on; None for 1 worker (all in
    this process). The workers import no TensorFlow (numpy, scipy.signal and wfdb only); they are started before
    listing, which they share (PTB parses a header per record)."""
    if num_workers <= 1:
        yield None
        return
    context = multiprocessing.get_context("spawn")  # TensorFlow (in this process) is not fork-safe
    queue = context.SimpleQueue()
    with _without_main_module():
        pool = context.Pool(num_workers, initializer=shards.init_worker, initargs=(queue,))
    with pool:
        yield pool, queue


def _run_tasks(tasks: list[shards.ShardTask], source, plan, output_dir: str, workers, on_done) -> list[dict]:
    """Writes every shard, in this process or in the `workers` pool; reports progress per record."""
    progress = Progress(sum(len(t.items) for t in tasks))
    if workers is None or len(tasks) <= 1:
        results = []
        for task in tasks:
            results.append(shards.write(task, source, plan, output_dir, on_record=lambda: progress.add(1)))
            on_done(results)
        return results
    pool, queue = workers
    pending = [pool.apply_async(shards.write_in_worker, ((task, source, plan, output_dir),)) for task in tasks]
    results: list[dict] = []
    while pending:
        while not queue.empty():
            progress.add(queue.get())
        for job in [job for job in pending if job.ready()]:
            pending.remove(job)
            results.append(job.get())
            on_done(results)
        time.sleep(0.05)
    while not queue.empty():
        progress.add(queue.get())
    return results


def prepare_output(output_dir: str, recorded: dict, overwrite: bool) -> Manifest | None:
    """Checks the output folder; returns the manifest if this exact conversion is already complete.

    Conversions are compared by `identity`: a folder converted with another failure limit, or by an older
    version with the same split seed, is reused.
    """
    storage.enable_filesystem(output_dir)
    manifest_path = storage.join(output_dir, MANIFEST_FILE)
    config_path = storage.join(output_dir, shards.PROGRESS_DIR, "config.json")
    existing = None
    if storage.exists(manifest_path):
        existing = storage.read_json(manifest_path)["config"]
    elif storage.exists(config_path):
        existing = storage.read_json(config_path)
    elif storage.glob(storage.join(output_dir, "*.tfrecord*")):
        existing = {"unknown": "TFRecords from another run"}
    if existing is not None and identity(existing) != identity(recorded):
        if not overwrite:
            existing, wanted = identity(existing), identity(recorded)
            changed = sorted(k for k in set(existing) | set(wanted) if existing.get(k) != wanted.get(k))
            raise ConversionError(f"{output_dir} holds a conversion made with other flags ({', '.join(changed)}); "
                                  "pass --overwrite to replace it")
        for pattern in ("*.tfrecord*", MANIFEST_FILE, shards.PROGRESS_DIR):
            for path in storage.glob(storage.join(output_dir, pattern)):
                storage.remove(path)
        existing = None
    if existing is not None and storage.exists(manifest_path):
        return Manifest.load(output_dir)
    for stale in storage.glob(storage.join(output_dir, ".*.tmp-*")):  # left by a killed run
        storage.remove(stale)
    storage.makedirs(storage.join(output_dir, shards.PROGRESS_DIR))
    storage.write_json(config_path, recorded)
    return None


def check_failures(failed: int, total: int, limit: float) -> None:
    """Raises ConversionError once more than `limit` of all `total` records have failed.

    Called as records fail with the whole run's total, so a run stops as soon as the limit is certain to be
    crossed, never on an unlucky early stretch of broken records.
    """
    if failed > limit * total:
        raise ConversionError(f"{failed} of {total} records failed (> --max_failure_fraction={limit}); "
                              "see the log for each path and reason")


@dataclasses.dataclass(frozen=True)
class ConversionPlan:
    """What a conversion will do, decided from metadata alone (shared by the local and the Beam runner)."""

    source: object
    preset: labels.LabelPreset
    window: transform.WindowPlan
    tasks: list[shards.ShardTask]  # every shard of every split, in split order
    skipped: list[dict]  # records dropped before any signal is read (listing, labels, leads, length)
    listing_failures: int  # records whose metadata could not be read
    total: int  # records listed, readable or not


def plan_conversion(config: ConversionConfig, map_records: Callable = map) -> ConversionPlan:
    """Lists the source (per-record work mapped with `map_records`), selects records, classes and leads, splits by
    patient and plans the shards."""
    source = make_source(config)
    preset = labels.get_preset(config.source, config.labels or None)
    refs, failures = source.refs(map_records)
    if config.max_records:
        refs = refs[: config.max_records]
    if not refs and not failures:
        raise SourceError(f"no records found in {config.input_dir or config.source}")
    skipped = [{"record_id": "", "path": error.path, "reason": error.reason, "stage": error.stage}
               for error in failures]
    for entry in skipped:
        logging.warning("skipping %s: %s", entry["path"], entry["reason"])
    total = len(refs) + len(failures)
    check_failures(len(failures), total, config.max_failure_fraction)
    items, vocabulary, leads, label_skipped = select(config, refs, preset)
    plan = window_plan(config, leads, vocabulary)
    too_short = [item for item in items if plan.window_count(round(item.ref.duration_s * plan.sample_rate_hz)) == 0]
    skipped += label_skipped + [
        transform.skip_entry(item.ref, f"shorter than one window ({item.ref.duration_s:g} s)", "length")
        for item in too_short]
    items = [item for item in items if item not in too_short]
    if not items:
        raise ConversionError("no record is left to convert (see the skipped records above)")
    tasks = [task for split, members in assign_splits(config, items).items()
             for task in shards.plan(split, members, plan, config.shard_size_mb * 1e6, config.compression)]
    return ConversionPlan(source, preset, plan, tasks, skipped, len(failures), total)


def run(config: ConversionConfig, output_dir: str, num_workers: int = 1, overwrite: bool = False) -> Manifest:
    """Converts the configured source into `output_dir`; resumes an interrupted run. Returns the manifest."""
    recorded = dataclasses.asdict(config)
    done = prepare_output(output_dir, recorded, overwrite)
    if done is not None:
        logging.info("%s already holds this conversion; nothing to do", output_dir)
        return done
    with _workers(num_workers) as workers:
        planned = plan_conversion(config, map if workers is None else functools.partial(workers[0].imap,
                                                                                         chunksize=8))
        tasks = planned.tasks
        results = [stats for task in tasks if (stats := shards.finished(output_dir, task)) is not None]
        if results:
            logging.info("resuming: %d of %d shards already complete", len(results), len(tasks))
        reused = {stats["file"] for stats in results}

        def check(progress: list[dict]) -> None:
            failed = planned.listing_failures + sum(len(s["skipped"]) for s in progress)
            check_failures(failed, planned.total, config.max_failure_fraction)

        results += _run_tasks([t for t in tasks if t.filename not in reused], planned.source, planned.window,
                              output_dir, workers, check)
    read_failures = planned.listing_failures + sum(len(s["skipped"]) for s in results)
    check_failures(read_failures, planned.total, config.max_failure_fraction)
    manifest = _manifest(config, planned.preset, planned.window, tasks, results, planned.skipped)
    manifest.save(output_dir)
    storage.remove(storage.join(output_dir, shards.PROGRESS_DIR))
    return manifest


def summary(manifest: Manifest) -> str:
    """A short human summary of a manifest: splits, and how many records were skipped, by kind."""
    lines = [f"{manifest.source}: {len(manifest.leads)} leads at {manifest.sample_rate_hz} Hz, "
             f"windows of {manifest.window_samples} samples, classes {list(manifest.labels)}"]
    for name, split in manifest.splits.items():
        lines.append(f"  {name:<10} {split.examples:>6} windows {split.records:>5} records "
                     f"{split.patients:>4} patients {len(split.shards)} shards  {dict(split.class_records)}")
    counts = dict(sorted(manifest.skipped_counts.items()))
    lines.append(f"  skipped {sum(counts.values())} records" + (
        f" by kind: {counts} (each path and reason in manifest.json)" if counts else ""))
    return "\n".join(lines)


def _manifest(config, preset, plan, tasks, results, skipped) -> Manifest:
    by_file = {stats["file"]: stats for stats in results}
    stats = {split: [by_file[t.filename] for t in tasks if t.split == split] for split in SPLITS}
    files = {split: [ShardFile(s["file"], s["examples"], s["sha256"]) for s in stats[split]] for split in SPLITS}
    return build_manifest(config, preset, plan, stats, files, skipped)


def build_manifest(config: ConversionConfig, preset: labels.LabelPreset, plan: transform.WindowPlan,
                   stats: dict[str, list[dict]], files: dict[str, list[ShardFile]], skipped: list[dict]) -> Manifest:
    """The manifest from record counts per split and the shard files per split.

    `stats` entries carry examples, records, patient_ids, class_examples, class_records, padded and skipped:
    one per shard from the local converter, one per record from the Beam pipeline; they are summed.
    """
    split_summary = {}
    for split in SPLITS:
        patients = tuple(sorted({p for s in stats[split] for p in s["patient_ids"]}))
        split_summary[split] = SplitSummary(
            examples=sum(s["examples"] for s in stats[split]),
            records=sum(s["records"] for s in stats[split]),
            patients=len(patients),
            patient_ids=patients,
            class_examples=dict(sum((Counter(s["class_examples"]) for s in stats[split]), Counter())),
            class_records=dict(sum((Counter(s["class_records"]) for s in stats[split]), Counter())),
            shards=tuple(files[split]),
        )
    read_skipped = [entry for split in SPLITS for s in stats[split] for entry in s["skipped"]]
    return Manifest(
        schema_version=schema.SCHEMA_VERSION,
        source=config.source,
        config=dataclasses.asdict(config),
        label_preset=preset.name,
        multi_label=preset.multi_label,
        labels=plan.labels,
        leads=plan.leads,
        sample_rate_hz=plan.sample_rate_hz,
        window_samples=plan.window_samples,
        stride_samples=plan.stride_samples,
        compression=config.compression,
        padded_records=sum(s["padded"] for split in SPLITS for s in stats[split]),
        splits=split_summary,
        skipped=tuple(skipped + read_skipped),
        skipped_counts=dict(Counter(entry["stage"] for entry in skipped + read_skipped)),
    )
