"""The write stage: rows in sorted batches → one file, in the format the plan names.

**The seam for file formats.** A format is a :class:`FileFormat`: its key's extension,
its ContentType, the warnings its readers need, and a :class:`FileWriter` that takes
batches of rows and returns the file's size and sha256. Adding a format is one module
that defines one, and one line in :data:`FORMATS`. Whatever the format, the manifest's
column types are read here from the batches as written (manifest.py).

The file goes to an unnamed temporary file in ``CSVGEN_SPILL_DIR`` (gone when closed,
or when the process dies), written in a worker thread a batch at a time; cancelled, or
past ``CSVGEN_MAX_BYTES``, the thread stops at its next batch, and a long step within
the rows (DuckDB's join and sort, out of core) is interrupted.
"""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
from collections.abc import Callable, Collection, Generator, Iterator
from dataclasses import dataclass
from typing import IO, Protocol

import polars as pl

from ..errors import StorageFailed, TooLarge
from .csvwrite import CsvFormat, WriteResult
from .manifest import column_types, merge_types
from .plan import ExportPlan
from .progress import Progress
from .stop import Stop

__all__ = ["FORMATS", "FileFormat", "FileWriter", "Rows", "Written", "file_format", "write"]

#: The rows of an export, in sorted batches (each call starts them again); given the
#: write's :class:`~csvgen.csvexport.stop.Stop`, a long step in them can be interrupted.
Rows = Callable[..., Generator[pl.DataFrame]]


class FileWriter(Protocol):
    rows: int

    @property
    def size(self) -> int:
        """The bytes written so far."""
        ...

    def write(self, batch: pl.DataFrame) -> None: ...

    def close(self) -> WriteResult:
        """Finish the file (its sink stays open): its size, sha256 and what it escaped."""
        ...


class FileFormat(Protocol):
    def extension(self, plan: ExportPlan) -> str: ...

    def content_type(self, plan: ExportPlan) -> str: ...

    def writer(self, plan: ExportPlan, sink: IO[bytes], mixed: Collection[int]) -> FileWriter: ...

    def warnings(self, plan: ExportPlan, rows: int) -> list[str]:
        """What a reader of this file should know (e.g. a spreadsheet's row limit)."""
        ...


#: Every file format, by the name a request gives it.
FORMATS: dict[str, FileFormat] = {
    "csv": CsvFormat(),
}


def file_format(plan: ExportPlan) -> FileFormat:
    return FORMATS[getattr(plan, "file_format", "csv")]


@dataclass(frozen=True, slots=True)
class Written:
    """The file as written: its bytes' size and digest, its rows and its columns' types."""

    result: WriteResult
    rows: int
    types: list[tuple[str, int]]


@contextlib.contextmanager
def spill_file(directory: str | None) -> Iterator[IO[bytes]]:
    """An unnamed temporary file for the file: gone when closed, or when the process dies."""
    with disk_errors("the CSV"):
        f = tempfile.TemporaryFile(prefix="csvgen-", dir=directory)  # noqa: SIM115 (closed below)
    with f:
        yield f


@contextlib.contextmanager
def disk_errors(what: str) -> Iterator[None]:
    try:
        yield
    except OSError as exc:
        raise StorageFailed.spill(what, exc) from None


async def write(
    plan: ExportPlan,
    rows: Rows,
    f: IO[bytes],
    mixed: set[int],
    max_bytes: int,
    progress: Progress,
) -> Written:
    """Write the file in a worker thread, a batch of rows at a time. Cancelled, or past
    ``max_bytes`` (``CSVGEN_MAX_BYTES``: too_large), the thread stops at its next batch,
    and the cancellation goes on once it has (its spill files are gone by then)."""
    stop = Stop()
    work = asyncio.ensure_future(
        asyncio.to_thread(write_rows, plan, rows, f, mixed, max_bytes, stop, progress)
    )
    try:
        with disk_errors("the CSV"):
            return await asyncio.shield(work)
    except asyncio.CancelledError:
        stop.set()
        with contextlib.suppress(BaseException):
            await work
        raise


def write_rows(
    plan: ExportPlan,
    rows: Rows,
    f: IO[bytes],
    mixed: set[int],
    max_bytes: int,
    stop: Stop,
    progress: Progress | None = None,
) -> Written:
    writer = file_format(plan).writer(plan, f, mixed)
    types: list[tuple[str, int]] | None = None
    with contextlib.closing(rows(stop=stop)) as batches:
        for batch in batches:
            if stop.is_set():
                raise asyncio.CancelledError
            writer.write(batch)
            if progress is not None:
                progress.rows_written = writer.rows
            if writer.size > max_bytes:
                raise TooLarge(
                    f"the export is at least {writer.size} bytes; the limit is {max_bytes}"
                )
            kinds = column_types(plan, batch)
            types = kinds if types is None else merge_types(types, kinds)
    result = writer.close()
    if result.size > max_bytes:  # the gzip trailer
        raise TooLarge(f"the export is {result.size} bytes; the limit is {max_bytes}")
    f.flush()
    assert types is not None  # every source yields a batch, maybe empty
    return Written(result, writer.rows, types)
