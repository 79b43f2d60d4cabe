"""One place that turns flags into a `tf.distribute` strategy and a mixed-precision policy."""

from __future__ import annotations

import json
import os
import pathlib

import keras
import tensorflow as tf
from absl import logging

STRATEGIES = ("auto", "one_device", "mirrored", "multi_worker")
PRECISIONS = ("auto", "float32", "mixed_float16", "mixed_bfloat16")


def configure_gpus() -> list[tf.config.PhysicalDevice]:
    """Enables memory growth on every GPU (so several processes can share one) and returns them."""
    gpus = tf.config.list_physical_devices("GPU")
    for gpu in gpus:
        try:
            tf.config.experimental.set_memory_growth(gpu, True)
        except RuntimeError as error:  # already initialized: leave it as it is
            logging.warning("could not enable memory growth on %s: %s", gpu.name, error)
    return gpus


def cpu_flags() -> set[str]:
    """The CPU's feature flags (Linux), e.g. {'avx512_bf16', 'amx_bf16'}; empty where unknown."""
    try:
        text = pathlib.Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def choose_precision(requested: str, gpus: list | None = None, cpu: set[str] | None = None,
                     tpu: bool = False) -> tuple[str, str]:
    """The mixed-precision policy for this hardware, and why.

    auto: mixed_float16 on GPUs that all have tensor cores (compute capability >= 7.0), mixed_bfloat16 on a
    TPU or a CPU with native bf16 (AVX-512 BF16 or AMX), float32 otherwise.
    """
    if requested != "auto":
        return requested, "requested by --precision"
    gpus = configure_gpus() if gpus is None else gpus
    cpu = cpu_flags() if cpu is None else cpu
    if tpu:
        return "mixed_bfloat16", "TPU: bfloat16 is native"
    if gpus:
        capabilities = [tf.config.experimental.get_device_details(g).get("compute_capability", (0, 0))
                        if isinstance(g, tf.config.PhysicalDevice) else g for g in gpus]
        if all(tuple(c) >= (7, 0) for c in capabilities):
            return "mixed_float16", f"GPU compute capability {min(capabilities)} >= 7.0 (tensor cores)"
        return "float32", f"GPU compute capability {min(capabilities)} < 7.0: float16 would not be faster"
    native = sorted(cpu & {"avx512_bf16", "amx_bf16"})
    if native:
        return "mixed_bfloat16", f"CPU with native bfloat16 ({', '.join(native)})"
    return "float32", "CPU without native bfloat16 or float16 units"


def set_precision(requested: str) -> tuple[str, str]:
    """Chooses and sets Keras's global dtype policy; returns (policy, reason)."""
    policy, reason = choose_precision(requested, tpu=_tpu_address() is not None)
    keras.mixed_precision.set_global_policy(policy)
    logging.info("precision %s: %s", policy, reason)
    return policy, reason


def _tpu_address() -> str | None:
    return os.environ.get("TPU_NAME") or os.environ.get("COLAB_TPU_ADDR")


def split_cpu(devices: int) -> None:
    """Splits the CPU into `devices` logical devices (must run before TensorFlow initializes them).

    Lets Mirrored training be run and tested on a machine without accelerators.
    """
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * devices)


class MultiWorkerMirroredStrategy(tf.distribute.MultiWorkerMirroredStrategy):
    """MultiWorkerMirroredStrategy whose `reduce` accepts what Keras 3's `fit` passes it.

    Keras 3 (keras-team/keras#20585) asks it to average a whole (x, y, weight) input batch across workers
    before each fit/evaluate, only to read the batch's shapes, and to average scalar metric results along
    axis 0; the collective implementation rejects both. Here an input batch gives this worker's own
    values (no collective op, so no worker waits on another for it) and scalars are reduced without an axis.
    """

    def reduce(self, reduce_op, value, axis):
        if isinstance(value, (tuple, list, dict)):  # Keras's sample input batch
            return tf.nest.map_structure(lambda tensor: self.experimental_local_results(tensor)[0], value)
        rank = self.experimental_local_results(value)[0].shape.rank
        return super().reduce(reduce_op, value, axis if rank else None)


def make_strategy(name: str) -> tf.distribute.Strategy:
    """A strategy from --strategy.

    auto: MultiWorkerMirrored when TF_CONFIG names a cluster, a TPU when one is attached, Mirrored over
    several GPUs, else one device (the GPU if there is one).
    """
    gpus = configure_gpus()
    if name == "auto":
        if json.loads(os.environ.get("TF_CONFIG", "{}")).get("cluster"):
            name = "multi_worker"
        elif _tpu_address():
            resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=_tpu_address())
            tf.config.experimental_connect_to_cluster(resolver)
            tf.tpu.experimental.initialize_tpu_system(resolver)
            return tf.distribute.TPUStrategy(resolver)
        else:
            name = "mirrored" if len(gpus) > 1 else "one_device"
    if name == "one_device":
        return tf.distribute.OneDeviceStrategy("/gpu:0" if gpus else "/cpu:0")
    if name == "mirrored":
        if gpus:
            return tf.distribute.MirroredStrategy()
        return tf.distribute.MirroredStrategy([d.name for d in tf.config.list_logical_devices("CPU")])
    if name == "multi_worker":
        return MultiWorkerMirroredStrategy()
    raise ValueError(f"--strategy must be one of {STRATEGIES}, got {name!r}")


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """Whether this process writes the run's final artifacts (always, outside multi-worker training)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return True
    task_type, task_id = resolver.task_type, resolver.task_id
    return task_type is None or task_type == "chief" or (task_type == "worker" and task_id == 0
                                                         and "chief" not in resolver.cluster_spec().as_dict())


def num_workers(strategy: tf.distribute.Strategy) -> int:
    """How many worker processes train together (1 outside multi-worker training)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return 1
    spec = resolver.cluster_spec().as_dict()
    return sum(len(spec.get(job, [])) for job in ("chief", "worker")) or 1
