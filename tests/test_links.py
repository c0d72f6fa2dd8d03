"""What the bus and Metrics links share: the token in the URL, retry or give up."""

from __future__ import annotations

import pytest
from websockets.datastructures import Headers
from websockets.exceptions import InvalidStatus
from websockets.http11 import Response

from csvgen.links import classify, with_token


def test_the_token_goes_in_the_query_once() -> None:
    assert with_token("wss://h/ws?x=1&token=old", "t0k") == "wss://h/ws?x=1&token=t0k"
    assert with_token("ws://h/bus", None) == "ws://h/bus"


@pytest.mark.parametrize(
    ("status", "fatal"), [(401, True), (403, True), (503, False), (302, False)]
)
def test_only_a_refused_token_is_fatal(status: int, fatal: bool) -> None:
    exc = InvalidStatus(Response(status, "x", Headers()))
    assert (classify(exc) is exc) is fatal


def test_other_failures_are_retried() -> None:
    assert classify(OSError("connection refused")) is None
