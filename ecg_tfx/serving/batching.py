"""Server-side batching as TF Serving's `--enable_batching` does it: concurrent requests that agree on signature
and shapes are concatenated along the batch axis and run as one model call, then split back per request.

The parameters are TF Serving's `BatchingParameters` (`serving/batching.config` holds the same values in its text
format, for `tensorflow_model_server --batching_parameters_file`). Like TF Serving's shared batch scheduler, each
kind of request (a queue key) has its own queue of batches; a request goes into the newest batch while it fits,
otherwise it starts a new batch, and is refused (429 / RESOURCE_EXHAUSTED) when its queue already holds
`max_enqueued_batches`. A batch runs once it is full, once a newer batch exists, or `batch_timeout_micros` after
it was opened, on one of `num_batch_threads` threads. Unlike TF Serving, a merged call that fails is retried one
request at a time, so an invalid request fails alone and never takes the others of its batch with it.
"""

from __future__ import annotations

import collections
import dataclasses
import re
import threading
import time
from collections.abc import Callable, Hashable, Mapping

import numpy as np

from ecg_tfx.serving.errors import ServingError, from_code

Tensors = Mapping[str, np.ndarray]
Call = Callable[[Tensors], dict[str, np.ndarray]]


@dataclasses.dataclass(frozen=True)
class BatchingParameters:
    """TF Serving's BatchingParameters (the fields we use); the one home of the defaults.

    max_batch_size: rows (recordings or examples) per merged model call; a request with more runs alone.
    batch_timeout_micros: microseconds a batch waits for more requests after its first one arrived.
    max_enqueued_batches: batches waiting per queue (kind of request); a request needing one more is refused.
    num_batch_threads: batches running at once.
    """

    max_batch_size: int = 32
    batch_timeout_micros: int = 2000
    max_enqueued_batches: int = 64
    num_batch_threads: int = 2

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            minimum = 0 if field.name == "batch_timeout_micros" else 1
            if getattr(self, field.name) < minimum:
                raise ValueError(f"{field.name} must be >= {minimum}; got {getattr(self, field.name)}")

    def to_text(self) -> str:
        """The settings in TF Serving's text format (`name { value: N }` per field)."""
        return "".join(f"{field.name} {{ value: {getattr(self, field.name)} }}\n"
                       for field in dataclasses.fields(self))

    @classmethod
    def from_text(cls, text: str) -> BatchingParameters:
        """Reads TF Serving's text format; `pad_variable_length_inputs` may only be false (nothing is padded)."""
        values: dict[str, int] = {}
        names = {field.name for field in dataclasses.fields(cls)}
        body = re.sub(r"#[^\n]*", "", text)
        for name, value in re.findall(r"(\w+)\s*\{\s*value:\s*(\w+)\s*\}", body):
            if name == "pad_variable_length_inputs" and value == "false":
                continue
            if name not in names or not value.isdigit():
                raise ValueError(f"unsupported batching parameter {name}: {value}")
            values[name] = int(value)
        return cls(**values)


@dataclasses.dataclass
class _Task:
    tensors: Tensors
    rows: int
    done: threading.Event = dataclasses.field(default_factory=threading.Event)
    result: dict[str, np.ndarray] | None = None
    error: BaseException | None = None


@dataclasses.dataclass
class _Batch:
    call: Call
    max_rows: int
    opened_s: float  # time.monotonic() when its first task arrived
    tasks: list[_Task] = dataclasses.field(default_factory=list)
    rows: int = 0


class Batcher:
    """Merges concurrent requests of one kind into model calls run by `num_batch_threads` threads.

    `processed_batch_sizes` counts the model calls by rows; `rejected` counts requests refused on a full queue.
    """

    def __init__(self, parameters: BatchingParameters):
        self.parameters = parameters
        self.processed_batch_sizes: collections.Counter[int] = collections.Counter()
        self.rejected = 0
        self._queues: dict[Hashable, collections.deque[_Batch]] = {}
        self._condition = threading.Condition()
        self._closed = False
        self._threads = [threading.Thread(target=self._work, name=f"batch-{i}", daemon=True)
                         for i in range(parameters.num_batch_threads)]
        for thread in self._threads:
            thread.start()

    def queued_rows(self) -> int:
        """Rows waiting in batches not yet taken by a batch thread."""
        with self._condition:
            return sum(batch.rows for queue in self._queues.values() for batch in queue)

    def run(self, key: Hashable, max_rows: int, tensors: Tensors, call: Call) -> dict[str, np.ndarray]:
        """`call(tensors)`'s outputs, computed within a merged call of requests with the same `key`.

        Every tensor has the request's rows first; `call` must give every output that many rows first. A batch
        holds at most `min(max_rows, max_batch_size)` rows; a request with more runs alone, at once.
        """
        rows = len(next(iter(tensors.values())))
        max_rows = min(max_rows, self.parameters.max_batch_size)
        if rows > max_rows:
            return call(tensors)
        task = _Task(tensors, rows)
        with self._condition:
            if self._closed:
                raise from_code("UNAVAILABLE", "The server is shutting down")
            queue = self._queues.setdefault(key, collections.deque())
            if not queue or queue[-1].rows + rows > queue[-1].max_rows:
                if len(queue) >= self.parameters.max_enqueued_batches:
                    self.rejected += 1
                    raise from_code("RESOURCE_EXHAUSTED", "The batch scheduling queue to which this task was "
                                    f"submitted is full ({self.parameters.max_enqueued_batches} batches waiting, "
                                    "--max_enqueued_batches); retry later")
                queue.append(_Batch(call, max_rows, time.monotonic()))
            queue[-1].tasks.append(task)
            queue[-1].rows += rows
            self._condition.notify_all()
        task.done.wait()
        if task.error is not None:
            raise task.error
        return task.result

    def close(self) -> None:
        """Stops the batch threads once the running batches end; requests still queued get UNAVAILABLE."""
        with self._condition:
            self._closed = True
            left = [task for queue in self._queues.values() for batch in queue for task in batch.tasks]
            self._queues.clear()
            self._condition.notify_all()
        for task in left:
            task.error = from_code("UNAVAILABLE", "The server is shutting down")
            task.done.set()
        for thread in self._threads:
            thread.join()

    def _take_ready(self) -> tuple[_Batch | None, float | None]:
        """The oldest batch ready to run (removed from its queue), else the seconds until one times out."""
        now = time.monotonic()
        timeout_s = self.parameters.batch_timeout_micros / 1e6
        ready_key, wait_s = None, None
        for key, queue in self._queues.items():
            head = queue[0]
            if len(queue) > 1 or head.rows >= head.max_rows or now >= head.opened_s + timeout_s:
                if ready_key is None or head.opened_s < self._queues[ready_key][0].opened_s:
                    ready_key = key
            else:
                wait_s = min(wait_s if wait_s is not None else timeout_s, head.opened_s + timeout_s - now)
        if ready_key is None:
            return None, wait_s
        queue = self._queues[ready_key]
        batch = queue.popleft()
        if not queue:
            del self._queues[ready_key]
        return batch, None

    def _work(self) -> None:
        while True:
            with self._condition:
                batch, wait_s = self._take_ready()
                while batch is None and not self._closed:
                    self._condition.wait(wait_s)
                    batch, wait_s = self._take_ready()
                if batch is None:
                    return
            self._execute(batch)

    def _execute(self, batch: _Batch) -> None:
        tasks = batch.tasks
        if len(tasks) > 1:
            merged = {name: np.concatenate([task.tensors[name] for task in tasks]) for name in tasks[0].tensors}
            try:
                outputs = self._call(batch.call, merged)
                if all(value.shape[:1] == (batch.rows,) for value in outputs.values()):
                    start = 0
                    for task in tasks:
                        task.result = {name: value[start:start + task.rows] for name, value in outputs.items()}
                        start += task.rows
                        task.done.set()
                    return
            except ServingError:
                pass  # one request may be at fault: each is run alone below and gets its own answer
            except Exception as error:  # a bug: every request of the batch fails with it (and it is logged)
                for task in tasks:
                    task.error = error
                    task.done.set()
                return
        for task in tasks:
            try:
                task.result = self._call(batch.call, task.tensors)
            except Exception as error:  # handed to the request's thread, which answers with it
                task.error = error
            task.done.set()

    def _call(self, call: Call, tensors: Tensors) -> dict[str, np.ndarray]:
        with self._condition:
            self.processed_batch_sizes[len(next(iter(tensors.values())))] += 1
        return call(tensors)

    def prometheus_text(self) -> str:
        """Processed batch sizes (a histogram with a bucket per size) and refused requests, Prometheus' format."""
        with self._condition:
            sizes, rejected = dict(self.processed_batch_sizes), self.rejected
        name = "ecg_tfx_batching_processed_batch_size"
        lines = [f"# HELP {name} Rows per model call run by the batcher.", f"# TYPE {name} histogram"]
        cumulative = 0
        for size in range(1, self.parameters.max_batch_size + 1):
            cumulative += sizes.get(size, 0)
            lines.append(f'{name}_bucket{{le="{size}"}} {cumulative}')
        lines += [f'{name}_bucket{{le="+Inf"}} {sum(sizes.values())}',
                  f"{name}_sum {sum(size * count for size, count in sizes.items())}",
                  f"{name}_count {sum(sizes.values())}",
                  "# HELP ecg_tfx_batching_rejected_total Requests refused because their batch queue was full.",
                  "# TYPE ecg_tfx_batching_rejected_total counter", f"ecg_tfx_batching_rejected_total {rejected}"]
        return "\n".join(lines) + "\n"
