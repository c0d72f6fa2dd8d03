"""Exceptions raised by csvgen.

The tree, drawn like websockets' ``exceptions.py``::

    CsvgenError
    ├── ConfigError              startup only: exit status 2 and one line
    ├── FrameError               the bus sent text with no usable request id: log, no reply
    └── ReplyError (code, status) becomes a typed error reply (protocol.md, "Errors")
        ├── RequestError         the peer's fault: the request cannot be served as sent
        │   ├── InvalidRequest   invalid_request 400, with details (JSON path, message)
        │   │   └── InvalidEnvelope  the frame's envelope is wrong but its id is usable
        │   ├── UnknownRoute     unknown_route 404
        │   └── TooLarge         too_large 413
        └── ServiceError         our side or a dependency's
            ├── MetricFailed     metric_failed 502
            ├── MetricTimeout    metric_timeout 504
            ├── StorageFailed    storage_failed 502
            ├── Overloaded       overloaded 503
            ├── ShuttingDown     shutting_down 503
            └── InternalError    internal 500 (a bug; the log has the traceback)

Anything else that escapes a handler is a bug; the dispatcher turns it into an
``internal`` reply. Messages are lowercase with no trailing period.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, ClassVar

__all__ = [
    "ConfigError",
    "CsvgenError",
    "Detail",
    "FrameError",
    "InternalError",
    "InvalidEnvelope",
    "InvalidRequest",
    "MetricFailed",
    "MetricTimeout",
    "Overloaded",
    "ReplyError",
    "RequestError",
    "ServiceError",
    "ShuttingDown",
    "StorageFailed",
    "TooLarge",
    "UnknownRoute",
]


class CsvgenError(Exception):
    """Root of every exception csvgen raises on purpose."""


class ConfigError(CsvgenError):
    """Invalid configuration; ``problems`` lists every one found."""

    def __init__(self, problems: Iterable[str]) -> None:
        self.problems = list(problems)
        super().__init__()

    def __str__(self) -> str:
        return "invalid configuration: " + "; ".join(self.problems)


class FrameError(CsvgenError):
    """Inbound text that cannot be answered: not JSON, or no usable ``data.id``."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


@dataclass(frozen=True, slots=True)
class Detail:
    """One problem of a request: where (a JSON path into the body) and what."""

    path: str
    message: str

    def as_json(self) -> dict[str, str]:
        return {"path": self.path, "message": self.message}


class ReplyError(CsvgenError):
    """An error that becomes a typed error reply on the bus."""

    code: ClassVar[str] = "internal"
    status: ClassVar[int] = 500

    def __init__(self, message: str, details: Iterable[Detail] = ()) -> None:
        self.message = message
        self.details = list(details)
        super().__init__(message)

    def __str__(self) -> str:
        if not self.details:
            return self.message
        return self.message + ": " + "; ".join(f"{d.path}: {d.message}" for d in self.details)

    def as_json(self) -> dict[str, Any]:
        """The error reply payload, as protocol.md defines it."""
        return {
            "error": {
                "code": self.code,
                "status": self.status,
                "message": self.message,
                "details": [d.as_json() for d in self.details],
            }
        }


class RequestError(ReplyError):
    """The request is well framed but cannot be served as sent."""


class InvalidRequest(RequestError):
    code = "invalid_request"
    status = 400

    def __init__(self, details: Iterable[Detail], message: str = "") -> None:
        details = list(details)
        if not message:
            n = len(details)
            message = f"invalid request: {n} problem{'s' if n != 1 else ''}"
        super().__init__(message, details)


class InvalidEnvelope(InvalidRequest):
    def __init__(self, request_id: str, details: Iterable[Detail]) -> None:
        self.request_id = request_id
        super().__init__(details, message="invalid request envelope")


class UnknownRoute(RequestError):
    code = "unknown_route"
    status = 404

    def __init__(self, route: str) -> None:
        self.route = route
        super().__init__(f"unknown route: {route!r}")


class TooLarge(RequestError):
    code = "too_large"
    status = 413


class ServiceError(ReplyError):
    """csvgen or one of its dependencies could not do its part."""


class MetricFailed(ServiceError):
    code = "metric_failed"
    status = 502

    def __init__(self, metric_id: str, upstream: str) -> None:
        self.metric_id = metric_id
        self.upstream = upstream
        super().__init__(f"metric request {metric_id!r} failed: {upstream}")


class MetricTimeout(ServiceError):
    code = "metric_timeout"
    status = 504

    def __init__(self, metric_id: str, timeout_s: float) -> None:
        self.metric_id = metric_id
        self.timeout_s = timeout_s
        super().__init__(f"metric request {metric_id!r} got no complete answer in {timeout_s:g} s")


class StorageFailed(ServiceError):
    code = "storage_failed"
    status = 502


class Overloaded(ServiceError):
    code = "overloaded"
    status = 503

    def __init__(self, queued: int) -> None:
        super().__init__(f"overloaded: {queued} exports already waiting")


class ShuttingDown(ServiceError):
    code = "shutting_down"
    status = 503

    def __init__(self) -> None:
        super().__init__("the worker is shutting down and takes no new work")


class InternalError(ServiceError):
    code = "internal"
    status = 500

    def __init__(self) -> None:
        super().__init__("internal error: this is a bug in csvgen; the worker log has the details")
