"""`csvgen standin` and workers as real processes: exports end to end, checked against the data set.

Expected values are computed here straight from the stand-in's data set
(``DataSet.hour``), not from its answers: daily entries are sums of hourly
counts, and an entity's total is the sum of its age segments.
"""

from __future__ import annotations

import asyncio
import copy
import signal
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest

from csvgen.standin.data import AGES, DataSet
from csvgen.standin.demo import SEED_REQUEST, download, submit
from tests.processes import Child, child_env

DATA = DataSet()  # the stand-in's default data set
OXFORD, REGENT = DATA.locations[0], DATA.locations[1]


class Stack:
    def __init__(self, standin: Child, info: dict[str, Any]) -> None:
        self.standin = standin
        self.submit_url: str = info["submit"]
        self.env: dict[str, str] = info["env"]
        self.workers: list[Child] = []

    async def add_worker(self) -> Child:
        worker = await Child("run", env=child_env(**self.env)).start()
        self.workers.append(worker)
        await worker.wait_for_line("connected to the bus")
        return worker

    async def export(self, rid: str, body: dict[str, Any]) -> tuple[Any, str]:
        """Submit one export; return the reply and the CSV text behind its signed URL."""
        frame = {**SEED_REQUEST, "data": {**SEED_REQUEST["data"], "id": rid, "body": body}}
        reply = await submit(self.submit_url, frame, timeout_s=60)
        if "body" not in reply:
            return reply, ""
        data = await asyncio.to_thread(download, reply["body"][0]["signedUrl"])
        return reply, data.decode()


@pytest.fixture
async def stack() -> AsyncIterator[Stack]:
    standin = await Child(
        "standin", "--part-chars", "4000", env=child_env(), stream="stdout"
    ).start()
    workers: list[Child] = []
    try:
        line = await standin.wait_for_line("standin-ready ")
        built = Stack(standin, orjson.loads(line.removeprefix("standin-ready ")))
        workers = built.workers
        yield built
    finally:
        for child in (*workers, standin):
            await child.kill()


def rows(csv: str) -> list[list[str]]:
    lines = csv.split("\r\n")
    assert lines[-1] == ""  # CRLF after the last line too
    return [line.split(",") for line in lines[1:-1]]


def day_entries(loc: Any, day: datetime) -> int | None:
    hours = [DATA.hour(loc, day + timedelta(hours=h)) for h in range(24)]
    open_hours = [h.entries for h in hours if h is not None]
    return sum(open_hours) if open_hours else None


def day_volume(loc: Any, day: datetime) -> float | None:
    hours = [DATA.hour(loc, day + timedelta(hours=h)) for h in range(24)]
    open_hours = [h.volume for h in hours if h is not None]
    return round(sum(open_hours), 2) if open_hours else None


def cell(value: float | None) -> str:
    return "" if value is None else str(value)


async def test_seed_example_matches_the_data_set(stack: Stack) -> None:
    """The seed request: 30 daily rows for April 2024, each the sum of that day's hours."""
    await stack.add_worker()
    reply, csv = await stack.export("seed", SEED_REQUEST["data"]["body"])
    april = [datetime(2024, 4, 1) + timedelta(days=d) for d in range(30)]
    assert rows(csv) == [[f"{d:%Y-%m-%d}", cell(day_entries(OXFORD, d))] for d in april]
    assert reply["body"][0]["rowCount"] == 30
    assert reply["body"][0]["key"].startswith(f"exports/{OXFORD.organisation.id}/")


async def test_age_breakdown_beside_sales(stack: Stack) -> None:
    """Entries by age sum to the day's entries; sales sit on the row with an empty age."""
    await stack.add_worker()
    body = {
        "csvFormat": {
            "columns": [
                {"heading": "Date"}, {"heading": "Store"}, {"heading": "Age"},
                {"heading": "Entries", "metricId": "e", "fetchValue": "entries"},
                {"heading": "Sales", "metricId": "s", "fetchValue": "sales_volume"},
            ],
            "sortBy": [0, 1, 2],
            "rowFilters": ["entity", "age"],
        },
        "metricRequests": [
            {"metricId": m, "start": "2024-04-05T00:00:00Z", "end": "2024-04-07T23:59:59Z",
             "entities": [OXFORD.id, REGENT.id], "entityType": "location", "aggregationPeriod": "day"}
            for m in ("e", "s")
        ],
    }  # fmt: skip
    _, csv = await stack.export("ages", body)
    table = rows(csv)
    assert len(table) == 3 * 2 * (len(AGES) + 1)
    for loc in (OXFORD, REGENT):
        for d in range(3):
            day = datetime(2024, 4, 5) + timedelta(days=d)
            mine = [r for r in table if r[0] == f"{day:%Y-%m-%d}" and r[1] == loc.id]
            assert [r[2] for r in mine] == [*sorted(AGES), ""]
            assert sum(int(r[3]) for r in mine[:-1]) == day_entries(loc, day)
            assert mine[-1][3:] == ["", cell(day_volume(loc, day))]
            assert all(r[4] == "" for r in mine[:-1])


async def test_hourly_export_in_many_parts(stack: Stack) -> None:
    """An hourly export whose answers come in many parts: every cell is the data set's."""
    await stack.add_worker()
    locations = DATA.locations
    body = copy.deepcopy(SEED_REQUEST["data"]["body"])
    body["csvFormat"]["columns"].insert(1, {"heading": "Site"})
    body["csvFormat"]["sortBy"] = [1, 0]
    metric = body["metricRequests"][0]
    metric.update(
        start="2024-04-01T00:00:00Z", end="2024-04-07T23:59:59Z", aggregationPeriod="hour"
    )
    metric["entities"] = [loc.id for loc in locations]
    _, csv = await stack.export("hourly", body)
    start = datetime(2024, 4, 1)
    expected = []
    for loc in sorted(locations, key=lambda loc: loc.id):
        for h in range(7 * 24):
            when = start + timedelta(hours=h)
            hour = DATA.hour(loc, when)
            expected.append([f"{when:%Y-%m-%dT%H:%M:%S}", loc.id, cell(hour and hour.entries)])
    assert rows(csv) == expected
    assert len(csv) > 10 * 4000  # the answer needed many 4000-character parts


async def test_bad_metric_body_is_metric_failed(stack: Stack) -> None:
    """The stand-in refuses store occupancy by age; the worker replies metric_failed."""
    await stack.add_worker()
    body = copy.deepcopy(SEED_REQUEST["data"]["body"])
    body["csvFormat"]["rowFilters"] = ["entity", "age"]
    body["csvFormat"]["columns"][1]["fetchValue"] = "area_max_occupancy"
    reply, _ = await stack.export("bad", body)
    assert reply["error"]["code"] == "metric_failed"
    assert reply["error"]["message"] == (
        "metric request 'entries-by-day' failed: bad_request: max-occupancy cannot be broken down by age"
    )


async def test_two_workers_share_a_batch(stack: Stack) -> None:
    """Twenty requests over two workers: each gets exactly one reply, both workers work."""
    first, second = await stack.add_worker(), await stack.add_worker()
    ids = [f"batch-{n:02d}" for n in range(20)]
    replies = await asyncio.gather(
        *(stack.export(rid, SEED_REQUEST["data"]["body"]) for rid in ids)
    )
    assert all(reply["body"][0]["rowCount"] == 30 for reply, _ in replies)
    for worker in (first, second):
        worker.proc.send_signal(signal.SIGTERM)
        assert await worker.wait() == 0
    served = [
        [line for line in w.lines if "outcome=ok" in line and "id=batch-" in line]
        for w in (first, second)
    ]
    assert len(served[0]) + len(served[1]) == 20
    assert served[0] and served[1]
    answered = sorted(line.split("id=")[1].split()[0] for w in served for line in w)
    assert answered == ids


async def test_make_run_demo() -> None:
    """`csvgen demo` (what `make run` runs) prints the reply and the CSV, then exits 0."""
    demo = await Child("demo", env=child_env(), stream="stdout").start()
    try:
        assert await demo.wait() == 0
    finally:
        await demo.kill()
    out = "\n".join(demo.lines)
    assert '"rowCount": 30' in out
    april = [datetime(2024, 4, 1) + timedelta(days=d) for d in range(30)]
    rows_shown = [f"  {d:%Y-%m-%d},{cell(day_entries(OXFORD, d))}" for d in april]
    start = demo.lines.index("  Date,Entries")
    assert demo.lines[start + 1 : start + 31] == rows_shown


async def test_standin_stops_cleanly_on_ctrl_c() -> None:
    """SIGINT stops the stand-in (bus, Metrics API and S3) with status 0."""
    standin = await Child("standin", env=child_env(), stream="stdout").start()
    try:
        await standin.wait_for_line("standin-ready ")
        standin.proc.send_signal(signal.SIGINT)
        assert await standin.wait() == 0
    finally:
        await standin.kill()
    assert standin.lines[-1] == "csvgen stand-in: stopped"


async def test_csvgen_submit_against_the_stand_in(stack: Stack, tmp_path: Path) -> None:
    """The line `csvgen standin` prints: `csvgen submit --download` exits 0 with the key; an
    invalid request exits 1 with its error reply; a file that is no frame exits 2."""
    printed = next(line for line in stack.standin.lines if "csvgen submit" in line)
    assert printed.strip() == f"csvgen submit FRAME.json --url {stack.submit_url} --download"
    await stack.add_worker()
    good, bad, junk = tmp_path / "good.json", tmp_path / "bad.json", tmp_path / "junk.json"
    good.write_bytes(orjson.dumps({**SEED_REQUEST, "data": {**SEED_REQUEST["data"], "id": "s1"}}))
    bad_data = {**SEED_REQUEST["data"], "id": "s2", "body": {"csvFormat": {}}}
    bad.write_bytes(orjson.dumps({**SEED_REQUEST, "data": bad_data}))
    junk.write_text("[1, 2]")
    results = {}
    for frame in (good, bad, junk):
        child = Child("submit", str(frame), "--url", stack.submit_url, "--download",
                      env=child_env(), stream="both")  # fmt: skip
        await child.start()
        results[frame.name] = (await child.wait(within=60), "\n".join(child.lines))
    status, out = results["good.json"]
    assert status == 0, out
    reply = orjson.loads(out[: out.rindex("}") + 1])
    assert reply["body"][0]["rowCount"] == 30
    assert f"downloaded {reply['body'][0]['key']}: " in out and "sha256 matches" in out
    status, out = results["bad.json"]
    assert status == 1 and '"code": "invalid_request"' in out
    status, out = results["junk.json"]
    assert status == 2 and "not a request frame" in out
