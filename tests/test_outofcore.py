"""Out of core (CSVGEN_MEMORY_BUDGET_MB): the same bytes and manifests as in memory, and
nothing left in the spill directory."""

from __future__ import annotations

import gzip
import logging
import math
import os
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import orjson
import polars as pl
import pytest
from hypothesis import given, strategies as st

from csvgen.csvexport import outofcore
from csvgen.csvexport.combine import combine
from csvgen.csvexport.plan import Limits, make_plan
from tests.conftest import S3Server, running_exporter
from tests.fakes import FakeBus, FakeMetrics
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
    """A budget of 0 sends every export out of core: each golden file, byte for byte, and
    the manifest of the in-memory export; the spill directory is empty afterwards."""
    caplog.set_level(logging.INFO, "csvgen")
    payload = await export(bus, metrics, name, memory_budget_mb=0, spill_dir=str(tmp_path))
    [item] = payload["body"]
    assert any(r.getMessage().startswith("out of core id=") for r in caplog.records)
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


# -- in process: the same table whatever the values ---------------------------------------

NUMBERS = st.one_of(
    st.none(),
    st.sampled_from([0.0, -0.0, math.nan, math.inf, -math.inf, 1.5, -2.0]),
    st.floats(allow_nan=False, width=32),
)
TEXT = st.one_of(st.none(), st.sampled_from(["", "a", "B", "é", "=x"]), st.text(max_size=3))


LOCATIONS = [L1, "64a1b2c3d4e5f6a7b8c9d0f1", "64a1b2c3d4e5f6a7b8c9d0f2"]


def plan_sorted_by(column: int) -> Any:
    body = seed()
    body["metricRequests"][0]["entities"] = LOCATIONS
    body["csvFormat"]["columns"] = [
        {"heading": "Date"},
        {"heading": "Location"},
        {"heading": "Entries", "metricId": "m", "fetchValue": "entries"},
        {"heading": "Note", "metricId": "m", "fetchValue": "note"},
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
)
def test_out_of_core_sorts_like_polars(
    rows: list[tuple[int, str, float | None, str | None]], column: int
) -> None:
    """Nulls, NaN, -0.0 and 0.0, empty text, any sort column: the same rows in the same order."""
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
    batches = list(outofcore.batches(plan, [frame], None, memory_mb=64, spill_dir=None))
    out_of_core = pl.concat(batches).with_columns(as_text)
    assert out_of_core.schema == in_memory.schema
    assert out_of_core.equals(in_memory)  # row for row; NaN equals NaN here
    signs = [math.copysign(1, v) if v == 0 else None for v in out_of_core["c2"]]
    assert signs == [math.copysign(1, v) if v == 0 else None for v in in_memory["c2"]]


def test_the_work_directory_goes_when_the_writer_stops_early(tmp_path: Path) -> None:
    """Cancelled (the writer stops at its next batch and closes the rows): DuckDB's work
    directory is gone before the export ends; it exists only while rows come."""
    plan = plan_sorted_by(0)
    days = 300_000  # two batches of sorted rows
    frame = pl.DataFrame(
        {
            "index": [f"{date(2000, 1, 1) + timedelta(days=d)}T00:00:00.000" for d in range(days)],
            "location": [LOCATIONS[d % 3] for d in range(days)],
            "entries": [float(d) for d in range(days)],
            "note": [None] * days,
        },
        schema={
            "index": pl.String,
            "location": pl.String,
            "entries": pl.Float64,
            "note": pl.String,
        },
    )
    rows = outofcore.batches(plan, [frame], None, memory_mb=64, spill_dir=str(tmp_path))
    first = next(rows)
    assert 0 < first.height < days  # more rows to come
    assert [p.name.startswith("csvgen-duckdb-") for p in tmp_path.iterdir()] == [True]
    rows.close()
    assert os.listdir(tmp_path) == []
