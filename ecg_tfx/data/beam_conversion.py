"""The converter as an Apache Beam pipeline, for data too large for one machine.

    python -m ecg_tfx.convert --runner=beam --output_dir=... \\
        --beam_args="--direct_num_workers=2 --direct_running_mode=multi_processing"

It makes the same conversion as `conversion.run`: the launcher plans it from metadata alone with
`conversion.plan_conversion` (listing, labels, leads, patient-wise splits, shard counts); the pipeline
converts each record with `transform.record_examples` and writes each split with `WriteToTFRecord` into the
planned number of shards, named `{split}-SSSSS-of-NNNNN.tfrecord[.gz]`. Each split holds the same set of
serialized examples as the local converter's; which shard an example lands in is up to Beam. A record that
fails goes to a tagged output and ends up in the manifest's `skipped`, as locally.

Per-record counts and each written shard's example count and sha256 come back as JSON lines under
`.progress/beam/`, from which the launcher writes the same manifest as the local converter. On Dataflow,
Flink or Spark, pass that runner's options in --beam_args (its workers need ecg_tfx: --extra_package=<its wheel>).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator, Sequence

import apache_beam as beam
import tensorflow as tf
from absl import logging
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

from ecg_tfx.core import schema, storage
from ecg_tfx.core.manifest import SPLITS, Manifest, ShardFile
from ecg_tfx.data import conversion, shards, transform
from ecg_tfx.data.conversion import ConversionConfig

STATS = "stats"  # the tagged output of per-record counts and failures
_RESULTS_DIR = "beam"  # under the output's .progress folder


def record_stats(split: str, item: shards.Item, examples: int, padded: bool, skipped: list[dict]) -> dict:
    """One record's contribution to the manifest, in the shape of a local shard's stats (so they add up)."""
    converted = examples > 0
    return {
        "kind": "record",
        "split": split,
        "record_id": item.ref.record_id,
        "examples": examples,
        "records": 0 if skipped else 1,
        "patient_ids": [item.ref.patient_id] if converted else [],
        "class_examples": {name: examples for name in item.classes} if converted else {},
        "class_records": {name: 1 for name in item.classes} if converted else {},
        "padded": int(converted and padded),
        "skipped": skipped,
    }


class ConvertRecord(beam.DoFn):
    """(split, Item) -> the record's serialized examples, and its stats on the STATS output."""

    def __init__(self, source, plan: transform.WindowPlan):
        self._source = source
        self._plan = plan

    def process(self, element: tuple[str, shards.Item]) -> Iterator:
        split, item = element
        converted = transform.convert_record(self._source, item.ref, item.classes, self._plan)
        yield from converted.examples
        skipped = [converted.skipped] if converted.skipped else []
        yield beam.pvalue.TaggedOutput(STATS, record_stats(split, item, len(converted.examples), converted.padded,
                                                           skipped))


def shard_stats(path: str, split: str, compression: str) -> dict:
    """A written shard's entry in the manifest: file name, example count and sha256."""
    storage.enable_filesystem(path)
    dataset = tf.data.TFRecordDataset(path, schema.tfrecord_compression(compression))
    count = int(dataset.reduce(0, lambda n, _: n + 1))
    return {"kind": "shard", "split": split, "file": path.rsplit("/", 1)[-1], "examples": count,
            "sha256": storage.sha256(path)}


def build_pipeline(pipeline: beam.Pipeline, planned: conversion.ConversionPlan, output_dir: str,
                   compression: str, results_prefix: str) -> None:
    """Adds the conversion of every planned split to `pipeline`; results go to `results_prefix`*.jsonl."""
    beam_compression = CompressionTypes.GZIP if compression == "GZIP" else CompressionTypes.UNCOMPRESSED
    results = []
    for split in SPLITS:
        tasks = [task for task in planned.tasks if task.split == split]
        if not tasks:
            continue
        elements = [(split, item) for task in tasks for item in task.items]
        converted = (
            pipeline
            | f"List {split}" >> beam.Create(elements)
            | f"Spread {split}" >> beam.Reshuffle()  # so records spread over workers, not one fused bundle
            | f"Convert {split}" >> beam.ParDo(ConvertRecord(planned.source, planned.window)).with_outputs(
                STATS, main="examples")
        )
        written = converted.examples | f"Write {split}" >> beam.io.WriteToTFRecord(
            storage.join(output_dir, split), file_name_suffix=schema.shard_suffix(compression), num_shards=len(tasks),
            shard_name_template="-SSSSS-of-NNNNN", compression_type=beam_compression)
        results += [converted[STATS],
                    written | f"Hash {split}" >> beam.Map(shard_stats, split=split, compression=compression)]
    _ = (results
         | "Gather results" >> beam.Flatten()
         | "As JSON" >> beam.Map(lambda value: json.dumps(value, sort_keys=True))
         | "Write results" >> beam.io.WriteToText(results_prefix, file_name_suffix=".jsonl"))


def read_results(results_dir: str) -> list[dict]:
    values = []
    for path in storage.glob(storage.join(results_dir, "*.jsonl")):
        values += [json.loads(line) for line in storage.read_text(path).splitlines() if line.strip()]
    return values


def pipeline_options(beam_args: Sequence[str]) -> PipelineOptions:
    """Beam options from command-line style arguments; without --runner, the FnApiRunner (in process).

    Beam's DirectRunner first tries the Prism runner, which downloads a binary from GitHub, then falls back
    to the FnApiRunner; naming the FnApiRunner skips that download.
    """
    options = PipelineOptions(list(beam_args))
    if options.view_as(StandardOptions).runner is None:
        options.view_as(StandardOptions).runner = "FnApiRunner"
    return options


def run(config: ConversionConfig, output_dir: str, beam_args: Sequence[str] = (), overwrite: bool = False
        ) -> Manifest:
    """Converts the configured source into `output_dir` with a Beam pipeline; returns the manifest.

    `beam_args` are Beam pipeline options (e.g. --runner=DataflowRunner ...); the default is the FnApiRunner
    (`pipeline_options`).
    A finished conversion with the same config is reused; an unfinished one is converted again whole.
    """
    done = conversion.prepare_output(output_dir, dataclasses.asdict(config), overwrite)
    if done is not None:
        logging.info("%s already holds this conversion; nothing to do", output_dir)
        return done
    planned = conversion.plan_conversion(config)
    results_dir = storage.join(output_dir, shards.PROGRESS_DIR, _RESULTS_DIR)
    if storage.exists(results_dir):  # from an interrupted run
        storage.remove(results_dir)
    with beam.Pipeline(options=pipeline_options(beam_args)) as pipeline:
        build_pipeline(pipeline, planned, output_dir, config.compression, storage.join(results_dir, "results"))
    results = read_results(results_dir)
    records = sorted((r for r in results if r["kind"] == "record"), key=lambda r: r["record_id"])
    files = sorted((r for r in results if r["kind"] == "shard"), key=lambda r: r["file"])
    read_failures = planned.listing_failures + sum(len(r["skipped"]) for r in records)
    conversion.check_failures(read_failures, planned.total, config.max_failure_fraction)
    manifest = conversion.build_manifest(
        config, planned.preset, planned.window,
        {split: [r for r in records if r["split"] == split] for split in SPLITS},
        {split: [ShardFile(f["file"], f["examples"], f["sha256"]) for f in files if f["split"] == split]
         for split in SPLITS},
        planned.skipped)
    manifest.save(output_dir)
    storage.remove(storage.join(output_dir, shards.PROGRESS_DIR))
    return manifest
