"""Error messages and reply shapes, as a table (websockets' test_exceptions style)."""

from __future__ import annotations

import pytest

from csvgen.errors import (
    ConfigError,
    Detail,
    InternalError,
    InvalidRequest,
    MetricFailed,
    MetricTimeout,
    Overloaded,
    ReplyError,
    ShuttingDown,
    StorageFailed,
    TooLarge,
    UnknownRoute,
)


@pytest.mark.parametrize(
    ("error", "code", "status", "text"),
    [
        (
            InvalidRequest([Detail("a", "bad"), Detail("b[0]", "worse")]),
            "invalid_request",
            400,
            "invalid request: 2 problems: a: bad; b[0]: worse",
        ),
        (
            UnknownRoute("external-service/x"),
            "unknown_route",
            404,
            "unknown route: 'external-service/x'",
        ),
        (
            TooLarge("export has 11 rows, the limit is 10"),
            "too_large",
            413,
            "export has 11 rows, the limit is 10",
        ),
        (
            MetricFailed("m1", "bad dates"),
            "metric_failed",
            502,
            "metric request 'm1' failed: bad dates",
        ),
        (
            MetricTimeout("m1", 2.5),
            "metric_timeout",
            504,
            "metric request 'm1' got no complete answer in 2.5 s",
        ),
        (StorageFailed("upload failed"), "storage_failed", 502, "upload failed"),
        (Overloaded(3), "overloaded", 503, "overloaded: 3 exports already waiting"),
        (ShuttingDown(), "shutting_down", 503, "the worker is shutting down and takes no new work"),
        (
            InternalError(),
            "internal",
            500,
            "internal error: this is a bug in csvgen; the worker log has the details",
        ),
    ],
)
def test_reply_errors(error: ReplyError, code: str, status: int, text: str) -> None:
    """Each error maps to its code and status, and its message reads as documented."""
    assert str(error) == text
    payload = error.as_json()["error"]
    assert (payload["code"], payload["status"]) == (code, status)
    assert payload["details"] == [d.as_json() for d in error.details]


def test_config_error_lists_problems() -> None:
    assert str(ConfigError(["A: x", "B: y"])) == "invalid configuration: A: x; B: y"


@pytest.mark.parametrize(
    "raised",
    [
        OSError(28, "No space left on device", "/spill/csvgen-records-x/records-1.arrow"),
        OSError("No space left on device (os error 28)"),  # polars' own writes
        OSError("[Errno 28] No space left on device"),  # polars writing to a Python file
    ],
    ids=["python", "rust", "relayed"],
)
def test_a_full_spill_directory_is_named_by_its_reason_never_a_path(raised: OSError) -> None:
    error = StorageFailed.spill("the CSV", raised)
    assert error.message == "the CSV could not be written to the spill directory: " + (
        "No space left on device"
    )


def test_a_disk_error_without_a_reason_says_so_plainly() -> None:
    error = StorageFailed.spill("the CSV", OSError("write failed at /spill/x"))
    assert (
        error.message == "the CSV could not be written to the spill directory: input/output error"
    )
