"""The error of a failed serving request, shared by the REST server and the clients."""

from __future__ import annotations


class ServingError(Exception):
    """A failed request: `status` is the HTTP status (REST) or the gRPC status code name; `message` the server's."""

    def __init__(self, status: int | str, message: str):
        super().__init__(f"{status}: {message}")
        self.status = status
        self.message = message


def invalid_argument(message: str) -> ServingError:
    return ServingError(400, message)


def not_found(message: str) -> ServingError:
    return ServingError(404, message)
