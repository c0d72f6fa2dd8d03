"""Validation and planning of the csv-generator body: every rule, with exact messages."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from csvgen.csvexport.plan import make_plan
from csvgen.errors import InvalidRequest

L1 = "64a1b2c3d4e5f6a7b8c9d0e3"


def seed() -> dict[str, Any]:
    return {
        "csvFormat": {
            "columns": [
                {"heading": "Date"},
                {"heading": "Entries", "metricId": "m", "fetchValue": "entries"},
            ],
            "sortBy": [0],
            "rowFilters": ["entity"],
        },
        "metricRequests": [
            {
                "metricId": "m",
                "name": "Entries by day",
                "start": "2024-04-01T00:00:00.000Z",
                "end": "2024-04-30T23:59:59.000Z",
                "entities": [L1],
                "entityType": "location",
                "facets": ["segments"],
                "aggregationPeriod": "day",
            }
        ],
    }


def problems(body: dict[str, Any]) -> list[tuple[str, str]]:
    with pytest.raises(InvalidRequest) as info:
        make_plan(body)
    return [(d.path, d.message) for d in info.value.details]


def changed(path: str, value: Any) -> dict[str, Any]:
    """The seed body with one field (a dotted path, [n] for indices) replaced."""
    body = copy.deepcopy(seed())
    target: Any = body
    steps = path.replace("[", ".").replace("]", "").split(".")
    for step in steps[:-1]:
        target = target[int(step)] if step.isdigit() else target[step]
    last = steps[-1]
    if value is ...:
        del target[int(last) if last.isdigit() else last]
    elif last.isdigit():
        target[int(last)] = value
    else:
        target[last] = value
    return body


def test_seed_plans() -> None:
    """The seed body is valid; its upstream body gains the breakdown and loses our fields."""
    plan = make_plan(seed())
    [metric] = plan.metrics
    assert metric.route == "entries"
    assert metric.body == {
        "start": "2024-04-01T00:00:00.000Z",
        "end": "2024-04-30T23:59:59.000Z",
        "entities": [L1],
        "entityType": "location",
        "facets": ["segments"],
        "aggregationPeriod": "day",
        "breakdownByDimensions": ["entity"],
    }
    assert (plan.dated, plan.date_only, plan.key_dimensions) == (True, True, ("index", "entity"))


@pytest.mark.parametrize(
    ("path", "value", "expected"),
    [
        ("csvFormat", [], [("csvFormat", "must be an object, got an array")]),
        (
            "csvFormat.columns",
            [],
            [("csvFormat.columns", "must be a non-empty array of column objects, got an array")],
        ),
        (
            "csvFormat.columns[1]",
            "Entries",
            [("csvFormat.columns[1]", "must be an object, got 'Entries'")],
        ),
        (
            "csvFormat.columns[1].heading",
            "  ",
            [("csvFormat.columns[1].heading", "must be a non-empty string, got '  '")],
        ),
        (
            "csvFormat.sortBy[0]",
            {"column": 0, "order": "asc"},
            [
                (
                    "csvFormat.sortBy[0]",
                    "must be an integer column index, got an object: sortBy is an array of column "
                    "indices, not of objects",
                )
            ],
        ),
        (
            "csvFormat.sortBy[0]",
            True,
            [("csvFormat.sortBy[0]", "must be an integer column index, got a boolean")],
        ),
        (
            "csvFormat.sortBy[0]",
            2,
            [("csvFormat.sortBy[0]", "column index 2 is out of range 0..1")],
        ),
        (
            "csvFormat.sortBy",
            "0",
            [("csvFormat.sortBy", "must be an array of integer column indices, got '0'")],
        ),
        (
            "csvFormat.rowFilters",
            [],
            [
                (
                    "csvFormat.rowFilters",
                    "must be a non-empty array of one of 'entity', 'age', 'gender', 'role', 'taxonomy', got an array",
                )
            ],
        ),
        (
            "csvFormat.rowFilters",
            ["entity", "store"],
            [
                (
                    "csvFormat.rowFilters[1]",
                    "must be one of 'entity', 'age', 'gender', 'role', 'taxonomy', got 'store'",
                )
            ],
        ),
        (
            "csvFormat.rowFilters",
            ["entity", "entity"],
            [("csvFormat.rowFilters[1]", "duplicate dimension 'entity'")],
        ),
        (
            "csvFormat.dialect",
            "tsv",
            [("csvFormat.dialect", "must be one of 'default', 'excel', 'excel-eu', got 'tsv'")],
        ),
        (
            "csvFormat.compression",
            "zip",
            [("csvFormat.compression", "must be one of 'none', 'gzip', got 'zip'")],
        ),
        (
            "metricRequests",
            [],
            [
                (
                    "metricRequests",
                    "must be a non-empty array of metric request objects, got an array",
                )
            ],
        ),
        (
            "metricRequests[0].start",
            "2024-04-01",
            [
                (
                    "metricRequests[0].start",
                    "must be a full ISO 8601 date-time with a timezone, got '2024-04-01' (e.g. 2024-04-01T00:00:00.000Z)",
                )
            ],
        ),
        (
            "metricRequests[0].end",
            "2024-04-30T23:59:59",
            [
                (
                    "metricRequests[0].end",
                    "must be a full ISO 8601 date-time with a timezone, got '2024-04-30T23:59:59' (e.g. 2024-04-01T00:00:00.000Z)",
                )
            ],
        ),
        (
            "metricRequests[0].entities",
            [],
            [
                (
                    "metricRequests[0].entities",
                    "must be a non-empty array of entity ids, got an array",
                )
            ],
        ),
        (
            "metricRequests[0].entityType",
            "store",
            [
                (
                    "metricRequests[0].entityType",
                    "must be one of 'location', 'organisation', 'recording', got 'store'",
                )
            ],
        ),
        (
            "csvFormat.columns[1].metricId",
            "nope",
            [("csvFormat.columns[1].metricId", "names no metric request: 'nope'")],
        ),
        (
            "csvFormat.columns[0].heading",
            "Weather",
            [
                (
                    "csvFormat.columns[0]",
                    "column 'Weather' has no metricId and is not a dimension column (one of 'age', 'entity', "
                    "'entity_name', 'gender', 'index', 'role', 'taxonomy', by field or heading)",
                )
            ],
        ),
        (
            "csvFormat.columns[0].heading",
            "Age group",
            [
                (
                    "csvFormat.columns[0]",
                    "dimension column 'age' needs 'age' in csvFormat.rowFilters",
                )
            ],
        ),
        (
            "csvFormat.columns[1].filter",
            {"weather": "rain"},
            [
                (
                    "csvFormat.columns[1].filter.weather",
                    "filter keys must be one of 'entity', 'age', 'gender', 'role', 'taxonomy'",
                )
            ],
        ),
    ],
)
def test_reject(path: str, value: Any, expected: list[tuple[str, str]]) -> None:
    """Each validation rule gives invalid_request with its JSON path and message."""
    assert problems(changed(path, value)) == expected


def test_a_csv_with_no_value_column_is_refused() -> None:
    body = changed("csvFormat.columns", [{"heading": "Date"}, {"heading": "Location"}])
    assert problems(body) == [
        ("csvFormat.columns", "no column is bound to a metric request: nothing to export")
    ]


def test_every_problem_is_collected() -> None:
    """Several problems in one body come back together, in body order."""
    body = changed("csvFormat.sortBy", [{"column": 0}, 9])
    body["metricRequests"][0]["start"] = "yesterday"
    assert [p for p, _ in problems(body)] == [
        "metricRequests[0].start",
        "csvFormat.sortBy[0]",
        "csvFormat.sortBy[1]",
    ]


def test_duplicate_metric_ids() -> None:
    body = seed()
    body["metricRequests"].append(copy.deepcopy(body["metricRequests"][0]))
    assert problems(body) == [("metricRequests[1].metricId", "duplicate metricId 'm'")]


def test_unresolvable_route() -> None:
    """No route and no fetchValue that names one: invalid_request naming the request."""
    body = changed("csvFormat.columns[1].fetchValue", "footfall_index")
    assert problems(body) == [
        (
            "metricRequests[0]",
            "cannot tell the route of metric request 'm': give it a route, or bind it to a column "
            "whose fetchValue names one (got ['footfall_index'])",
        )
    ]


def test_explicit_route_wins_and_loses_its_prefix() -> None:
    body = changed("metricRequests[0].route", "metric/area/data")
    body["csvFormat"]["columns"][1]["fetchValue"] = "area_entries"
    assert make_plan(body).metrics[0].route == "area/data"


def test_dated_csv_needs_one_period() -> None:
    body = seed()
    second = {
        **copy.deepcopy(body["metricRequests"][0]),
        "metricId": "w",
        "aggregationPeriod": "week",
    }
    body["metricRequests"].append(second)
    body["csvFormat"]["columns"].append({"heading": "W", "metricId": "w", "fetchValue": "entries"})
    assert problems(body) == [
        ("metricRequests", "a dated CSV needs one aggregationPeriod, got 'day', 'week'")
    ]


def test_unbound_metric_request_is_a_warning_and_not_run() -> None:
    body = seed()
    body["metricRequests"].append({**copy.deepcopy(body["metricRequests"][0]), "metricId": "spare"})
    plan = make_plan(body)
    assert [m.metric_id for m in plan.metrics] == ["m"]
    assert plan.warnings == ("metric request 'spare' is bound to no column and was not run",)


def test_sales_take_entity_only() -> None:
    """Sales routes are asked for ["entity"] whatever the CSV needs, and reject other filters."""
    body = changed("csvFormat.rowFilters", ["entity", "age"])
    body["csvFormat"]["columns"][1]["fetchValue"] = "sales_volume"
    plan = make_plan(body)
    assert plan.metrics[0].route == "transactions/data"
    assert plan.metrics[0].body["breakdownByDimensions"] == ["entity"]
    assert "ages" not in plan.metrics[0].body
    body["csvFormat"]["columns"][1]["filter"] = {"gender": "female"}
    assert problems(body) == [
        (
            "csvFormat.columns[1].filter.gender",
            "route 'transactions/data' cannot be broken down by 'gender' (it takes entity only)",
        )
    ]


def test_breakdown_enums_and_facets_follow_the_csv() -> None:
    """Filter keys join the breakdown; enum lists are added; undated CSVs ask for summary."""
    body = changed("csvFormat.columns[0]", {"heading": "Store"})
    body["csvFormat"]["columns"][1]["filter"] = {"gender": "female"}
    upstream = make_plan(body).metrics[0].body
    assert upstream["breakdownByDimensions"] == ["entity", "gender"]
    assert upstream["genders"] == ["male", "female"]
    assert upstream["facets"] == ["summary"]


def test_unfiltered_column_on_a_broken_down_metric_is_rejected() -> None:
    """A column that would see several records per row (another column split it) is refused."""
    body = seed()
    body["csvFormat"]["columns"].append(
        {
            "heading": "Women",
            "metricId": "m",
            "fetchValue": "entries",
            "filter": {"gender": "female"},
        }
    )
    assert problems(body) == [
        (
            "csvFormat.columns[1]",
            "metric request 'm' is broken down by 'gender' for another column, so this column needs "
            "a 'gender' filter too (or its own metric request)",
        )
    ]


def test_single_metric_request_needs_no_metric_id() -> None:
    """With one metric request, a column with only fetchValue is a value column."""
    body = changed("csvFormat.columns[1]", {"heading": "Entries", "fetchValue": "entries"})
    del body["metricRequests"][0]["metricId"]
    assert make_plan(body).columns[1].metric == 0


def test_the_plan_carries_what_each_answer_is_read_for() -> None:
    """Each metric's read schema comes with the plan: row keys and filters as keys, values."""
    assert make_plan(seed()).metrics[0].reads == (
        ("index", "key"),
        ("location", "key"),
        ("entries", "value"),
    )
    body = seed()
    body["csvFormat"]["columns"][1]["field"] = "dwell.p50"
    assert make_plan(body).metrics[0].reads is None  # a nested read: types are inferred
