"""combine + write_csv as pure functions, for the cases the golden files do not reach."""

from __future__ import annotations

import io
import random
from typing import Any

import orjson
import polars as pl
import pytest
from hypothesis import given, strategies as st

from csvgen.csvexport.answers import to_frame
from csvgen.csvexport.combine import _sorted, combine
from csvgen.csvexport.csvwrite import spreadsheet_warnings, write_csv
from csvgen.csvexport.plan import make_plan
from csvgen.errors import MetricFailed, TooLarge, UpstreamError
from tests.test_plan import seed
from tests.test_plan_fuzz import wide


def csv_of(body: dict[str, Any], records: list[dict[str, Any]], **kw: Any) -> str:
    plan = make_plan(body)
    table = combine(plan, [pl.DataFrame(records, strict=False)], **kw)
    out = io.BytesIO()
    write_csv([c.heading for c in plan.columns], table, out)
    return out.getvalue().decode()


def test_field_reads_inside_a_nested_value() -> None:
    """`field` walks a dotted path; a missing step is an empty cell, not an error."""
    body = seed()
    body["csvFormat"]["columns"][1]["field"] = "dwell.p50"
    records = [
        {"index": "2024-04-01T00:00:00.000", "location": "L", "entries": {"dwell": {"p50": 31.5}}},
        {"index": "2024-04-02T00:00:00.000", "location": "L", "entries": {"dwell": {"p90": 80}}},
    ]
    assert csv_of(body, records) == "Date,Entries\r\n2024-04-01,31.5\r\n2024-04-02,\r\n"


def test_nested_value_without_field_is_json_text() -> None:
    """A non-scalar value is written as its JSON text, quoted as CSV needs."""
    records = [{"index": "2024-04-01T00:00:00.000", "location": "L", "entries": {"a": 1, "b": [2]}}]
    assert csv_of(seed(), records) == 'Date,Entries\r\n2024-04-01,"{""a"":1,""b"":[2]}"\r\n'


def test_empty_text_is_an_empty_cell_and_sorts_last() -> None:
    """An empty string is written and sorted like a missing value."""
    body = seed()
    body["csvFormat"]["columns"][1]["fetchValue"] = "note"
    body["csvFormat"]["sortBy"] = [1]
    records = [
        {"index": "2024-04-01T00:00:00.000", "location": "L", "note": ""},
        {"index": "2024-04-02T00:00:00.000", "location": "L", "note": "b"},
        {"index": "2024-04-03T00:00:00.000", "location": "L", "note": "-a"},
    ]
    body["metricRequests"][0]["route"] = "entries"
    assert csv_of(body, records) == (
        "Date,Entries\r\n2024-04-03,'-a\r\n2024-04-02,b\r\n2024-04-01,\r\n"
    )


def test_more_rows_than_allowed_is_too_large() -> None:
    records = [
        {"index": f"2024-04-0{d}T00:00:00.000", "location": "L", "entries": d} for d in (1, 2, 3)
    ]
    with pytest.raises(TooLarge, match="the export has 3 rows; the limit is 2"):
        csv_of(seed(), records, max_rows=2)


def test_numbers_sort_numerically() -> None:
    """Typed sort: 9 before 10, unlike text."""
    body = seed()
    body["csvFormat"]["sortBy"] = [1]
    records = [{"index": f"2024-04-0{d}T00:00:00.000", "location": "L", "entries": v}
               for d, v in ((1, 10), (2, 9), (3, None))]  # fmt: skip
    assert (
        csv_of(body, records) == "Date,Entries\r\n2024-04-02,9\r\n2024-04-01,10\r\n2024-04-03,\r\n"
    )


@pytest.mark.parametrize(
    ("dialect", "rows", "warned"),
    [
        ("excel", 1_048_575, False),
        ("excel", 1_048_576, True),
        ("excel-eu", 2_000_000, True),
        ("default", 2_000_000, False),
    ],
)
def test_excel_dialects_warn_of_rows_excel_cannot_open(
    dialect: str, rows: int, warned: bool
) -> None:
    """Excel holds 1,048,576 rows with the header: an Excel-bound file above it is flagged."""
    warnings = spreadsheet_warnings(dialect, rows)
    assert bool(warnings) is warned
    if warned:
        assert warnings[0].startswith(f"the file has {rows} data rows; Excel opens at most 1048575")


ODD_VALUES: list[Any] = [None, True, 0, -1, 1.5, 2**62, "", "x", "=1", "25_34", [], [1, "a"], {},
                         {"a": 1}, {"a": {"b": [1]}}]  # fmt: skip


@pytest.mark.parametrize("base", [seed, wide])
def test_odd_records_are_combined_or_refused_never_crash(base: Any) -> None:
    """Records with any JSON in any field: a CSV or metric_failed, never an internal error."""
    rng = random.Random(3)
    plan = make_plan(base())
    written = refused = 0
    for _ in range(300):
        answers = []
        for _metric in plan.metrics:
            records = []
            for day in (1, 2, 3):
                record = {"index": f"2024-04-0{day}T00:00:00.000", "location": "L1", "age": "25_34",
                          "gender": "female", "entries": day, "sales_volume": 1.5}  # fmt: skip
                for _ in range(rng.randint(0, 2)):
                    record[rng.choice(list(record))] = rng.choice(ODD_VALUES)
                records.append(record)
            answers.append(orjson.dumps({"segments": records}))
        try:
            table = combine(plan, [to_frame(a, "segments") for a in answers], {"L1": "n"})
            write_csv([c.heading for c in plan.columns], table, io.BytesIO())
            written += 1
        except (MetricFailed, UpstreamError):
            refused += 1
    assert written > 20 and refused > 10  # both outcomes are exercised


TEXTS = st.one_of(
    st.none(),
    st.sampled_from(["", "a", "B", "b", "é", "ab", "25_34", "2024-01-02"]),
    st.text(max_size=4),
)


@given(
    st.lists(st.tuples(TEXTS, TEXTS, TEXTS), min_size=0, max_size=60, unique=True),
    st.permutations([0, 1, 2]),
)
def test_packed_sort_is_polars_sort(rows: list[tuple[str | None, ...]], order: list[int]) -> None:
    """Sorting on the categorical row key by packed ranks gives polars' own sort of the
    categorical columns (text in byte order, nulls last), whatever the texts."""
    table = pl.DataFrame(
        rows, schema={"k0": pl.String, "k1": pl.String, "k2": pl.String}, orient="row"
    ).with_columns(pl.all().cast(pl.Categorical))
    by = [f"k{n}" for n in order]
    expected = table.sort(by, nulls_last=True)
    assert _sorted(table, by).cast(pl.String).rows() == expected.cast(pl.String).rows()
