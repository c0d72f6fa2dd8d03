"""Reading answers: the fast NDJSON path must give exactly what a full JSON parse gives."""

from __future__ import annotations

from typing import Any

import orjson
import polars as pl
import pytest

from csvgen.csvexport.answers import SMALL_ANSWER_BYTES, to_frame
from csvgen.errors import UpstreamError


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
