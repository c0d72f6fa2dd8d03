"""A combined table → CSV bytes into a binary sink, with no other I/O (SPEC §4, protocol.md §5).

Dialects: ``default`` (UTF-8, no BOM, comma, CRLF after every line, RFC 4180
minimal quoting), ``excel`` (the same with a UTF-8 BOM) and ``excel-eu`` (BOM,
``;`` separator, decimal comma in non-integer numbers). ``gzip`` wraps the sink
(mtime 0, so equal tables give equal bytes). Numbers are written by polars in
plain decimal with full (shortest round-trip) precision, never in exponent form.
The header is written here, with the same quoting and formula safety as cells.
"""

from __future__ import annotations

import gzip
import hashlib
from dataclasses import dataclass
from typing import IO, Any

import polars as pl

from .combine import FORMULA_STARTS

__all__ = [
    "DIALECTS",
    "EXCEL_MAX_ROWS",
    "Dialect",
    "WriteResult",
    "spreadsheet_warnings",
    "write_csv",
]

BOM = b"\xef\xbb\xbf"


#: Rows an Excel sheet holds, header included.
EXCEL_MAX_ROWS = 1_048_576


@dataclass(frozen=True, slots=True)
class Dialect:
    separator: str = ","
    decimal_comma: bool = False
    bom: bool = False


DIALECTS = {
    "default": Dialect(),
    "excel": Dialect(bom=True),
    "excel-eu": Dialect(separator=";", decimal_comma=True, bom=True),
}


@dataclass(frozen=True, slots=True)
class WriteResult:
    """What the sink received: its size and sha256."""

    size: int
    sha256: str


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


def spreadsheet_warnings(dialect: str, rows: int) -> list[str]:
    """What a user of an Excel dialect should know before opening the file."""
    if dialect.startswith("excel") and rows + 1 > EXCEL_MAX_ROWS:
        return [
            f"the file has {rows} data rows; Excel opens at most {EXCEL_MAX_ROWS - 1} "
            "below the header and drops the rest"
        ]
    return []


def heading(text: str, separator: str) -> str:
    if text.startswith(FORMULA_STARTS):
        text = "'" + text
    if any(ch in text for ch in (separator, '"', "\r", "\n")):
        return '"' + text.replace('"', '""') + '"'
    return text


def write_csv(
    headings: list[str],
    table: pl.DataFrame,
    sink: IO[bytes],
    *,
    dialect: Dialect = DIALECTS["default"],
    compress: bool = False,
) -> WriteResult:
    """Write the header and ``table`` to ``sink``; return the size and sha256 of what it got."""
    hashing = _HashingSink(sink)
    out: Any = (
        gzip.GzipFile(fileobj=hashing, mode="wb", mtime=0, filename="") if compress else hashing
    )
    header = dialect.separator.join(heading(h, dialect.separator) for h in headings) + "\r\n"
    out.write((BOM if dialect.bom else b"") + header.encode())
    if table.height:
        table.write_csv(
            out,
            include_header=False,
            separator=dialect.separator,
            line_terminator="\r\n",
            quote_style="necessary",
            null_value="",
            float_scientific=False,
            decimal_comma=dialect.decimal_comma,
        )
    if compress:
        out.close()  # writes the gzip trailer; the sink stays open
    return WriteResult(hashing.size, hashing.hash.hexdigest())
