"""A combined table → CSV bytes into a binary sink, with no other I/O (SPEC §4, protocol.md §5).

Dialects: ``default`` (UTF-8, no BOM, comma, CRLF after every line, RFC 4180
minimal quoting), ``excel`` (the same with a UTF-8 BOM) and ``excel-eu`` (BOM,
``;`` separator, decimal comma in non-integer numbers). ``gzip`` wraps the sink
(mtime 0, so equal tables give equal bytes). Numbers are written by polars in
plain decimal with full (shortest round-trip) precision, never in exponent form.
The header is written here, with the same quoting as cells.

Formula safety (SPEC §4, §8) is the writer's: a text cell (headings included)
that starts with ``=``, ``+``, ``-``, ``@``, tab or CR is written with a leading
``'``; a number never is, cell by cell. A column in which the upstream answer
mixed numbers and text arrives as text whose text cells carry
:data:`~csvgen.csvexport.answers.TEXT_MARK`; the caller names such columns
(``mixed``, from the reader), never this module from the text, which upstream
could forge: their numbers are written as numbers (with the dialect's decimal
separator) and their text cells made safe as text.
"""

from __future__ import annotations

import gzip
import hashlib
from collections.abc import Collection
from dataclasses import dataclass
from typing import IO, Any

import polars as pl

from .answers import TEXT_MARK
from .dialects import DIALECTS, Dialect
from .plan import ExportPlan

__all__ = [
    "CSV_CONTENT_TYPE",
    "EXCEL_MAX_ROWS",
    "FORMULA_STARTS",
    "GZIP_CONTENT_TYPE",
    "CsvFormat",
    "CsvWriter",
    "WriteResult",
    "spreadsheet_warnings",
    "write_csv",
]

BOM = b"\xef\xbb\xbf"
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


#: Rows an Excel sheet holds, header included.
EXCEL_MAX_ROWS = 1_048_576


CSV_CONTENT_TYPE = "text/csv; charset=utf-8; header=present"
GZIP_CONTENT_TYPE = "application/gzip"


class CsvFormat:
    """The ``csv`` file format (files.py's seam): its dialects and gzip."""

    def extension(self, plan: ExportPlan) -> str:
        return ".csv.gz" if plan.gzip else ".csv"

    def content_type(self, plan: ExportPlan) -> str:
        return GZIP_CONTENT_TYPE if plan.gzip else CSV_CONTENT_TYPE

    def writer(self, plan: ExportPlan, sink: IO[bytes], mixed: Collection[int]) -> CsvWriter:
        headings = [c.heading for c in plan.columns]
        dialect = DIALECTS[plan.dialect]
        return CsvWriter(headings, sink, dialect=dialect, compress=plan.gzip, mixed=mixed)

    def warnings(self, plan: ExportPlan, rows: int) -> list[str]:
        return spreadsheet_warnings(plan.dialect, rows)


@dataclass(frozen=True, slots=True)
class WriteResult:
    """What the sink received: its size and sha256; the columns that mixed numbers and text."""

    size: int
    sha256: str
    mixed: tuple[int, ...] = ()
    escaped: int = 0  # cells (headings included) written with a leading ' (formula safety)


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
    mixed: Collection[int] = (),
) -> WriteResult:
    """Write the header and ``table`` to ``sink``; return the size and sha256 of what it got.

    ``mixed``: the indices of the columns that mix numbers and marked text (see above).
    """
    writer = CsvWriter(headings, sink, dialect=dialect, compress=compress, mixed=mixed)
    writer.write(table)
    return writer.close()


class CsvWriter:
    """:func:`write_csv` a batch of rows at a time: the header first, then each batch.

    Batches in order give the same bytes as their concatenation written at once.
    """

    def __init__(
        self,
        headings: list[str],
        sink: IO[bytes],
        *,
        dialect: Dialect = DIALECTS["default"],
        compress: bool = False,
        mixed: Collection[int] = (),
    ) -> None:
        self.dialect = dialect
        self.mixed_columns = mixed
        self.compress = compress
        self._hashing = _HashingSink(sink)
        self._out: Any = (
            gzip.GzipFile(fileobj=self._hashing, mode="wb", mtime=0, filename="")
            if compress
            else self._hashing
        )
        sep = dialect.separator
        header = sep.join(heading(h, sep) for h in headings) + "\r\n"
        self._out.write((BOM if dialect.bom else b"") + header.encode())
        self.escaped = sum(h.startswith(FORMULA_STARTS) for h in headings)
        self.mixed: tuple[int, ...] = ()
        self.rows = 0

    def write(self, table: pl.DataFrame) -> None:
        safe, self.mixed, escaped = _safe(table, self.dialect.decimal_comma, self.mixed_columns)
        self.escaped += escaped
        self.rows += table.height
        if table.height:
            safe.write_csv(
                self._out,
                include_header=False,
                separator=self.dialect.separator,
                line_terminator="\r\n",
                quote_style="necessary",
                null_value="",
                float_scientific=False,
                decimal_comma=self.dialect.decimal_comma,
            )

    @property
    def size(self) -> int:
        """The bytes the sink has had so far (compressed, with gzip)."""
        return self._hashing.size

    def close(self) -> WriteResult:
        """Finish the file (the gzip trailer); the sink stays open."""
        if self.compress:
            self._out.close()
        h = self._hashing
        return WriteResult(h.size, h.hash.hexdigest(), self.mixed, self.escaped)


def _safe(
    table: pl.DataFrame, decimal_comma: bool, mixed_columns: Collection[int]
) -> tuple[pl.DataFrame, tuple[int, ...], int]:
    """Formula safety for every text column: the safe table, the indices of the mixed
    columns among them, and how many cells were escaped."""
    text = [n for n, dtype in enumerate(table.dtypes) if dtype in (pl.String, pl.Categorical)]
    if not text:
        return table, (), 0
    names = [table.columns[n] for n in text]
    marked = [n in mixed_columns for n in text]
    mixed = tuple(n for n, is_mixed in zip(text, marked, strict=True) if is_mixed)
    categorical = {c for c in names if table.schema[c] == pl.Categorical}
    counts = table.select(
        _formula(pl.col(c).str.slice(len(TEXT_MARK)) if is_mixed else pl.col(c), c in categorical)
        .and_(pl.col(c).str.starts_with(TEXT_MARK) if is_mixed else pl.lit(True))
        .sum()
        .alias(c)
        for c, is_mixed in zip(names, marked, strict=True)
    ).row(0)
    # Only the columns that change are rewritten: the mixed ones (their marks go) and those
    # with a cell to escape. Most exports have none (the big export's write: 0.89 -> 0.6 s).
    changed = [
        (c, is_mixed) for c, is_mixed, n in zip(names, marked, counts, strict=True) if is_mixed or n
    ]
    safe = table.with_columns(
        _mixed_safe(c, decimal_comma)
        if is_mixed
        else _safe_text(pl.col(c).cast(pl.String)).alias(c)
        for c, is_mixed in changed
    )
    return safe, mixed, int(sum(n or 0 for n in counts))


def _mixed_safe(name: str, decimal_comma: bool) -> pl.Expr:
    """Numbers as text and marked text: the numbers as they are, the text made safe."""
    col = pl.col(name)
    text = col.str.slice(len(TEXT_MARK))
    number = col.str.replace(".", ",", literal=True) if decimal_comma else col
    return (
        pl.when(col.str.starts_with(TEXT_MARK))
        .then(pl.when(text == "").then(None).otherwise(_safe_text(text)))
        .otherwise(number)
        .alias(name)
    )


def _formula(col: pl.Expr, categorical: bool = False) -> pl.Expr:
    """Whether text would be run as a formula by a spreadsheet (categorical text: checked
    on its categories, without making a column of text)."""
    text = col.cat if categorical else col.str
    return pl.any_horizontal(text.starts_with(c) for c in FORMULA_STARTS)


def _safe_text(col: pl.Expr) -> pl.Expr:
    """Text a spreadsheet would run as a formula gets a leading quote."""
    return (
        pl.when(_formula(col)).then(pl.lit("'") + col).otherwise(col).alias(col.meta.output_name())
    )
