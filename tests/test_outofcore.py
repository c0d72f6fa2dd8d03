"""Out of core (CSVGEN_MEMORY_BUDGET_MB): the same bytes and manifests as in memory, and
nothing left in the spill directory."""

from __future__ import annotations

import contextlib
import gzip
import logging
import math
import os
import resource
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import polars as pl
import pytest
from hypothesis import given, strategies as st

from csvgen.csvexport import outofcore
from csvgen.csvexport.answers import SMALL_ANSWER_BYTES, Records, RecordSpill
from csvgen.csvexport.combine import combine
from csvgen.csvexport.plan import Limits, make_plan
from csvgen.csvexport.stop import Stop, Stopped
from csvgen.errors import MetricFailed, StorageFailed, TooLarge
from tests.conftest import S3Server, running_exporter
from tests.fakes import FakeBus, FakeMetrics, RawFrames
from tests.test_export import EXPORTS, GOLDEN, download, export
from tests.test_export_errors import entries_answer, request
from tests.test_plan import L1, seed


def manifest_of(s3: S3Server, item: dict[str, Any]) -> dict[str, Any]:
    document: dict[str, Any] = orjson.loads(s3.get(item["manifestKey"]))
    return document


@pytest.mark.parametrize("name", [*sorted(GOLDEN), "seed"])
async def test_golden_out_of_core(
    bus: FakeBus,
    metrics: FakeMetrics,
    s3: S3Server,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    name: str,
) -> None:
    """A budget of 0 sends every export out of core, its records spilled as read: each
    golden file, byte for byte, and the manifest of the in-memory export; the spill
    directory is empty afterwards."""
    caplog.set_level(logging.INFO, "csvgen")
    payload = await export(bus, metrics, name, memory_budget_mb=0, spill_dir=str(tmp_path))
    [item] = payload["body"]
    [line] = [r.getMessage() for r in caplog.records if r.getMessage().startswith("out of core")]
    assert line.endswith("; spilled as read") == (name != "empty")  # no records: nothing spills
    stored = download(item["signedUrl"])
    csv = gzip.decompress(stored) if name == "gzip" else stored
    assert csv == (EXPORTS / name / "expected.csv").read_bytes()
    out_of_core = manifest_of(s3, item)
    assert os.listdir(tmp_path) == []

    metrics.requests.clear()
    in_memory = manifest_of(s3, (await export(bus, metrics, name))["body"][0])
    for document in (out_of_core, in_memory):
        document["export"].pop("key")  # the second export of one second gets "-2"
    assert out_of_core == in_memory


async def test_rows_over_the_limit_out_of_core(
    bus: FakeBus, metrics: FakeMetrics, s3: S3Server, tmp_path: Path
) -> None:
    """More rows than estimated (upstream sent 40 days for 30): the row limit is checked
    as the rows come; nothing is stored, nothing left behind."""
    metrics.answers.append(({"route": "entries"}, entries_answer(days=40)))
    async with running_exporter(
        bus, metrics, memory_budget_mb=0, spill_dir=str(tmp_path), max_rows=32
    ):
        await bus.send(request("rows"))
        _, payload = await bus.reply()
    assert payload["error"]["code"] == "too_large"
    assert payload["error"]["message"] == "the export has over 32 rows; the limit is 32"
    assert "Contents" not in s3.client().list_objects_v2(Bucket="aura-exports")
    assert os.listdir(tmp_path) == []


async def test_two_records_for_one_cell_out_of_core(
    bus: FakeBus, metrics: FakeMetrics, tmp_path: Path
) -> None:
    answer = entries_answer(days=3)
    answer["segments"].append(answer["segments"][0])
    metrics.answers.append(({"route": "entries"}, answer))
    async with running_exporter(bus, metrics, memory_budget_mb=0, spill_dir=str(tmp_path)):
        await bus.send(request("twice"))
        _, payload = await bus.reply()
    assert payload["error"]["code"] == "metric_failed"
    assert "two records for one cell (row 2024-01-01/" in payload["error"]["message"]
    assert os.listdir(tmp_path) == []


async def test_answers_spilled_as_read_give_the_same_bytes_and_leave_nothing(
    bus: FakeBus,
    metrics: FakeMetrics,
    s3: S3Server,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Past half the budget (0 here) the records go to the spill directory as they are
    read and come back from there: the same CSV as in memory, and nothing left behind,
    whether the export succeeds or fails."""
    caplog.set_level(logging.INFO, "csvgen")
    answer = entries_answer(days=4_000, entities=tuple(LOCATIONS))
    assert len(orjson.dumps(answer)) > 2 * SMALL_ANSWER_BYTES  # read as it streams in
    metrics.answers.append(({"route": "entries"}, RawFrames(answer, parts=7)))
    async with running_exporter(bus, metrics, memory_budget_mb=0, spill_dir=str(tmp_path)):
        await bus.send(request("spilled"))
        _, spilled = await bus.reply()
        assert os.listdir(tmp_path) == []
        answer["segments"].append(answer["segments"][-1])
        metrics.answers.insert(0, ({"route": "entries"}, RawFrames(answer, parts=7)))
        await bus.send(request("twice"))
        _, twice = await bus.reply()
    assert any(r.getMessage().endswith("; spilled as read") for r in caplog.records)
    assert twice["error"]["code"] == "metric_failed"
    assert "two records for one cell" in twice["error"]["message"]
    assert os.listdir(tmp_path) == []
    del answer["segments"][-1]
    metrics.answers.insert(0, ({"route": "entries"}, answer))
    await same_file_in_memory(bus, metrics, caplog, spilled["body"][0], rows=12_000)


async def test_an_export_past_the_smallest_budget_gives_the_in_memory_bytes(
    bus: FakeBus,
    metrics: FakeMetrics,
    s3: S3Server,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """CSVGEN_MEMORY_BUDGET_MB=16, the smallest the setting takes: 180,000 records go out
    of core, and the CSV is the one of the default budget, byte for byte."""
    caplog.set_level(logging.INFO, "csvgen")
    answer = entries_answer(days=60_000, entities=tuple(LOCATIONS))
    metrics.answers.append(({"route": "entries"}, RawFrames(answer, parts=8)))
    async with running_exporter(bus, metrics, memory_budget_mb=16, spill_dir=str(tmp_path)):
        await bus.send(request("small-budget"))
        _, small = await bus.reply()
    assert any(r.getMessage().startswith("out of core id=small-budget") for r in caplog.records)
    assert os.listdir(tmp_path) == []
    await same_file_in_memory(bus, metrics, caplog, small["body"][0], rows=180_000)


async def same_file_in_memory(
    bus: FakeBus,
    metrics: FakeMetrics,
    caplog: pytest.LogCaptureFixture,
    item: dict[str, Any],
    rows: int,
) -> None:
    """The same request, exported with the default budget (in memory), stores ``item``'s
    file byte for byte, of ``rows`` rows."""
    async with running_exporter(bus, metrics):
        await bus.send(request("in-memory"))
        _, in_memory = await bus.reply()
    assert not any(r.getMessage().startswith("out of core id=in-memory") for r in caplog.records)
    [expected] = in_memory["body"]
    assert item["rowCount"] == rows and item["sha256"] == expected["sha256"]
    assert download(item["signedUrl"]) == download(expected["signedUrl"])


async def test_records_spilled_by_an_export_that_times_out_are_removed(
    bus: FakeBus, metrics: FakeMetrics, tmp_path: Path
) -> None:
    """Cancelled (its deadline) while a second answer is awaited: the first answer's
    records, spilled to disk, are gone when the reply is sent."""
    body = seed()
    body["csvFormat"]["columns"].append(
        {"heading": "Passers-by", "metricId": "p", "fetchValue": "passers_by"}
    )
    body["metricRequests"].append({**body["metricRequests"][0], "metricId": "p"})
    metrics.answers.append(({"route": "entries"}, entries_answer(days=30)))
    settings = {"memory_budget_mb": 0, "spill_dir": str(tmp_path), "export_timeout_s": 2}
    async with running_exporter(bus, metrics, max_metric_concurrency=1, **settings):
        await bus.send(request("late", body))
        assert await metrics.answered.get() == "entries"
        metrics.hold.clear()  # the second answer never comes
        # One metric request at a time: the second is sent once the first answer is read.
        while await metrics.received.get() != "passers-by":
            pass
        [records] = os.listdir(tmp_path)
        assert records.startswith("csvgen-records-") and os.listdir(tmp_path / records)
        _, payload = await bus.reply()
        metrics.hold.set()
    assert payload["error"]["code"] == "export_timeout"
    assert os.listdir(tmp_path) == []


# -- in process: the same table whatever the values ---------------------------------------

NUMBERS = st.one_of(
    st.none(),
    st.sampled_from([0.0, -0.0, math.nan, math.inf, -math.inf, 1.5, -2.0]),
    st.floats(allow_nan=False, width=32),
)
TEXT = st.one_of(st.none(), st.sampled_from(["", "a", "B", "é", "=x"]), st.text(max_size=3))


LOCATIONS = [L1, "64a1b2c3d4e5f6a7b8c9d0f1", "64a1b2c3d4e5f6a7b8c9d0f2"]


ENTRIES_AND_NOTE = (("Entries", "m", "entries"), ("Note", "m", "note"))


def plan_sorted_by(column: int, values: tuple[tuple[str, str, str], ...] = ENTRIES_AND_NOTE) -> Any:
    """Date, Location, then a column for each (heading, metric request, fetchValue) of
    ``values``; a metric request for each metric id, over LOCATIONS."""
    body = seed()
    body["metricRequests"][0]["entities"] = LOCATIONS
    for mid in dict.fromkeys(mid for _, mid, _ in values if mid != "m"):
        body["metricRequests"].append({**body["metricRequests"][0], "metricId": mid})
    body["csvFormat"]["columns"] = [
        {"heading": "Date"},
        {"heading": "Location"},
        *({"heading": h, "metricId": mid, "fetchValue": v} for h, mid, v in values),
    ]
    body["csvFormat"]["sortBy"] = [column]
    return make_plan(body, Limits(50, 500))


@given(
    rows=st.lists(
        st.tuples(st.integers(0, 20), st.sampled_from([*LOCATIONS, ""]), NUMBERS, TEXT),
        max_size=60,
        unique_by=lambda r: (r[0], r[1]),
    ),
    column=st.sampled_from([0, 1, 2, 3]),
    spilled=st.one_of(st.none(), st.integers(1, 7)),
)
def test_out_of_core_sorts_like_polars(
    rows: list[tuple[int, str, float | None, str | None]], column: int, spilled: int | None
) -> None:
    """Nulls, NaN, -0.0 and 0.0, empty text, any sort column: the same rows in the same
    order, from records in memory or spilled to a file as read (answers.RecordSpill) and
    read back ``spilled`` records at a time."""
    plan = plan_sorted_by(column)
    frame = pl.DataFrame(
        {
            "index": [f"2024-01-{d + 1:02d}T00:00:00.000" for d, *_ in rows],
            "location": [loc for _, loc, *_ in rows],
            "entries": [v for _, _, v, _ in rows],
            "note": [t for *_, t in rows],
        },
        schema={
            "index": pl.String,
            "location": pl.String,
            "entries": pl.Float64,
            "note": pl.String,
        },
    )
    as_text = pl.col(pl.Categorical).cast(pl.String)  # the same bytes either way
    in_memory = combine(plan, [frame]).with_columns(as_text)
    with tempfile.TemporaryDirectory() as work:
        spill = RecordSpill(limit=0, directory=work)
        records: list[Records] = [frame if spilled is None else pl.scan_ipc(spill.write([frame]))]
        slices = {"slice_rows": spilled} if spilled else {}
        rows_of = outofcore.batches(plan, records, None, memory_mb=64, spill_dir=work, **slices)
        batches = list(rows_of)
        spill.close()
        assert os.listdir(work) == []
    out_of_core = pl.concat(batches).with_columns(as_text)
    assert out_of_core.schema == in_memory.schema
    assert out_of_core.equals(in_memory)  # row for row; NaN equals NaN here
    signs = [math.copysign(1, v) if v == 0 else None for v in out_of_core["c2"]]
    assert signs == [math.copysign(1, v) if v == 0 else None for v in in_memory["c2"]]


KEYED = st.lists(
    st.tuples(st.integers(0, 6), st.sampled_from([*LOCATIONS, ""]), NUMBERS),
    max_size=30,
    unique_by=lambda r: (r[0], r[1]),
)


@given(
    entries=KEYED,
    passers=KEYED,
    column=st.sampled_from([0, 1, 2, 3]),
    spilled=st.one_of(st.none(), st.integers(1, 5)),
)
def test_two_answers_join_out_of_core_as_in_memory(
    entries: list[tuple[int, str, float | None]],
    passers: list[tuple[int, str, float | None]],
    column: int,
    spilled: int | None,
) -> None:
    """Two metric requests whose keys overlap anywhere (a missing location included): the
    full outer join out of core gives the rows of the in-memory join, in its order."""
    plan = plan_sorted_by(column, (("Entries", "m", "entries"), ("Passers-by", "p", "passers_by")))
    frames = [
        pl.DataFrame(
            {
                "index": [f"2024-01-{d + 1:02d}T00:00:00.000" for d, _, _ in rows],
                "location": [loc for _, loc, _ in rows],
                field: [v for _, _, v in rows],
            },
            schema={"index": pl.String, "location": pl.String, field: pl.Float64},
        )
        for rows, field in ((entries, "entries"), (passers, "passers_by"))
    ]
    as_text = pl.col(pl.Categorical).cast(pl.String)
    in_memory = combine(plan, frames).with_columns(as_text)
    with tempfile.TemporaryDirectory() as work:
        spill = RecordSpill(limit=0, directory=work)
        records = [f if spilled is None else pl.scan_ipc(spill.write([f])) for f in frames]
        slices = {"slice_rows": spilled} if spilled else {}
        rows_of = outofcore.batches(plan, records, None, memory_mb=64, spill_dir=work, **slices)
        out_of_core = pl.concat(list(rows_of)).with_columns(as_text)
        spill.close()
    assert out_of_core.equals(in_memory)


def daily(days: int) -> pl.DataFrame:
    """A record a day from 2000-01-01, over LOCATIONS in turn; entries: the day's number."""
    day = pl.int_range(0, days, dtype=pl.Int64)
    return pl.select(
        index=(pl.date(2000, 1, 1) + pl.duration(days=day)).dt.strftime("%Y-%m-%dT00:00:00.000"),
        location=pl.lit(pl.Series(LOCATIONS)).gather(day % 3),
        entries=day.cast(pl.Float64),
        note=pl.lit(None, dtype=pl.String),
    )


def test_the_work_directory_goes_when_the_writer_stops_early(tmp_path: Path) -> None:
    """Cancelled (the writer stops at its next batch and closes the rows): DuckDB's work
    directory is gone before the export ends; it exists only while rows come."""
    plan = plan_sorted_by(0)
    days = 300_000  # two batches of sorted rows
    frame = daily(days)
    rows = outofcore.batches(plan, [frame], None, memory_mb=64, spill_dir=str(tmp_path))
    first = next(rows)
    assert 0 < first.height < days  # more rows to come
    assert [p.name.startswith("csvgen-duckdb-") for p in tmp_path.iterdir()] == [True]
    rows.close()
    assert os.listdir(tmp_path) == []


def test_a_cell_twice_across_the_slices_of_a_spilled_answer_is_found_and_named(
    tmp_path: Path,
) -> None:
    """A spilled answer is read a slice at a time: a key in its first slice and again in
    its last is still two records for one cell, named as in memory."""
    plan = plan_sorted_by(0)
    rows = [(d, LOCATIONS[d % 3]) for d in range(10)] + [(0, LOCATIONS[0])]
    frame = pl.DataFrame(
        {
            "index": [f"2024-01-{d + 1:02d}T00:00:00.000" for d, _ in rows],
            "location": [loc for _, loc in rows],
            "entries": [float(d) for d, _ in rows],
            "note": [None] * len(rows),
        },
        schema={
            "index": pl.String,
            "location": pl.String,
            "entries": pl.Float64,
            "note": pl.String,
        },
    )
    with pytest.raises(MetricFailed) as in_memory:
        combine(plan, [frame])
    spill = RecordSpill(limit=0, directory=str(tmp_path))
    records: list[Records] = [pl.scan_ipc(spill.write([frame]))]
    with pytest.raises(MetricFailed) as spilled:
        list(outofcore.batches(plan, records, None, memory_mb=64, spill_dir=None, slice_rows=3))
    assert spilled.value.message == in_memory.value.message
    assert f"row 2024-01-01/{LOCATIONS[0]}" in spilled.value.message
    spill.close()
    assert os.listdir(tmp_path) == []


@contextlib.contextmanager
def files_limited_to(size: int) -> Iterator[None]:
    """Each file this process writes is limited to ``size`` bytes (RLIMIT_FSIZE): a write
    past it fails as on a full disk (EFBIG; Python ignores SIGXFSZ)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (size, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))


def test_a_full_disk_while_the_parts_are_written_is_storage_failed(tmp_path: Path) -> None:
    """The records were spilled; the disk fills up while their parts are written to the
    work directory: StorageFailed, and the work directory is gone, its partial files too."""
    plan = plan_sorted_by(0)
    days = 20_000
    frame = daily(days)
    spill = RecordSpill(limit=0, directory=str(tmp_path))
    records: list[Records] = [pl.scan_ipc(spill.write([frame]))]
    rows = outofcore.batches(plan, records, None, memory_mb=64, spill_dir=str(tmp_path))
    with files_limited_to(16 * 1024), pytest.raises(StorageFailed) as failed:
        next(rows)
    assert failed.value.message == outofcore.SPILL_FAILED
    assert [p.name.startswith("csvgen-records-") for p in tmp_path.iterdir()] == [True]
    spill.close()
    assert os.listdir(tmp_path) == []


def test_a_spill_directory_gone_before_duckdb_works_is_storage_failed(tmp_path: Path) -> None:
    """Records in memory, but no spill directory to make DuckDB's work directory in."""
    rows = outofcore.batches(
        plan_sorted_by(0), [daily(10)], None, memory_mb=64, spill_dir=str(tmp_path / "gone")
    )
    with pytest.raises(StorageFailed) as failed:
        next(rows)
    assert failed.value.message == outofcore.SPILL_FAILED


def test_a_budget_too_small_even_out_of_core_is_too_large(tmp_path: Path) -> None:
    """Eight text cells of 10 MB each, sorted on, more than DuckDB's 64 MB: it cannot sort
    them even spilling, so the export is too_large, naming its budget; nothing is left."""
    notes = pl.Series("note", ["x" * 10_000_000 if d < 8 else None for d in range(1000)])
    frame = daily(1000).with_columns(notes)
    rows = outofcore.batches(
        plan_sorted_by(3), [frame], None, memory_mb=64, spill_dir=str(tmp_path)
    )
    with pytest.raises(TooLarge) as failed:
        next(rows)
    assert failed.value.message == (
        "the export does not fit in its memory budget (64 MB) even out of core"
    )
    assert os.listdir(tmp_path) == []


def test_a_full_disk_while_duckdb_sorts_is_storage_failed(tmp_path: Path) -> None:
    """Records in memory, but a sort past DuckDB's memory limit (64 MB): DuckDB spills to
    the work directory, and the disk fills up. StorageFailed, and nothing is left."""
    rows = outofcore.batches(
        plan_sorted_by(2), [daily(1_000_000)], None, memory_mb=64, spill_dir=str(tmp_path)
    )
    with files_limited_to(1024 * 1024), pytest.raises(StorageFailed) as failed:
        next(rows)
    assert failed.value.message == outofcore.SPILL_FAILED
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("name", ["part-1", "csvgen-new-1"])
def test_a_spill_directory_of_any_name_holds_the_parts(tmp_path: Path, name: str) -> None:
    """The work directories and the parts' files are named inside the spill directory,
    whatever it is called (named like them included)."""
    plan = plan_sorted_by(0)
    frame = pl.DataFrame(
        {"index": ["2024-01-01T00:00:00.000"], "location": [L1], "entries": [1.0], "note": [""]}
    )
    spill_dir = tmp_path / name
    spill_dir.mkdir()
    spill = RecordSpill(limit=0, directory=str(spill_dir))
    records: list[Records] = [pl.scan_ipc(spill.write([frame]))]
    rows = outofcore.batches(plan, records, None, memory_mb=64, spill_dir=str(spill_dir))
    assert pl.concat(list(rows)).height == 1
    spill.close()
    assert os.listdir(spill_dir) == []


def test_five_hundred_parts_join_out_of_core_as_in_memory() -> None:
    """As many parts as a body may make (a column each): out of core, in a small budget,
    they give the in-memory rows (joined one after another, 500 parts passed DuckDB's
    expression depth limit; joined in a tree, they did not fit in 256 MB)."""
    body = seed()
    template = body["metricRequests"][0]
    body["metricRequests"] = [{**template, "metricId": f"m{n}"} for n in range(500)]
    body["csvFormat"]["columns"] = [
        {"heading": "Date"},
        *({"heading": f"E{n}", "metricId": f"m{n}", "fetchValue": "entries"} for n in range(500)),
    ]
    plan = make_plan(body, Limits(500, 501))
    frames = [
        pl.DataFrame(
            {
                "index": [f"2024-01-{d % 28 + 1:02d}T00:00:00.000" for d in (n, n + 1)],
                "location": [L1, L1],
                "entries": [float(n), None],
            }
        )
        for n in range(500)
    ]
    as_text = pl.col(pl.Categorical).cast(pl.String)
    in_memory = combine(plan, frames).with_columns(as_text)
    rows = outofcore.batches(plan, list(frames), None, memory_mb=64, spill_dir=None)
    assert pl.concat(list(rows)).with_columns(as_text).equals(in_memory)
    assert in_memory.height == 28


def test_a_stop_before_duckdb_starts_stops_the_rows(tmp_path: Path) -> None:
    """A cancelled export's writer sets its Stop: DuckDB's join and sort, which the first
    batch waits for whole, is not started (and, started, would be interrupted by the
    hook); its work directory goes."""
    stop = Stop()
    stop.set()
    rows = outofcore.batches(
        plan_sorted_by(0), [daily(300_000)], None, memory_mb=64, spill_dir=str(tmp_path), stop=stop
    )
    with pytest.raises(Stopped):
        next(rows)
    assert os.listdir(tmp_path) == []


def test_a_stop_calls_its_hooks_once_and_not_after_the_block() -> None:
    stop, calls = Stop(), []
    with stop.calling(lambda: calls.append("inside")):
        stop.set()
    with stop.calling(lambda: calls.append("late")):  # already set: called at once
        pass
    stop.set()  # no block registered now
    assert calls == ["inside", "late"]
