"""Property-based tests (hypothesis): no input, however strange, gets past csvgen's types.

CI runs the ``ci`` profile (a few hundred examples per property); ``make fuzz``
runs the ``fuzz`` profile (100,000 per property). Profiles live in conftest.py.
"""

from __future__ import annotations

import contextlib
import io
from typing import Any

import orjson
import polars as pl
from hypothesis import example, given, strategies as st

from csvgen.config import Settings
from csvgen.csvexport.answers import AnswerReader, ReadAgain, _ndjson, schema, to_frame
from csvgen.csvexport.combine import combine
from csvgen.csvexport.csvwrite import write_csv
from csvgen.csvexport.dialects import DIALECTS
from csvgen.csvexport.plan import make_plan
from csvgen.csvexport.route import CsvExport
from csvgen.errors import (
    MAX_REPLY_BYTES,
    BodyTooLarge,
    FrameError,
    InvalidEnvelope,
    InvalidRequest,
    MetricFailed,
    TooLarge,
    UpstreamError,
)
from csvgen.frames import (
    Action,
    PartError,
    ReplyAssembler,
    encode_action,
    fingerprint,
    nesting,
    parse_action,
)
from tests.test_plan import seed
from tests.test_plan_fuzz import paths, wide

#: Text that stresses JSON escaping and the nesting scan: brackets, quotes, backslashes.
tricky_text = st.text(alphabet=st.sampled_from('[]{}",:\\ab\n\x00é=-+@'), max_size=12) | st.text()
# orjson reads any JSON integer outside 64 bits as a float, so these are all it can yield.
scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | tricky_text
)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(tricky_text, inner, max_size=5),
    max_leaves=40,
)


def depth(value: Any) -> int:
    if isinstance(value, list):
        return 1 + max((depth(v) for v in value), default=0)
    if isinstance(value, dict):
        return 1 + max((depth(v) for v in value.values()), default=0)
    return 0


@given(json_values)
def test_nesting_is_the_true_depth(value: Any) -> None:
    assert nesting(orjson.dumps(value), 1000) == depth(value)


@st.composite
def mutated_bodies(draw: st.DrawFn) -> Any:
    """A valid body with one to three values anywhere replaced by any JSON value."""
    body = draw(st.sampled_from([seed, wide]))()
    for _ in range(draw(st.integers(1, 3))):
        where = draw(st.sampled_from(paths(body)))
        if not where:
            return draw(json_values)
        parent = body
        for step in where[:-1]:
            parent = parent[step]
        parent[where[-1]] = draw(json_values)
    return body


EXPORT = CsvExport(Settings(bus_url="ws://127.0.0.1:1/bus", max_rows=10**6), None, None)  # type: ignore[arg-type]


@given(json_values | mutated_bodies())
def test_any_body_is_planned_or_refused_with_a_typed_error(body: Any) -> None:
    """Any JSON as a body: a job, or invalid_request/too_large in a bounded reply."""
    text = encode_action(Action("p", "external-service/csv-generator", {"v": 0})).replace(
        '{"v":0}', orjson.dumps(body).decode()
    )
    try:
        action = parse_action(text)
        assert action is not None
        fingerprint(action.route, action.body)
        EXPORT.prepare(action)
    except (InvalidEnvelope, BodyTooLarge, InvalidRequest, TooLarge) as exc:
        assert len(orjson.dumps(exc.as_json())) < MAX_REPLY_BYTES


@given(st.text() | st.binary() | json_values.map(lambda v: orjson.dumps(v).decode()))
def test_any_bus_frame_is_an_action_or_a_typed_refusal(text: str | bytes) -> None:
    with contextlib.suppress(FrameError, InvalidEnvelope, BodyTooLarge):
        parse_action(text)


frame_fields = st.text(alphabet=st.sampled_from("0129|x-"), max_size=12) | st.integers(
    0, 10**12
).map(str)


@given(
    st.lists(st.tuples(frame_fields, frame_fields, tricky_text), max_size=6)
    | st.lists(st.text() | st.binary(), max_size=4)
)
def test_any_metrics_frames_never_raise_out_of_the_codec(frames: list[Any]) -> None:
    assembler = ReplyAssembler()
    for f in frames:
        text = f"a|{f[0]}|{f[1]}|{f[2]}" if isinstance(f, tuple) else f
        with contextlib.suppress(PartError):
            assembler.feed(text)


def record(values: st.SearchStrategy[Any]) -> st.SearchStrategy[dict[str, Any]]:
    keys = st.sampled_from(["index", "location", "age", "entries", "sales_volume", "gender", "x"])
    dates = st.sampled_from(["2024-04-01T00:00:00.000", "2024-04-02T00:00:00.000", ""])
    return st.dictionaries(keys, values | dates, max_size=6)


@given(
    st.sampled_from([seed, wide]),
    st.lists(record(json_values), max_size=12),
    st.lists(record(scalars), max_size=12),
)
def test_any_upstream_records_give_a_csv_or_metric_failed(
    body: Any, first: list[dict[str, Any]], other: list[dict[str, Any]]
) -> None:
    plan = make_plan(body())
    answers = [first, *([other] * (len(plan.metrics) - 1))]
    try:
        frames = [
            to_frame(orjson.dumps({"segments": a}), "segments", schema(plan.metrics[m].reads))
            for m, a in enumerate(answers)
        ]
        table = combine(plan, frames, {"L1": "=name"})
        out = io.BytesIO()
        write_csv([c.heading for c in plan.columns], table, out, dialect=DIALECTS[plan.dialect])
    except (UpstreamError, MetricFailed):
        return
    assert isinstance(table, pl.DataFrame)
    assert out.getvalue().count(b"\r\n") >= 1


def read_streamed(parts: list[bytes], fields: Any, mixed: set[str]) -> pl.DataFrame:
    """As the route reads: as the parts come (tiny batches here), again whole if told to."""
    reader = AnswerReader("segments", fields, mixed, small=32, batch=64)
    try:
        for part in parts:
            reader.feed([part])
        return reader.finish()
    except ReadAgain:
        mixed.clear()
        again = AnswerReader("segments", fields, mixed, whole=True)
        again.feed(parts)
        return again.finish()


@given(
    st.lists(record(json_values), max_size=12),
    st.lists(st.integers(0, 4000), max_size=8),
    st.sampled_from([None, {"meta": {"n": "}]"}}, {"error": {"code": "x", "message": "y"}}]),
)
# Found by 25,000 examples: a record too long to cut in the tiny test batches is read
# exactly, where a field the export does not read (a list of null, {} and false) made
# polars refuse the records; the fast path never reads that field.
@example(
    records=[
        {
            "sales_volume": [None, None, {}, False],
            "index": "2024-04-01T00:00:00.000",
            "x": "y" * 250,
        },
        {},
    ],
    cuts=[280],
    extra=None,
)
def test_any_answer_split_anywhere_gives_the_csv_of_the_whole_answer(
    records: list[dict[str, Any]], cuts: list[int], extra: dict[str, Any] | None
) -> None:
    """Records of any values, cut into parts anywhere and read as they come: the same CSV
    bytes (or the same error) as the answer in one part. (Which reader a part of the
    answer goes through depends on its size, as in production; tiny thresholds here.)"""
    data = orjson.dumps({"segments": records, **(extra or {})})
    points = sorted({c % (len(data) + 1) for c in cuts})
    parts = [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]
    plan = make_plan(seed())
    fields = schema(plan.metrics[0].reads)

    def csv(read: Any) -> bytes | str:
        mixed: set[str] = set()
        try:
            table = combine(plan, [read(mixed)])
        except (UpstreamError, MetricFailed) as exc:
            return exc.message
        out = io.BytesIO()
        columns = {1} if "entries" in mixed else set()
        write_csv([c.heading for c in plan.columns], table, out, mixed=columns)
        return out.getvalue()

    whole = csv(lambda mixed: read_streamed([data], fields, mixed))
    assert csv(lambda mixed: read_streamed(parts, fields, mixed)) == whole


@given(
    st.lists(st.sampled_from([b"}", b",", b"{", b"},{", b"a"]), max_size=60).map(b"".join),
    st.integers(1, 8),
    st.data(),
)
def test_the_chunked_rewrite_into_lines_is_one_replace(data: bytes, chunk: int, draw: Any) -> None:
    """Every ``},{`` becomes ``}\\n{``, wherever the chunks fall (the readers use 1 MiB
    chunks, which no other test's answers reach), and nothing else changes."""
    start = draw.draw(st.integers(0, len(data)))
    stop = draw.draw(st.integers(start, len(data)))
    expected = data[start:stop].replace(b"},{", b"}\n{")
    assert _ndjson(data, start, stop, chunk).getvalue() == expected
