"""The log format: secrets scrubbed from every record, one record per line, whoever wrote it."""

from __future__ import annotations

import logging
import sys

import orjson
import pytest

from csvgen.logs import JsonFormatter, SafeFormatter


def formatted(msg: str, *args: object, exc: BaseException | None = None) -> str:
    record = logging.LogRecord("websockets.client", logging.INFO, __file__, 1, msg, args, None)
    if exc is not None:
        try:
            raise exc
        except BaseException:
            record.exc_info = sys.exc_info()
    return SafeFormatter("%(levelname)s %(message)s", secrets=["s3cr3t-jwt", None]).format(record)


@pytest.mark.parametrize(
    ("message", "shown"),
    [
        (
            "connect failed; reconnecting: 302 to wss://bus.example/ws?token=eyJ.abc&x=1#x",
            "connect failed; reconnecting: 302 to wss://bus.example/ws?token=***&x=1#x",
        ),
        ("url wss://me:pa55@bus.example/ws", "url wss://***@bus.example/ws"),
        ("a token seen bare: s3cr3t-jwt.", "a token seen bare: ***."),
        (
            "GET https://b.s3/k?X-Amz-Credential=AKIA%2F1&X-Amz-Signature=beef&X-Amz-Security-Token=t",
            "GET https://b.s3/k?X-Amz-Credential=***&X-Amz-Signature=***&X-Amz-Security-Token=***",
        ),
    ],
)
def test_secrets_never_reach_the_log(message: str, shown: str) -> None:
    assert formatted("%s", message) == f"INFO {shown}"


def test_request_text_cannot_forge_a_line() -> None:
    """Issue 8 #7: an id holding a newline and a fake record stays on its own line, escaped."""
    line = formatted("request id=%s outcome=ok", "r1\n2026-01-01 00:00:00,000 INFO forged\x1b[2J")
    assert line == "INFO request id=r1\\n2026-01-01 00:00:00,000 INFO forged\\x1b[2J outcome=ok"
    assert "\n" not in line


def test_tracebacks_are_indented_and_scrubbed() -> None:
    """A library's exception text with a token and a newline: every line stays under its record."""
    text = formatted("failed", exc=ValueError("at wss://h/ws?token=abc\nINFO forged"))
    first, *rest = text.split("\n")
    assert first == "INFO failed"
    assert rest and all(line.startswith("    | ") for line in rest)
    assert "token=***" in text and "abc" not in text


def test_json_lines_carry_their_fields_as_keys_and_no_secret() -> None:
    record = logging.LogRecord(
        "csvgen.dispatch", logging.INFO, __file__, 1, "request %s", ("r\n1",), None
    )
    record.fields = {"id": "r\n1", "outcome": "ok", "rows": 30, "key": "k?token=abc"}
    line = JsonFormatter(secrets=["s3cr3t-jwt"]).format(record)
    assert "\n" not in line
    doc = orjson.loads(line)
    assert doc["level"] == "INFO" and doc["logger"] == "csvgen.dispatch"
    assert doc["ts"].endswith("+00:00") and "T" in doc["ts"]
    assert (doc["msg"], doc["id"], doc["outcome"], doc["rows"]) == (
        "request r\n1",
        "r\n1",
        "ok",
        30,
    )
    assert doc["key"] == "k?token=***"


def test_json_tracebacks_are_one_scrubbed_key() -> None:
    record = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed", (), None)
    try:
        raise ValueError("at wss://h/ws?token=abc")
    except ValueError:
        record.exc_info = sys.exc_info()
    doc = orjson.loads(JsonFormatter().format(record))
    assert "ValueError: at wss://h/ws?token=***" in doc["exc"]
