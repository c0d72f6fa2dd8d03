"""A table → CSV bytes into a binary sink, with no other I/O (SPEC §4, protocol.md "CSV").

Dialects: ``default`` (UTF-8, no BOM, comma, CRLF after every line, RFC 4180
minimal quoting), ``excel`` (the same with a UTF-8 BOM) and ``excel-eu`` (BOM,
``;`` separator, decimal comma in non-integer numbers). ``gzip`` wraps the sink
(mtime 0, so equal tables give equal bytes).

Formula safety: a text cell (headings and dimension values included, numbers
never) starting with ``=``, ``+``, ``-``, ``@``, tab or CR gets a leading ``'``.
"""

from __future__ import annotations

import gzip
import hashlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from decimal import Decimal
from typing import IO, Any

import orjson

__all__ = ["Dialect", "WriteResult", "dialect_named", "format_float", "write_csv"]

BOM = "\ufeff"
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
ROWS_PER_CHUNK = 4096


@dataclass(frozen=True, slots=True)
class Dialect:
    separator: str = ","
    decimal: str = "."
    bom: bool = False


DIALECTS = {
    "default": Dialect(),
    "excel": Dialect(bom=True),
    "excel-eu": Dialect(separator=";", decimal=",", bom=True),
}


def dialect_named(name: str) -> Dialect:
    return DIALECTS[name]


@dataclass(frozen=True, slots=True)
class WriteResult:
    """What was stored: the size and sha256 of the bytes written to the sink."""

    size: int
    sha256: str


def format_float(value: float) -> str:
    """Plain decimal with full precision, never exponent notation."""
    text = repr(value)
    if "e" in text or "E" in text:
        text = format(Decimal(text), "f")
    return text


def _text_formatter(separator: str) -> Callable[[str], str]:
    specials = (separator, '"', "\r", "\n")

    def fmt(text: str) -> str:
        if text.startswith(FORMULA_STARTS):
            text = "'" + text
        if any(ch in text for ch in specials):
            return '"' + text.replace('"', '""') + '"'
        return text

    return fmt


def _cell_formatter(dialect: Dialect) -> Callable[[Any], str]:
    text = _text_formatter(dialect.separator)
    comma = dialect.decimal != "."

    def fmt(value: Any) -> str:
        if value is None:
            return ""
        if isinstance(value, str):
            return text(value)
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, int):
            return str(value)
        if isinstance(value, float):
            number = format_float(value)
            return number.replace(".", ",") if comma else number
        return text(orjson.dumps(value).decode())

    return fmt


class _HashingSink:
    """Counts and hashes the bytes on their way to the real sink."""

    def __init__(self, sink: IO[bytes]) -> None:
        self.sink = sink
        self.size = 0
        self.hash = hashlib.sha256()

    def write(self, data: bytes) -> int:
        self.size += len(data)
        self.hash.update(data)
        return self.sink.write(data)

    def flush(self) -> None:
        self.sink.flush()


def write_csv(
    headings: list[str],
    rows: Iterable[list[Any]],
    sink: IO[bytes],
    *,
    dialect: Dialect = DIALECTS["default"],
    compress: bool = False,
) -> WriteResult:
    """Write the header and rows to ``sink``; return the size and sha256 of what it got."""
    hashing = _HashingSink(sink)
    out: Any = (
        gzip.GzipFile(fileobj=hashing, mode="wb", mtime=0, filename="") if compress else hashing
    )
    sep = dialect.separator
    text = _text_formatter(sep)
    cell = _cell_formatter(dialect)
    header = sep.join(text(h) for h in headings) + "\r\n"
    out.write(((BOM if dialect.bom else "") + header).encode())
    chunk: list[str] = []
    for row in rows:
        chunk.append(sep.join([cell(v) for v in row]))
        if len(chunk) == ROWS_PER_CHUNK:
            out.write(("\r\n".join(chunk) + "\r\n").encode())
            chunk.clear()
    if chunk:
        out.write(("\r\n".join(chunk) + "\r\n").encode())
    if compress:
        out.close()  # writes the gzip trailer; the sink stays open
    return WriteResult(hashing.size, hashing.hash.hexdigest())
