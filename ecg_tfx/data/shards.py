"""Shards: planned up front from record metadata, each written whole by one worker.

A shard is a contiguous run of records of one split, so its bytes depend only on the flags and the
data, never on the number of workers or the order they finish in. A finished shard is published by
rename, with a small stats file beside it so an interrupted run can reuse it.

Nothing here imports TensorFlow (TFRecords come from `core.tfrecord`, examples from the protobuf package), so a
worker process started to write shards (`write_in_worker`) is ready in a fraction of a second.
"""

from __future__ import annotations

import dataclasses
from collections import Counter

from ecg_tfx.core import schema, storage
from ecg_tfx.core.records import RecordRef
from ecg_tfx.data import transform

PROGRESS_DIR = ".progress"


@dataclasses.dataclass(frozen=True)
class Item:
    """A record chosen for conversion, with its classes."""

    ref: RecordRef
    classes: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class ShardTask:
    split: str
    index: int
    count: int
    items: tuple[Item, ...]
    compression: str

    @property
    def filename(self) -> str:
        return schema.shard_name(self.split, self.index, self.count, self.compression)


def plan(split: str, items: list[Item], window_plan: transform.WindowPlan, shard_bytes: float, compression: str
         ) -> list[ShardTask]:
    """Groups a split's items (in record_id order) into shards of about `shard_bytes` (uncompressed)."""
    groups: list[list[Item]] = []
    size = 0.0
    for item in sorted(items, key=lambda it: it.ref.record_id):
        samples = round(item.ref.duration_s * window_plan.sample_rate_hz)
        estimate = max(1, window_plan.window_count(samples)) * window_plan.example_bytes()
        if not groups or (size + estimate > shard_bytes and groups[-1]):
            groups.append([])
            size = 0.0
        groups[-1].append(item)
        size += estimate
    return [ShardTask(split, i, len(groups), tuple(group), compression) for i, group in enumerate(groups)]


def stats_path(output_dir: str, task: ShardTask) -> str:
    return storage.join(output_dir, PROGRESS_DIR, task.filename + ".json")


def finished(output_dir: str, task: ShardTask) -> dict | None:
    """The stats of a shard a previous run completed, or None (then it is written again).

    The shard must still hash to the sha256 its stats recorded: files are published by rename, which a kill cannot
    tear, but after a power cut a renamed file can come back empty or short (nothing forces its data to disk
    first), and so can the stats themselves."""
    path = stats_path(output_dir, task)
    shard = storage.join(output_dir, task.filename)
    if not (storage.exists(path) and storage.exists(shard)):
        return None
    try:
        stats = storage.read_json(path)
    except ValueError:  # not JSON (cut short)
        return None
    return stats if stats.get("sha256") == storage.sha256(shard) else None


def write(task: ShardTask, source, window_plan: transform.WindowPlan, output_dir: str, on_record=None) -> dict:
    """Converts a shard's records and publishes the shard; a broken record is reported and skipped."""
    examples: Counter[str] = Counter()
    records: Counter[str] = Counter()
    patients: set[str] = set()
    skipped: list[dict] = []
    padded = 0
    total = 0
    path = storage.join(output_dir, task.filename)
    with storage.tfrecord_writer(path, task.compression) as writer:
        for item in task.items:
            converted = transform.convert_record(source, item.ref, item.classes, window_plan)
            if converted.skipped:
                skipped.append(converted.skipped)
            for example in converted.examples:
                writer.write(example)
            total += len(converted.examples)
            if converted.examples:
                patients.add(item.ref.patient_id)
                padded += converted.padded
                for name in item.classes:
                    examples[name] += len(converted.examples)
                    records[name] += 1
            if on_record is not None:
                on_record()
    stats = {
        "file": task.filename,
        "split": task.split,
        "examples": total,
        "class_examples": dict(sorted(examples.items())),
        "class_records": dict(sorted(records.items())),
        "patient_ids": sorted(patients),
        "skipped": skipped,
        "padded": padded,
        "records": len(task.items) - len(skipped),
        "sha256": storage.sha256(path),
    }
    storage.write_json(stats_path(output_dir, task), stats)
    return stats


_worker_progress = None


def init_worker(progress_queue) -> None:
    """A worker process's initializer: where `write_in_worker` reports each record done."""
    global _worker_progress
    _worker_progress = progress_queue


def write_in_worker(args: tuple) -> dict:
    """`write` in a worker process; args are (task, source, window plan, output_dir)."""
    task, source, window_plan, output_dir = args
    return write(task, source, window_plan, output_dir, on_record=lambda: _worker_progress.put(1))
