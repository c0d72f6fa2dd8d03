"""A metric answer's bytes → a polars frame of its records, with no other I/O.

Answers can be hundreds of megabytes, so the common shape gets a fast path:
``{"segments": [{...},{...},...], "meta": {...}}`` is cut into newline-delimited
records (``},{`` → ``}\\n{``) and read by polars' NDJSON reader, which releases
the GIL. The cut is checked, not trusted: a ``},{`` inside a string or a nested
array always leaves an invalid line, and the rest of the document (with an empty
array) must parse as the expected object. Whenever the fast path fails, the
answer is parsed whole with orjson, which is exact for any valid JSON.

Schema inference is most of polars' reading time, so the caller may name the
fields it needs (``fields``): keys as (categorical) text, plain values as Float64 (integers
print the same, ``1284``). Other fields are skipped. If a record does not fit
(a value that is text, an object…), reading fails and the answer is read again
with full inference; nothing is ever silently dropped or coerced to null.

Numbers stay numbers per cell (SPEC §8). A value field whose records mix
numbers and text (read exactly, through orjson) becomes one text column in
which each number is its plain decimal text and each text value starts with
:data:`TEXT_MARK`; the caller learns which fields were mixed (``mixed``), and the
writer takes the mark off and applies formula safety to those cells only.

An export's readers share a :class:`RecordSpill`: once they hold more records than
its limit (half the export's memory budget), each writes what it holds to an Arrow
file and returns its answer as a scan of those files (a ``LazyFrame``), so memory
no longer grows with the answers.
"""

from __future__ import annotations

import io
import os
import threading
from collections.abc import Iterable, Mapping
from decimal import Decimal
from typing import Any

import orjson
import polars as pl

from ..errors import StorageFailed, UpstreamError
from ..frames import parse_answer
from .workdirs import WorkDir

__all__ = [
    "SMALL_ANSWER_BYTES",
    "TEXT_MARK",
    "AnswerReader",
    "ReadAgain",
    "RecordSpill",
    "Records",
    "Schema",
    "number_text",
    "schema",
    "to_frame",
]

#: Starts each text cell of a value column that mixes numbers and text.
TEXT_MARK = "\x00"

#: An answer's records: in memory, or a scan of the files they were spilled to.
Records = pl.DataFrame | pl.LazyFrame

#: Field name → polars type, for the fields a CSV reads from an answer's records.
Schema = Mapping[str, "pl.DataType | type[pl.DataType]"]

#: Answers up to this size are parsed whole: the fast path only pays off on big ones.
SMALL_ANSWER_BYTES = 256 * 1024
#: Answers are rewritten into lines this many bytes at a time (see _ndjson).
_CHUNK = 1024 * 1024
#: The streaming reader reads records this many bytes at a time: small batches keep four
#: answers read at once within tens of megabytes (16 MiB: 0.7-1.6 GB peak during the big
#: export's fetch, 4 MiB: 0.55-0.65 GB, at the same speed).
BATCH_BYTES = 4 * 1024 * 1024
#: Text without a record boundary over this many batches is not read as it comes.
_MAX_UNCUT_BATCHES = 4
#: The streaming reader looks this far for the opening of the records' array.
_MAX_HEAD = 64 * 1024
#: Once an export spills, each reader writes its records out this many bytes at a time.
SPILL_BYTES = 32 * 1024 * 1024


class RecordSpill:
    """The records an export's readers hold, and where they go past ``limit`` bytes.

    Holding more records than the limit means the export goes out of core anyway (the
    in-memory join costs several times the records: combine.IN_MEMORY_FACTOR), so
    from then on each reader writes its records to an Arrow file in a directory made
    for the export in ``directory`` (``CSVGEN_SPILL_DIR``; workdirs.py). :meth:`close`
    removes it. Readers in several threads share one spill.
    """

    def __init__(self, limit: int, directory: str | None) -> None:
        self.limit = limit
        self._directory = directory
        self._work: WorkDir | None = None
        self._held = 0
        self._files = 0
        self._lock = threading.Lock()
        self._closed = False
        self.spilling = False

    @property
    def wrote(self) -> bool:
        """Whether records were written out (and are not removed yet)."""
        return self._work is not None

    def hold(self, size: int) -> bool:
        """Count ``size`` more bytes of records held (less when negative); whether
        the export spills."""
        with self._lock:
            self._held += size
            self.spilling = self.spilling or self._held > self.limit
            return self.spilling

    def write(self, frames: list[pl.DataFrame]) -> str:
        """``frames`` as one Arrow file; its path.

        Raises:
            StorageFailed: the spill directory is full or gone.
        """
        try:
            # The file is made under the lock, so that close() either removes it or
            # comes first and no file is made: nothing is left whatever the threads do.
            with self._lock:
                if self._closed:  # a reader's thread outlived its export (cancelled)
                    raise StorageFailed("the export ended")
                if self._work is None:
                    self._work = WorkDir("csvgen-records-", self._directory)
                self._files += 1
                path = os.path.join(self._work.path, f"records-{self._files}.arrow")
                out = open(path, "wb")  # noqa: SIM115 (closed below)
            with out:
                pl.concat(frames, rechunk=False).write_ipc(out, compression="lz4")
        except OSError as exc:
            raise StorageFailed.spill("the answers' records", exc) from None
        return path

    def close(self) -> None:
        """Remove the spilled records; nothing is spilled after."""
        with self._lock:
            self._closed = True
            work, self._work = self._work, None
        if work is not None:
            work.remove()


def to_frame(
    data: bytes | list[bytes],
    facet: str,
    fields: Schema | None = None,
    mixed: set[str] | None = None,
) -> pl.DataFrame:
    """The records of ``facet`` (``segments`` or ``summary``) of one answer.

    ``data`` is the answer's JSON text, whole or as the list of its parts (which is
    emptied once joined). The names of the value fields that mix numbers and text are
    added to ``mixed``: the writer must be told which columns they feed, since a mark
    found in the text itself could have come from upstream.

    Raises:
        UpstreamError: the answer is an error answer, has no such array, or cannot be read.
    """
    if isinstance(data, list):
        # Here, in the reader's thread: a big join releases the GIL. The parts are
        # consumed (the list emptied), so an answer is never held twice.
        parts, data = data, b"".join(data)
        parts.clear()
    if len(data) > SMALL_ANSWER_BYTES:
        frame = _fast(data, facet, fields)
        if frame is not None:
            return frame
    answer = parse_answer(data)
    records = answer.get(facet) if isinstance(answer, dict) else None
    if not isinstance(records, list):
        raise UpstreamError(f"the answer has no {facet} array")
    if not all(isinstance(r, dict) for r in records):
        raise UpstreamError(f"a record of the {facet} array is not an object")
    for name, dtype in (fields or {}).items():
        if dtype == pl.Float64 and _mark_mixed(records, name) and mixed is not None:
            mixed.add(name)
    try:
        # Only the fields the export reads (all when none are named), as the fast path
        # reads them: a field it does not read, whatever its shape, never makes the
        # records unreadable.
        names = list(fields) if fields else None
        return pl.DataFrame(records, schema=names, infer_schema_length=None, strict=False)
    except (pl.exceptions.PolarsError, TypeError, ValueError, OverflowError):
        raise UpstreamError(f"the {facet} records cannot be read") from None


class ReadAgain(Exception):
    """The streaming reader cannot trust what it has read: ask for the answer again and
    read it whole (``AnswerReader(..., whole=True)``)."""


class AnswerReader:
    """One answer's records, read as its parts arrive: the streaming form of :func:`to_frame`.

    ``feed`` takes the answer's parts in order, as they arrive; ``finish`` returns
    the same frame as ``to_frame`` on the whole answer. Both may run in a worker
    thread, one call at a time. Memory holds the records read so far (as columns)
    and at most one batch of raw text, whatever the answer's size:

    - an answer of at most ``SMALL_ANSWER_BYTES`` is kept and read whole at the end;
    - a bigger one, when the plan names the fields it reads, is cut into records at
      ``},{`` and read by polars ``BATCH_BYTES`` at a time, the raw text released as
      soon as read;
    - an answer without named fields, or without its records' array in the first
      64 KiB, is kept whole and read at the end by ``to_frame`` (``whole=True`` does
      that from the start);
    - when what was released cannot be trusted after all (a batch that polars cannot
      read with the expected types, an end of the document that is not the plain
      shape), ``feed`` or ``finish`` raises :class:`ReadAgain`: the caller asks for the
      answer again and reads it whole, exactly, as it always was. Answers of the
      usual shape never pay for that fallback; odd ones pay a second request.
    - with a ``spill`` whose limit the export's readers passed, the records read are
      written out ``SPILL_BYTES`` at a time (an answer read whole, at once) and
      ``finish`` returns a scan of them.

    A wrong cut (``},{`` inside a string or a nested array) always leaves an invalid
    line, so each batch that reads starts and ends on a record's boundary.
    """

    def __init__(
        self,
        facet: str,
        fields: Schema | None,
        mixed: set[str] | None = None,
        *,
        whole: bool = False,
        small: int = SMALL_ANSWER_BYTES,
        batch: int = BATCH_BYTES,
        spill: RecordSpill | None = None,
    ) -> None:
        self.facet = facet
        self.spill = spill
        self.small, self.batch = small, batch
        self.fields = dict(fields) if fields else None
        self.mixed = mixed
        self._opening = b'"' + facet.encode() + b'":['
        self._held: list[bytes] = []  # parts kept: a small answer, or one read whole
        self._held_size = 0
        self._whole = whole or not self.fields
        self._streaming = False
        self._head: bytes | None = None  # the document up to and including "facet":[
        self._rest = b""  # unread text, from a record's start
        self._pending: list[bytes] = []  # parts not yet cut (less than a batch)
        self._pending_size = 0
        self._frames: list[pl.DataFrame] = []
        self._frames_size = 0  # bytes of records in _frames
        self._files: list[str] = []  # records written out (spill)

    def feed(self, parts: list[bytes]) -> None:
        """Take the next parts.

        Raises:
            ReadAgain: a batch did not read.
        """
        if not self._streaming:
            self._held += parts
            self._held_size += sum(map(len, parts))
            if self._whole or self._held_size <= self.small:
                return
            data = b"".join(self._held)
            at = data.find(self._opening)
            if at < 0:
                self._whole = len(data) > _MAX_HEAD  # else: look again with more
                return
            self._held, self._streaming = [], True
            first = at + len(self._opening)
            self._head = data[:first]
            parts = [data[first:]]
        self._pending += parts
        self._pending_size += sum(map(len, parts))
        if self._pending_size >= self.batch:
            self._cut()

    def _cut(self) -> None:
        """Read the whole records of what came so far; keep the last, partial one.

        Each byte is joined and scanned a bounded number of times, however small the
        parts: they wait in ``_pending`` until a batch is there, and text without a
        record boundary in ``_MAX_UNCUT_BATCHES`` batches (a huge record, or records not
        separated by ``},{``) is not the plain shape: ReadAgain, not a growing rescan."""
        data = b"".join([self._rest, *self._pending])
        self._pending, self._pending_size = [], 0
        cut = data.rfind(b"},{")
        if cut >= 0:
            self._rest = data[cut + 2 :]
            self._read(_ndjson(data, 0, cut + 1))
        elif len(data) > _MAX_UNCUT_BATCHES * self.batch:
            self.close()
            raise ReadAgain
        else:
            self._rest = data

    def finish(self) -> Records:
        """The answer's records: a scan of its files when it was spilled.

        Raises:
            UpstreamError: as :func:`to_frame`.
            ReadAgain: the end of the answer is not the plain shape.
        """
        if not self._streaming:
            parts, self._held = self._held, []
            frame = to_frame(parts, self.facet, self.fields, self.mixed)
            size = int(frame.estimated_size())
            if self.spill is None or not self.spill.hold(size):
                return frame
            self._frames, self._frames_size = [frame], size
            self._write_out()
            return pl.scan_ipc(self._files)
        data = b"".join([self._rest, *self._pending])
        self._rest, self._pending = b"", []
        end = data.rfind(b"}]")
        assert self._head is not None
        try:
            rest: Any = orjson.loads(self._head + data[end + 1 :]) if end >= 0 else None
        except orjson.JSONDecodeError:
            rest = None
        if not isinstance(rest, dict) or rest.get(self.facet) != [] or "error" in rest:
            raise ReadAgain
        self._read(_ndjson(data, 0, end + 1))
        if self._files or (self.spill is not None and self.spill.spilling):
            if self._frames or not self._files:
                self._write_out()
            return pl.scan_ipc(self._files)
        frames, self._frames = self._frames, []
        self._frames_size = 0  # the caller holds them now: still counted by the spill
        return pl.concat(frames, rechunk=False)

    def close(self) -> None:
        """Drop everything held."""
        self._held, self._rest, self._frames, self._pending = [], b"", [], []
        self._pending_size = 0
        self._release()

    def _release(self) -> None:
        if self.spill is not None and self._frames_size:
            self.spill.hold(-self._frames_size)
        self._frames_size = 0

    def _write_out(self) -> None:
        """The records held, to a spill file."""
        assert self.spill is not None
        self._files.append(self.spill.write(self._frames))
        self._frames = []
        self._release()

    def _read(self, lines: io.BytesIO) -> None:
        """Whole records, one a line (:func:`_ndjson`), into a frame."""
        assert self.fields is not None
        try:
            frame = pl.read_ndjson(lines, schema=self.fields)
        except pl.exceptions.PolarsError:
            self.close()
            raise ReadAgain from None
        self._frames.append(frame)
        if self.spill is not None:
            size = int(frame.estimated_size())
            self._frames_size += size
            if self.spill.hold(size) and self._frames_size >= min(SPILL_BYTES, self.spill.limit):
                self._write_out()


def schema(reads: Iterable[tuple[str, str]] | None) -> Schema | None:
    """A plan's ``reads`` as polars types (None: infer): values as Float64, keys as
    categorical text (a few hundred dates and entities repeated over millions of
    records: four bytes a record instead of the text, a third of the memory)."""
    if reads is None:
        return None
    return {name: pl.Categorical if kind == "key" else pl.Float64 for name, kind in reads}


def number_text(value: int | float) -> str:
    """A number as polars writes a Float64 cell: plain decimal, shortest round trip."""
    if isinstance(value, int):
        return str(value)
    text = format(Decimal(repr(value)), "f")
    return text.rstrip("0").rstrip(".") if "." in text else text


def _mark_mixed(records: list[dict[str, Any]], name: str) -> bool:
    """A field holding numbers and text: numbers as text, text cells marked (in place).

    Returns whether the field was mixed."""
    kinds = {type(r.get(name)) for r in records}
    if str not in kinds or not kinds & {int, float}:
        return False
    for r in records:
        value = r.get(name)
        if isinstance(value, str):
            r[name] = TEXT_MARK + value
        elif isinstance(value, int | float) and not isinstance(value, bool):
            r[name] = number_text(value)
    return True


def _fast(data: bytes, facet: str, fields: Schema | None) -> pl.DataFrame | None:
    """The fast path, or None when the answer is not of the plain shape it reads."""
    opening = b'"' + facet.encode() + b'":['
    start = data.find(opening)
    end = data.rfind(b"}]")
    if start < 0 or end < start:
        return None
    first = start + len(opening)
    try:
        rest: Any = orjson.loads(data[:first] + data[end + 1 :])
    except orjson.JSONDecodeError:
        return None
    if not isinstance(rest, dict) or rest.get(facet) != [] or "error" in rest:
        return None
    lines = _ndjson(data, first, end + 1)
    if fields:
        try:
            return pl.read_ndjson(lines, schema=dict(fields))
        except pl.exceptions.PolarsError:
            return None  # a record does not fit the expected types: read it exactly
    try:
        return pl.read_ndjson(lines, infer_schema_length=None)
    except pl.exceptions.PolarsError:
        return None


def _ndjson(data: bytes, start: int, stop: int, chunk: int = _CHUNK) -> io.BytesIO:
    """``data[start:stop]`` with every ``},{`` cut into ``}\n{``, built a chunk at a time.

    ``bytes.replace`` and slicing hold the GIL: done at once on a 200 MB answer they
    stall the event loop for 0.4 s, on one 8 MiB part 8-14 ms (measured). In 1 MiB
    chunks each step takes about a millisecond and the loop runs in between. A cut
    never falls inside ``},{``.
    """
    out = io.BytesIO()
    pos = start
    while pos < stop:
        cut = data.find(b"},{", min(pos + chunk, stop), stop)
        end = stop if cut < 0 else cut + 1
        out.write(data[pos:end].replace(b"},{", b"}\n{"))
        if cut < 0:
            break
        out.write(b"\n")
        pos = cut + 2
    out.seek(0)
    return out
