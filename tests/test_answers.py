"""Reading answers: the fast NDJSON path must give exactly what a full JSON parse gives."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import polars as pl
import pytest

from csvgen.csvexport.answers import (
    SMALL_ANSWER_BYTES,
    AnswerReader,
    ReadAgain,
    RecordSpill,
    to_frame,
)
from csvgen.errors import StorageFailed, UpstreamError


def big(records: list[dict[str, Any]], **extra: Any) -> bytes:
    """An answer over the fast-path threshold, made of ``records`` repeated."""
    copies = 2 * SMALL_ANSWER_BYTES // len(orjson.dumps(records)) + 1
    return orjson.dumps({"segments": records * copies, "meta": {"units": {}}, **extra})


def exact(data: bytes) -> pl.DataFrame:
    return pl.DataFrame(orjson.loads(data)["segments"], infer_schema_length=None, strict=False)


PLAIN = [{"index": "2024-04-01T00:00:00.000", "location": "L1", "entries": 3},
         {"index": "2024-04-02T00:00:00.000", "location": "L1", "entries": None}]  # fmt: skip


@pytest.mark.parametrize(
    "records",
    [
        PLAIN,
        [{"index": "i", "location": "L},{1", "entries": 1}],  # the cut inside a string
        [{"index": "i", "location": "L1", "entries": {"by": [{"a": 1}, {"a": 2}]}}],  # nested
        [{"index": "i", "location": "L1", "entries": 1.5}, {"index": "j", "location": "L2"}],
    ],
    ids=["plain", "cut-in-string", "nested-array", "missing-field"],
)
def test_fast_path_equals_a_full_parse(records: list[dict[str, Any]]) -> None:
    """Whatever the records hold, the frame equals the one from parsing the whole document."""
    data = big(records)
    assert to_frame(data, "segments").equals(exact(data))


def test_meta_with_brackets_and_pretty_printing_still_read_exactly() -> None:
    """Layouts the cut cannot handle are read exactly by the fallback."""
    data = big(PLAIN, meta={"note": "}]"})
    assert to_frame(data, "segments").equals(exact(data))
    pretty = orjson.dumps(orjson.loads(data), option=orjson.OPT_INDENT_2)
    assert to_frame(pretty, "segments").equals(exact(data))


def test_named_fields_are_read_as_text_and_numbers() -> None:
    """With the fields named, only those are read: keys as text, values as Float64."""
    data = big(PLAIN)
    frame = to_frame(
        data, "segments", {"index": pl.String, "location": pl.String, "entries": pl.Float64}
    )
    assert frame.schema == {"index": pl.String, "location": pl.String, "entries": pl.Float64}
    assert frame["entries"].to_list()[:2] == [3.0, None]


def test_named_fields_that_do_not_fit_are_inferred_not_nulled() -> None:
    """A text value where a number was expected: the answer is re-read, nothing is lost."""
    data = big([{"index": "i", "location": "L1", "entries": "n/a"}])
    frame = to_frame(
        data, "segments", {"index": pl.String, "location": pl.String, "entries": pl.Float64}
    )
    assert set(frame["entries"].to_list()) == {"n/a"}


@pytest.mark.parametrize("size", ["small", "big"])
def test_error_answers(size: str) -> None:
    """An object with a top-level error is an upstream error, however large."""
    detail = "x" * (SMALL_ANSWER_BYTES if size == "big" else 10)
    data = orjson.dumps({"error": {"code": "bad_request", "message": detail}, "segments": []})
    with pytest.raises(UpstreamError) as info:
        to_frame(data, "segments")
    assert info.value.message == f"bad_request: {detail}"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"[1, 2]", "the answer has no segments array"),
        (b'{"summary": []}', "the answer has no segments array"),
        (b'{"segments": [1]}', "a record of the segments array is not an object"),
        (b"{nope", "the answer is not JSON"),
    ],
)
def test_unreadable_answers(data: bytes, message: str) -> None:
    with pytest.raises(UpstreamError) as info:
        to_frame(data, "segments")
    assert info.value.message == message  # csvgen's words only, no parser text


@pytest.mark.parametrize(
    "records",
    [PLAIN, [{"index": "i", "location": "L},{1", "entries": 1}, {"index": "j", "location": "x"}]],
    ids=["plain", "cut-in-string"],
)
def test_fast_path_over_many_chunks_equals_a_full_parse(records: list[dict[str, Any]]) -> None:
    """A 7 MB answer is rewritten in 2 MiB chunks: no cut lands inside a record or a string."""
    copies = 7_000_000 // len(orjson.dumps(records)) + 1
    data = orjson.dumps({"segments": records * copies, "meta": {}})
    assert to_frame(data, "segments").equals(exact(data))
    fields = {"index": pl.String, "location": pl.String, "entries": pl.Float64}
    assert to_frame(data, "segments", fields).height == len(records) * copies


# -- reading as the parts arrive (AnswerReader) -------------------------------------------

FIELDS = {"index": pl.String, "location": pl.String, "entries": pl.Float64}
#: Small thresholds, so that a 2 KB answer takes every path of the streaming reader.
SMALL, BATCH = 64, 256


def streamed(parts: list[bytes], fields: Any = FIELDS, mixed: set[str] | None = None) -> Any:
    """What the route does: read as the parts come; read again whole if told to."""
    reader = AnswerReader("segments", fields, mixed, small=SMALL, batch=BATCH)
    try:
        for part in parts:
            reader.feed([part])
        return reader.finish()
    except ReadAgain:
        again = AnswerReader("segments", fields, mixed, whole=True)
        again.feed(parts)
        return again.finish()


def reads_again(parts: list[bytes], fields: Any = FIELDS) -> bool:
    reader = AnswerReader("segments", fields, small=SMALL, batch=BATCH)
    try:
        for part in parts:
            reader.feed([part])
        reader.finish()
    except ReadAgain:
        return True
    return False


def doc(records: list[dict[str, Any]], copies: int = 12, **extra: Any) -> bytes:
    return orjson.dumps({"segments": records * copies, "meta": {"units": {}}, **extra})


def test_answers_split_at_every_byte_give_the_same_table() -> None:
    """Records cut across parts anywhere, in two parts or in many, read the same."""
    data = doc(PLAIN)
    whole = to_frame(data, "segments", FIELDS)
    assert whole.height == 24
    for at in range(len(data) + 1):
        assert streamed([data[:at], data[at:]]).equals(whole), at
    for size in range(1, 80):
        parts = [data[i : i + size] for i in range(0, len(data), size)]
        assert streamed(parts).equals(whole), size


@pytest.mark.parametrize(
    ("data", "fields"),
    [
        (doc([{"index": "i", "location": "L},{1", "entries": 1}]), FIELDS),  # the cut in a string
        (doc([{"index": "i", "location": "L1", "entries": {"by": [{"a": 1}, {"a": 2}]}}]), None),
        (doc([{"index": "i", "location": "L1", "entries": [{"a": 1}, {"a": 2}]}]), FIELDS),
        (doc(PLAIN, meta={"note": "}]"}), FIELDS),  # the end cannot be found by "}]"
        (orjson.dumps({"meta": {"n": "x" * 70_000}, "segments": PLAIN * 12}), FIELDS),  # far head
        (orjson.dumps(orjson.loads(doc(PLAIN)), option=orjson.OPT_INDENT_2), FIELDS),
        (doc(PLAIN), None),  # no named fields: inferred from the whole answer
        (doc([]), FIELDS),  # no records
    ],
    ids=["cut-in-string", "nested", "array-value", "meta", "head", "pretty", "infer", "empty"],
)
def test_streamed_answers_the_fast_path_cannot_trust_are_read_exactly(
    data: bytes, fields: Any
) -> None:
    whole = to_frame(data, "segments", fields)
    for size in (7, 100, 1000):
        parts = [data[i : i + size] for i in range(0, len(data), size)]
        assert streamed(parts, fields).equals(whole), size


def test_a_streamed_answer_mixing_numbers_and_text_is_marked_like_a_whole_one() -> None:
    """A text value after batches already read as numbers: the whole answer is read again."""
    records = [*PLAIN * 20, {"index": "x", "location": "L9", "entries": "n/a"}]
    data = doc(records, copies=1)
    mixed_whole: set[str] = set()
    whole = to_frame(data, "segments", FIELDS, mixed_whole)
    mixed: set[str] = set()
    parts = [data[i : i + 50] for i in range(0, len(data), 50)]
    assert streamed(parts, FIELDS, mixed).equals(whole)
    assert mixed == mixed_whole == {"entries"}


@pytest.mark.parametrize("extra", [{"error": {"code": "e", "message": "late"}}, {}])
def test_a_streamed_error_answer_is_an_upstream_error(extra: dict[str, Any]) -> None:
    data = doc(PLAIN, **extra) if extra else doc(PLAIN)[:-40]  # an error, or cut short
    parts = [data[i : i + 100] for i in range(0, len(data), 100)]
    with pytest.raises(UpstreamError):
        streamed(parts)


def test_only_answers_it_cannot_trust_are_asked_for_again() -> None:
    """The plain shape streams to the end; a batch or an end that does not read asks for
    the answer again; one kept whole (no array in sight, no fields) never does."""
    plain = doc(PLAIN)
    assert not reads_again([plain[i : i + 100] for i in range(0, len(plain), 100)])
    mixed = doc([*PLAIN * 20, {"index": "x", "location": "L9", "entries": "n/a"}], copies=1)
    assert reads_again([mixed[i : i + 100] for i in range(0, len(mixed), 100)])
    assert reads_again([doc(PLAIN, meta={"note": "}]"})])
    assert not reads_again([doc(PLAIN)], fields=None)
    far = orjson.dumps({"meta": {"n": "x" * 70_000}, "segments": PLAIN * 12})
    assert not reads_again([far[i : i + 1000] for i in range(0, len(far), 1000)])


def test_text_without_record_boundaries_is_not_rescanned_as_it_grows() -> None:
    """Records separated by '}, {' never cut: past four batches the reader gives up (the
    answer is read again whole) instead of joining and scanning ever more text per part."""
    data = orjson.dumps({"segments": PLAIN * 200}).replace(b"},{", b"}, {")
    parts = [data[i : i + 50] for i in range(0, len(data), 50)]
    reader = AnswerReader("segments", FIELDS, small=SMALL, batch=BATCH)
    fed = 0
    with pytest.raises(ReadAgain):
        for part in parts:
            fed += len(part)
            reader.feed([part])
    assert fed <= 6 * BATCH < len(data)  # it stopped early, holding a few batches at most
    assert streamed(parts).equals(to_frame(data, "segments", FIELDS))  # read whole again


def test_many_small_parts_are_cut_a_batch_at_a_time() -> None:
    """Parts of a few bytes wait until a batch is there: the same table as one part."""
    data = doc(PLAIN, copies=40)
    parts = [data[i : i + 3] for i in range(0, len(data), 3)]
    assert streamed(parts).equals(streamed([data]))


# -- spilled as read (RecordSpill) ----------------------------------------------------------


def test_records_past_the_limit_are_spilled_as_read_and_read_back_the_same(
    tmp_path: Path,
) -> None:
    """Two readers share a spill: once they hold more records than its limit, each writes
    what it holds to a file and the next records as they come; each answer comes back as
    a scan of its files, the same table as in memory. close() removes every file."""
    data = doc(PLAIN, copies=60)
    whole = to_frame(data, "segments", FIELDS)
    spill = RecordSpill(limit=whole.estimated_size() // 2, directory=str(tmp_path))
    readers = [
        AnswerReader("segments", FIELDS, small=SMALL, batch=BATCH, spill=spill) for _ in range(2)
    ]
    for i in range(0, len(data), BATCH):  # interleaved, as on the wire
        for reader in readers:
            reader.feed([data[i : i + BATCH]])
    first, second = (reader.finish() for reader in readers)
    assert isinstance(first, pl.LazyFrame) and isinstance(second, pl.LazyFrame)
    assert first.collect().equals(whole) and second.collect().equals(whole)
    [work] = tmp_path.iterdir()
    assert len(list(work.iterdir())) > 2  # written out as read, not once at the end
    spill.close()
    assert list(tmp_path.iterdir()) == []


def test_records_under_the_limit_stay_in_memory(tmp_path: Path) -> None:
    data = doc(PLAIN, copies=60)
    spill = RecordSpill(limit=10 * len(data), directory=str(tmp_path))
    reader = AnswerReader("segments", FIELDS, small=SMALL, batch=BATCH, spill=spill)
    reader.feed([data])
    frame = reader.finish()
    assert isinstance(frame, pl.DataFrame) and frame.equals(to_frame(data, "segments", FIELDS))
    assert list(tmp_path.iterdir()) == []


def test_a_spill_directory_gone_is_storage_failed_and_nothing_spills_after_close(
    tmp_path: Path,
) -> None:
    data = doc(PLAIN, copies=60)
    gone = RecordSpill(limit=0, directory=str(tmp_path / "gone"))
    with pytest.raises(StorageFailed) as info:
        AnswerReader("segments", FIELDS, small=SMALL, batch=BATCH, spill=gone).feed([data])
    assert "spill directory" in info.value.message and str(tmp_path) not in info.value.message
    closed = RecordSpill(limit=0, directory=str(tmp_path))
    closed.close()  # the export ended while a reader's thread still reads
    with pytest.raises(StorageFailed):
        AnswerReader("segments", FIELDS, small=SMALL, batch=BATCH, spill=closed).feed([data])
    assert list(tmp_path.iterdir()) == []


def test_an_answer_kept_in_memory_still_counts_against_the_limit(tmp_path: Path) -> None:
    """The records of an answer finished in memory are still held (by the export): the
    next answer spills once both pass the limit, even after the first reader is closed."""
    data = doc(PLAIN, copies=60)
    size = to_frame(data, "segments", FIELDS).estimated_size()
    spill = RecordSpill(limit=size + size // 2, directory=str(tmp_path))
    first = AnswerReader("segments", FIELDS, small=SMALL, batch=BATCH, spill=spill)
    first.feed([data])
    kept = first.finish()
    first.close()  # as the route does once a reader is done
    second = AnswerReader("segments", FIELDS, small=SMALL, batch=BATCH, spill=spill)
    second.feed([data])
    spilled = second.finish()
    assert isinstance(kept, pl.DataFrame) and isinstance(spilled, pl.LazyFrame)
    assert spilled.collect().equals(kept)
    spill.close()
