"""The bounds a server puts on its clients, shared by the REST and gRPC servers of one `ecg_tfx.serve`."""

from __future__ import annotations

import dataclasses
import threading

DEFAULT_MAX_REQUEST_BYTES = 32 * 1024 * 1024


@dataclasses.dataclass(frozen=True)
class ServerLimits:
    """Request bounds. Buffered request bodies take at most max_concurrent_requests x max_request_bytes of memory.

    max_request_bytes: larger bodies (REST) or messages (gRPC) are refused (413 / RESOURCE_EXHAUSTED).
    max_concurrent_requests: requests in flight at once, REST and gRPC together (reading their body, waiting for a
        worker thread or running); the next one is answered 429 / RESOURCE_EXHAUSTED at once.
    read_timeout_s: seconds a REST client may take to send its body (slow senders get 408).
    """

    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES
    max_concurrent_requests: int = 32
    read_timeout_s: float = 30.0


class RequestSlots:
    """A count of requests in flight with a cap; `try_acquire` never waits, so a full server answers at once."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self._in_flight = 0
        self._lock = threading.Lock()

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def try_acquire(self) -> bool:
        with self._lock:
            if self._in_flight >= self.capacity:
                return False
            self._in_flight += 1
            return True

    def release(self) -> None:
        with self._lock:
            self._in_flight -= 1

    def busy_message(self) -> str:
        return (f"Server busy: {self.capacity} requests in flight (--max_concurrent_requests); retry after one "
                "finishes")
