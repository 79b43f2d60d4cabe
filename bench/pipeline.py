"""Section 2, input pipeline: training steps/s of the seed CNN fed by `input_pipeline.make_dataset` (TFRecords,
parsed and preprocessed once, cached in memory, then shuffled, cropped and scaled every batch) vs fed from the
same preprocessed, cropped arrays held in memory (`from_tensor_slices(...).cache()`). A pipeline that keeps up
costs nothing: the ratio of step times is 1."""

from __future__ import annotations

from bench import data, timing


def run(quick: bool = False) -> dict:
    """Measures the section and returns its results."""
    reps, steps = (3, 6) if quick else (7, 8)
    dataset = data.converted()
    spec = data.spec(dataset.manifest)
    model = data.compiled_cnn(spec)
    pipeline = data.train_dataset(dataset, spec)
    _, _, memory = data.in_memory(dataset, spec, batches=8)
    times = timing.interleaved({
        "pipeline": lambda: data.seconds_per_step(model, pipeline, steps),
        "in_memory": lambda: data.seconds_per_step(model, memory, steps),
    }, reps)
    ratio = timing.paired_ratio(times["pipeline"], times["in_memory"])
    findings = [] if ratio <= 1.05 else [
        f"pipeline-fed steps are {ratio:.2f}x the in-memory ones: the pipeline's per-batch work (shuffle, random "
        "crop, scaling, prefetch) runs on tf.data threads that share the 2 cores with the training step itself."]
    return {
        "findings": findings,
        "title": "2. Input pipeline",
        "conditions": {"data": dataset.note, "model": "cnn", "batch": data.BATCH,
                       "input": f"{spec.input_samples} samples x {len(spec.leads)} leads at {spec.sample_rate_hz} Hz",
                       "steps_per_rep": steps, "reps": reps, "precision": "float32 (the global default)"},
        "metrics": {
            "steps_per_s": {name: round(1 / timing.median(values), 2) for name, values in times.items()},
            "step_time": {name: timing.spread(values) for name, values in times.items()},
        },
        "ratios": [timing.target("pipeline-fed / in-memory step time", ratio, 1.05, False,
                                 "median of per-repetition ratios; the pipeline's threads share the 2 cores")],
    }
