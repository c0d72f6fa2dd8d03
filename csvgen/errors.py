"""Exceptions raised by csvgen.

The tree, drawn like websockets' ``exceptions.py``::

    CsvgenError
    ├── ConfigError              startup only: exit status 2 and one line
    ├── FrameError               the bus sent text with no usable request id: log, no reply
    ├── PartError                a framed answer breaks the multi-part rules (``rid`` if known)
    ├── UpstreamError            the Metrics API answered an error, or what cannot be read
    └── ReplyError (code, status) becomes a typed error reply (protocol.md, "Errors")
        ├── RequestError         the peer's fault: the request cannot be served as sent
        │   ├── InvalidRequest   invalid_request 400, with details (JSON path, message)
        │   │   └── InvalidEnvelope  the frame's envelope is wrong but its id is usable
        │   ├── UnknownRoute     unknown_route 404
        │   ├── NotFound         not_found 404
        │   └── TooLarge         too_large 413
        │       └── BodyTooLarge the frame's body is over the limit; refused unread
        └── ServiceError         our side or a dependency's
            ├── MetricFailed     metric_failed 502
            ├── MetricTimeout    metric_timeout 504
            ├── ExportTimeout    export_timeout 504
            ├── StorageFailed    storage_failed 502
            ├── Overloaded       overloaded 503
            ├── ShuttingDown     shutting_down 503
            └── InternalError    internal 500 (a bug; the log has the traceback)

Anything else that escapes a handler is a bug; the dispatcher turns it into an
``internal`` reply. Messages are lowercase with no trailing period.

Replies are bounded whatever the request held (SPEC §8): :func:`echo` cuts every
request string a message quotes to ``MAX_ECHO_CHARS``, and :func:`bounded` keeps at
most ``MAX_DETAILS`` details (then one ``… and N more problems``) and the whole reply
under ``MAX_REPLY_BYTES``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import orjson

__all__ = [
    "MAX_DETAILS",
    "MAX_ECHO_CHARS",
    "MAX_REPLY_BYTES",
    "MAX_TEXT_CHARS",
    "BodyTooLarge",
    "ConfigError",
    "CsvgenError",
    "Detail",
    "ExportTimeout",
    "FrameError",
    "InternalError",
    "InvalidEnvelope",
    "InvalidRequest",
    "LeaseLost",
    "MetricFailed",
    "MetricTimeout",
    "NotFound",
    "Overloaded",
    "PartError",
    "ReplyError",
    "RequestError",
    "ServiceError",
    "ShuttingDown",
    "StorageFailed",
    "TooLarge",
    "UnknownRoute",
    "UpstreamError",
    "bounded",
    "cut",
    "echo",
]

#: Details of one error reply, and warnings of one success reply, at most.
MAX_DETAILS = 100
#: A request string quoted in a reply is cut to this many characters.
MAX_ECHO_CHARS = 200
#: A whole error reply stays under this size; details go first when it would not.
MAX_REPLY_BYTES = 64 * 1024
#: A path or message of one detail is cut to this many characters (a safety net).
MAX_TEXT_CHARS = 600


def cut(text: str, limit: int = MAX_ECHO_CHARS) -> str:
    """``text`` cut to ``limit`` characters, ``…`` marking a cut."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def echo(value: object) -> str:
    """A request value quoted in a message: ``repr`` of a string cut to ``MAX_ECHO_CHARS``.

    A number is shown as it is; an array or object only by its kind, so no value is
    ever walked (it may be nested a thousand levels deep).
    """
    if isinstance(value, str):
        return repr(cut(value))
    if value is None or isinstance(value, bool | int | float):
        return cut(repr(value))
    return "an array" if isinstance(value, list) else "an object"


def bounded(items: Sequence[Any], noun: str, omitted: int = 0) -> tuple[list[Any], str | None]:
    """At most ``MAX_DETAILS`` of ``items`` whose JSON fits in half of ``MAX_REPLY_BYTES``.

    Returns the items kept and, when some were left out, the ``… and N more {noun}``
    line to end them with. ``omitted`` counts items a collector already did not keep.
    """
    keep = list(items[:MAX_DETAILS])
    while keep and len(orjson.dumps(keep)) > MAX_REPLY_BYTES // 2:
        keep = keep[: len(keep) // 2]
    more = len(items) - len(keep) + omitted
    return keep, (f"… and {more} more {noun}" if more else None)


class CsvgenError(Exception):
    """Root of every exception csvgen raises on purpose."""


class ConfigError(CsvgenError):
    """Invalid configuration; ``problems`` lists every one found."""

    def __init__(self, problems: Iterable[str]) -> None:
        self.problems = list(problems)
        super().__init__()

    def __str__(self) -> str:
        return "invalid configuration: " + "; ".join(self.problems)


class PartError(CsvgenError, ValueError):
    """A framed answer that breaks the multi-part rules; ``rid`` is set when known."""

    def __init__(self, message: str, rid: str | None = None) -> None:
        self.rid = rid
        super().__init__(message)


class UpstreamError(CsvgenError):
    """The Metrics API answered with an error, or with an answer csvgen cannot read.

    The route turns it into ``metric_failed`` naming the metric request.
    """

    def __init__(self, message: str) -> None:
        self.message = message
        super().__init__(message)


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

    def __init__(self, message: str, details: Iterable[Detail] = (), omitted: int = 0) -> None:
        self.message = cut(message, MAX_TEXT_CHARS)
        self.details = list(details)
        self.omitted = omitted  # details not kept (see bounded)
        super().__init__(message)

    def __str__(self) -> str:
        if not self.details:
            return self.message
        return self.message + ": " + "; ".join(f"{d.path}: {d.message}" for d in self.details)

    def as_json(self) -> dict[str, Any]:
        """The error reply payload, as protocol.md defines it: bounded, whatever the details."""
        details, more = bounded(
            [
                {"path": cut(d.path, MAX_TEXT_CHARS), "message": cut(d.message, MAX_TEXT_CHARS)}
                for d in self.details[: MAX_DETAILS + 1]
            ],
            "problems",
            self.omitted + max(0, len(self.details) - MAX_DETAILS - 1),
        )
        if more:
            details.append({"path": "", "message": more})
        return {
            "error": {
                "code": self.code,
                "status": self.status,
                "message": self.message,
                "details": details,
            }
        }


class RequestError(ReplyError):
    """The request is well framed but cannot be served as sent."""


class InvalidRequest(RequestError):
    code = "invalid_request"
    status = 400

    def __init__(self, details: Iterable[Detail], message: str = "", omitted: int = 0) -> None:
        details = list(details)
        if not message:
            n = len(details) + omitted
            message = f"invalid request: {n} problem{'s' if n != 1 else ''}"
        super().__init__(message, details, omitted)


class InvalidEnvelope(InvalidRequest):
    def __init__(self, request_id: str, details: Iterable[Detail]) -> None:
        self.request_id = request_id
        super().__init__(details, message="invalid request envelope")


class UnknownRoute(RequestError):
    code = "unknown_route"
    status = 404

    def __init__(self, route: str) -> None:
        self.route = route
        super().__init__(f"unknown route: {echo(route)}")


class NotFound(RequestError):
    code = "not_found"
    status = 404


class TooLarge(RequestError):
    code = "too_large"
    status = 413


class BodyTooLarge(TooLarge):
    """A request frame over ``CSVGEN_MAX_BODY_BYTES``: refused before its body is read."""

    def __init__(self, request_id: str, size: int, limit: int) -> None:
        self.request_id = request_id
        super().__init__(
            f"the request body is {size} bytes; the limit is {limit}",
            [Detail("body", f"must be at most {limit} bytes of JSON, got {size}")],
        )


class ServiceError(ReplyError):
    """csvgen or one of its dependencies could not do its part."""


class MetricFailed(ServiceError):
    code = "metric_failed"
    status = 502

    def __init__(self, metric_id: str, upstream: str) -> None:
        self.metric_id = metric_id
        self.upstream = upstream
        super().__init__(f"metric request {echo(metric_id)} failed: {cut(upstream)}")


class MetricTimeout(ServiceError):
    code = "metric_timeout"
    status = 504

    def __init__(self, metric_id: str, timeout_s: float) -> None:
        self.metric_id = metric_id
        self.timeout_s = timeout_s
        super().__init__(
            f"metric request {echo(metric_id)} got no complete answer in {timeout_s:g} s"
        )


class ExportTimeout(ServiceError):
    code = "export_timeout"
    status = 504

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        super().__init__(f"the export did not finish within its deadline of {timeout_s:g} s")


class StorageFailed(ServiceError):
    code = "storage_failed"
    status = 502

    @classmethod
    def spill(cls, what: str, exc: OSError) -> StorageFailed:
        """``what`` could not be written to the spill directory (CSVGEN_SPILL_DIR, full or
        gone): the reason, never a path. Python's OSError has it as ``strerror``; the one
        polars raises has only a text, holding ``(os error N)`` or Python's ``[Errno N]``."""
        reason = exc.strerror
        if reason is None:
            number = re.search(r"\(os error (\d+)\)|\[Errno (\d+)\]", str(exc))
            reason = os.strerror(int(number[1] or number[2])) if number else "input/output error"
        return cls(f"{what} could not be written to the spill directory: {reason}")


class LeaseLost(StorageFailed):
    """This replica lost its lease on the export (a renewal failed, was too slow, or
    another replica took the receipt over): the export stopped and left nothing. Retryable:
    the same id is answered by the replica that holds the receipt now, or runs anew."""

    def __init__(self, bucket: str) -> None:
        super().__init__(
            f"this replica lost its lease on the export's receipt in bucket {bucket!r}; "
            "the export was stopped and left nothing: retry the request with the same id"
        )


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
