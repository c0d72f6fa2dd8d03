"""The stand-in's Metrics API as a pure object: its rules, and a data set that holds together."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection, serve

from csvgen.frames import Action, ReplyAssembler, encode_action
from csvgen.standin.api import MetricsAPI
from csvgen.standin.data import DataSet, apportion
from csvgen.standin.server import Interleaver, Standin

API = MetricsAPI(DataSet())
OXFORD = API.data.locations[0]


def ask(route: str, **body: Any) -> Any:
    base = {"start": "2024-04-01T00:00:00Z", "end": "2024-04-30T23:59:59Z", "entities": [OXFORD.id],
            "entityType": "location", "aggregationPeriod": "day", "breakdownByDimensions": ["entity"],
            "facets": ["segments"]}  # fmt: skip
    return API.answer("metric", route, {**base, **body})


@pytest.mark.parametrize(
    ("route", "body", "message"),
    [
        (
            "entries",
            {"start": "2024-04-01"},
            "start must be a full ISO 8601 date-time with a timezone",
        ),
        (
            "entries",
            {"end": "2024-04-30T23:59:59"},
            "end must carry a timezone: '2024-04-30T23:59:59'",
        ),
        ("footfall", {}, "unknown route metric/footfall"),
        (
            "transactions/data",
            {"breakdownByDimensions": ["entity", "age"]},
            'transactions/data requires breakdownByDimensions ["entity"]',
        ),
        (
            "max-occupancy",
            {"breakdownByDimensions": ["entity", "age"]},
            "max-occupancy cannot be broken down by age",
        ),
        (
            "entries",
            {"aggregationPeriod": "fortnight"},
            "aggregationPeriod must be one of hour, day, week, month, year",
        ),
        ("entries", {"entities": ["nope"]}, "unknown location 'nope'"),
    ],
)
def test_rule_breaking_bodies_get_error_answers(
    route: str, body: dict[str, Any], message: str
) -> None:
    assert ask(route, **body)["error"]["message"] == message


def test_coarser_buckets_are_sums_of_finer_ones() -> None:
    """A week's entries are the sum of its days; a day's the sum of its hours."""
    days = ask("entries", start="2024-04-01T00:00:00Z", end="2024-04-07T23:59:59Z")["segments"]
    week = ask(
        "entries",
        start="2024-04-01T00:00:00Z",
        end="2024-04-07T23:59:59Z",
        aggregationPeriod="week",
    )
    assert week["segments"][0]["index"] == "2024-04-01T00:00:00.000"
    assert week["segments"][0]["entries"] == sum(d["entries"] or 0 for d in days)
    hours = ask(
        "entries",
        start="2024-04-03T00:00:00Z",
        end="2024-04-03T23:59:59Z",
        aggregationPeriod="hour",
    )
    assert sum(h["entries"] or 0 for h in hours["segments"]) == days[2]["entries"]
    assert hours["segments"][3]["entries"] is None  # 3 a.m.: closed, null and never 0


def test_breakdown_slices_sum_to_the_total() -> None:
    """Entries by age and gender add up exactly to the entity's entries."""
    total = ask("entries", facets=["summary"])["summary"][0]["entries"]
    split = ask("entries", facets=["summary"], breakdownByDimensions=["entity", "age", "gender"])
    assert len(split["summary"]) == 7 * 2
    assert sum(r["entries"] for r in split["summary"]) == total


def test_a_month_of_sales_matches_the_documented_shape() -> None:
    """Conversion 13-15 %, ATV £45-50, UPT 2.1-2.5, capture rate near 20 %."""
    sales = ask("transactions/data", facets=["summary"])["summary"][0]
    entries = ask("entries", facets=["summary"])["summary"][0]["entries"]
    capture = ask("capture-rate", facets=["summary"])["summary"][0]["capture_rate"]
    assert 13 <= 100 * sales["sales_transaction_count"] / entries <= 15.5
    assert 45 <= sales["sales_atv"] <= 50
    assert 2.1 <= sales["sales_upt"] <= 2.5
    assert 17 <= capture <= 24


def test_detail_list_answers_locations_and_organisations() -> None:
    org = OXFORD.organisation.id
    locations = API.answer(
        "detail",
        "detail/list",
        {"returnEntityType": "location", "entities": [org], "entityType": "organisation"},
    )
    assert {loc["organisation_id"] for loc in locations} == {org}
    assert "Oxford Street Store" in {loc["name"] for loc in locations}
    orgs = API.answer(
        "detail",
        "detail/list",
        {"returnEntityType": "organisation", "entities": [OXFORD.id], "entityType": "location"},
    )
    assert [o["id"] for o in orgs] == [org]


@pytest.mark.parametrize(
    ("total", "shares"),
    [(10, [1, 1, 1]), (0, [0.5, 0.5]), (1000, [0.05, 0.19, 0.27, 0.21, 0.14, 0.09, 0.05])],
)
def test_apportion_keeps_the_total(total: int, shares: list[float]) -> None:
    parts = apportion(total, shares)
    assert sum(parts) == total and all(p >= 0 for p in parts)


async def test_big_answers_come_in_interleaved_parts() -> None:
    """Above part_chars an answer is split; parts of two answers in flight alternate."""
    standin = await Standin(part_chars=2000).start()
    try:
        async with connect(standin.metrics_url) as ws:
            for rid in ("a", "b"):
                body = {"start": "2024-04-01T00:00:00Z", "end": "2024-04-10T23:59:59Z",
                        "entities": [OXFORD.id], "entityType": "location", "aggregationPeriod": "hour",
                        "breakdownByDimensions": ["entity"], "facets": ["segments"]}  # fmt: skip
                await ws.send(encode_action(Action(rid, "entries", body, action="metric")))
            assembler, order, done = ReplyAssembler(), [], {}
            while len(done) < 2:
                frame = await ws.recv()
                order.append(frame.split("|", 1)[0])
                if (answer := assembler.feed(frame)) is not None:
                    done[answer[0]] = answer[1]
    finally:
        await standin.stop()
    assert order.count("a") > 5 and order.count("b") > 5
    first_b = order.index("b")
    assert "a" in order[first_b:]  # b's parts began before a's were all sent
    assert done["a"] == done["b"] and len(done["a"]["segments"]) == 10 * 24


async def test_frames_are_made_when_sent() -> None:
    """An answer given as an iterator is not consumed when queued: each frame is made
    at its turn (the benchmark's replay copies no answer before its first byte), and
    it still interleaves with an answer given as a list."""
    made: list[str] = []

    def lazy() -> Iterator[str]:
        for n in range(3):
            made.append(f"a{n}")
            yield f"a|{n}|3|part"

    made_when_queued: list[str] = ["not queued"]

    async def handler(ws: ServerConnection) -> None:
        out = Interleaver(ws)
        out.computing = 1  # as while another answer is computed: nothing is sent yet
        out.add("a", lazy())
        out.add("b", ["b|0|2|part", "b|1|2|part"])
        made_when_queued[:] = made
        out.computing = 0
        sender = asyncio.create_task(out.run())
        await ws.wait_closed()
        sender.cancel()

    async with serve(handler, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        async with connect(f"ws://127.0.0.1:{port}") as ws:
            got = [await ws.recv() for _ in range(5)]
    assert made_when_queued == []
    assert [g.split("|", 2)[:2] for g in got] == [
        ["a", "0"], ["b", "0"], ["a", "1"], ["b", "1"], ["a", "2"]
    ]  # fmt: skip
    assert made == ["a0", "a1", "a2"]
