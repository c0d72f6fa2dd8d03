"""Any body, however wrong, is planned or refused with invalid_request: never a crash.

Deterministic mutation fuzzing (a fixed seed): each case replaces, deletes or
retypes one or two values anywhere in valid bodies.
"""

from __future__ import annotations

import copy
import random
from typing import Any

import pytest

from csvgen.csvexport.plan import make_plan
from csvgen.errors import InvalidRequest
from tests.test_plan import seed

ODD_VALUES: list[Any] = [
    None, True, 0, -1, 10**20, 1.5, "", "x", "=1", [], [None], [{}], {}, {"a": 1},
    "entity", "age", ["entity"], "2024-04-01", "2024-04-01T00:00:00Z", {"taxonomy": 1},
]  # fmt: skip


def wide() -> dict[str, Any]:
    """A valid body touching most rules: filters, names, two requests, a dialect."""
    body = seed()
    body["csvFormat"]["rowFilters"] = ["entity", "age"]
    body["csvFormat"]["dialect"] = "excel-eu"
    body["csvFormat"]["columns"] += [
        {"heading": "Location name"},
        {"heading": "Age"},
        {"heading": "Sales", "metricId": "s", "fetchValue": "sales_volume"},
        {
            "heading": "Women",
            "metricId": "w",
            "fetchValue": "entries",
            "filter": {"gender": "female"},
        },
    ]
    body["metricRequests"] += [
        {
            **copy.deepcopy(body["metricRequests"][0]),
            "metricId": "s",
            "route": "metric/transactions/data",
        },
        {**copy.deepcopy(body["metricRequests"][0]), "metricId": "w"},
    ]
    return body


def paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [prefix]
    if isinstance(node, dict):
        for key, value in node.items():
            found += paths(value, (*prefix, key))
    elif isinstance(node, list):
        for n, value in enumerate(node):
            found += paths(value, (*prefix, n))
    return found


def mutate(body: dict[str, Any], rng: random.Random) -> dict[str, Any]:
    body = copy.deepcopy(body)
    for _ in range(rng.randint(1, 2)):
        path = rng.choice(paths(body)[1:])
        parent = body
        for step in path[:-1]:
            parent = parent[step]
        if rng.random() < 0.2 and isinstance(parent, dict):
            del parent[path[-1]]
        else:
            parent[path[-1]] = copy.deepcopy(rng.choice(ODD_VALUES))
    return body


@pytest.mark.parametrize("base", [seed, wide])
def test_mutated_bodies_never_crash_the_planner(base: Any) -> None:
    rng = random.Random(20261127)
    valid = make_plan(base())
    assert valid.metrics
    outcomes = {"planned": 0, "refused": 0}
    for _ in range(1500):
        body = mutate(base(), rng)
        try:
            make_plan(body)
        except InvalidRequest as exc:
            assert exc.details, body  # a refusal always says what and where
            outcomes["refused"] += 1
        else:
            outcomes["planned"] += 1
    assert outcomes["refused"] > 500 and outcomes["planned"] > 50
