"""The error of a failed serving request, shared by the REST and gRPC servers and the clients."""

from __future__ import annotations

# The canonical status codes (gRPC's, which tf.errors uses: CODES[error.error_code]) and the HTTP status TF
# Serving's http_server.cc answers for each.
CODES = ("OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND", "ALREADY_EXISTS",
         "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION", "ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED",
         "INTERNAL", "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED")
HTTP_STATUS = {
    "OK": 200, "CANCELLED": 499, "UNKNOWN": 500, "INVALID_ARGUMENT": 400, "DEADLINE_EXCEEDED": 504, "NOT_FOUND": 404,
    "ALREADY_EXISTS": 409, "PERMISSION_DENIED": 403, "RESOURCE_EXHAUSTED": 429, "FAILED_PRECONDITION": 400,
    "ABORTED": 409, "OUT_OF_RANGE": 400, "UNIMPLEMENTED": 501, "INTERNAL": 500, "UNAVAILABLE": 503,
    "DATA_LOSS": 500, "UNAUTHENTICATED": 401,
}
# What a client sees of an unexpected server failure; the details go to the server's log only.
INTERNAL_MESSAGE = "Internal error; the server's log has the details"


class ServingError(Exception):
    """A failed request: `status` is the HTTP status (REST) or the gRPC status code name; `message` the server's.

    Server-side errors also carry `code`, the canonical code name the gRPC server answers with.
    """

    def __init__(self, status: int | str, message: str, code: str = "UNKNOWN"):
        super().__init__(f"{status}: {message}")
        self.status = status
        self.message = message
        self.code = code


def from_code(code: str, message: str) -> ServingError:
    """A server-side failure with its canonical code; its HTTP status follows TF Serving's mapping."""
    return ServingError(HTTP_STATUS[code], message, code)


def invalid_argument(message: str) -> ServingError:
    return from_code("INVALID_ARGUMENT", message)


def not_found(message: str) -> ServingError:
    return from_code("NOT_FOUND", message)
