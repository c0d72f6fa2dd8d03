"""The csv-generator route when things go wrong, and under load. Real worker, fakes, moto S3."""

from __future__ import annotations

import asyncio
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from websockets.asyncio.server import serve
from websockets.http11 import Response

from csvgen.csvexport.files import write_rows
from csvgen.csvexport.plan import make_plan
from csvgen.csvexport.stop import Stop
from csvgen.errors import TooLarge
from csvgen.frames import Action, encode_action
from tests.conftest import S3Server, running_exporter
from tests.fakes import FakeBus, FakeMetrics, RawFrames
from tests.test_export import download
from tests.test_plan import L1, seed


def request(rid: str, body: dict[str, Any] | None = None) -> str:
    return encode_action(Action(rid, "external-service/csv-generator", body or seed()))


def entries_answer(days: int = 3, entities: tuple[str, ...] = (L1,)) -> dict[str, Any]:
    start = date(2024, 1, 1)
    return {
        "segments": [
            {
                "index": f"{start + timedelta(days=d)}T00:00:00.000",
                "location": e,
                "entries": 100 + d,
            }
            for d in range(days)
            for e in entities
        ]
    }


async def test_invalid_body_is_answered_with_every_problem(
    bus: FakeBus, metrics: FakeMetrics
) -> None:
    """A bad body is refused before any metric request runs."""
    body = seed()
    body["csvFormat"]["sortBy"] = [{"column": 0}]
    async with running_exporter(bus, metrics):
        await bus.send(request("bad", body))
        _, payload = await bus.reply()
    assert payload["error"]["code"] == "invalid_request"
    assert payload["error"]["details"][0]["path"] == "csvFormat.sortBy[0]"
    assert metrics.requests == []


async def test_upstream_error_is_metric_failed(bus: FakeBus, metrics: FakeMetrics) -> None:
    """An error answer from the Metrics API becomes metric_failed naming the metricId."""
    metrics.answers.append(
        ({"route": "entries"}, {"error": {"code": "bad_request", "message": "date-only start"}})
    )
    async with running_exporter(bus, metrics):
        await bus.send(request("up"))
        _, payload = await bus.reply()
    assert payload["error"] == {
        "code": "metric_failed",
        "status": 502,
        "message": "metric request 'm' failed: bad_request: date-only start",
        "details": [],
    }


async def test_upstream_silence_is_metric_timeout(bus: FakeBus, metrics: FakeMetrics) -> None:
    """No answer within metric_timeout_s: metric_timeout 504; the worker answers the next request."""
    metrics.answers.append(({"route": "entries"}, entries_answer()))
    metrics.hold.clear()
    async with running_exporter(bus, metrics, metric_timeout_s=0.2):
        await bus.send(request("slow"))
        _, payload = await bus.reply()
        assert (payload["error"]["code"], payload["error"]["status"]) == ("metric_timeout", 504)
        assert payload["error"]["message"] == "metric request 'm' got no complete answer in 0.2 s"
        await bus.send('{"action": "external-service", "data": {"id": "next", "route": 1}}')
        assert (await bus.reply())[0] == "next"


async def test_two_records_for_one_cell_is_metric_failed(
    bus: FakeBus, metrics: FakeMetrics
) -> None:
    """Duplicate records for a cell are an upstream inconsistency, never a silent pick."""
    answer = entries_answer(days=1)
    answer["segments"].append(dict(answer["segments"][0], entries=999))
    metrics.answers.append(({"route": "entries"}, answer))
    async with running_exporter(bus, metrics):
        await bus.send(request("dup"))
        _, payload = await bus.reply()
    assert payload["error"]["code"] == "metric_failed"
    assert payload["error"]["message"] == (
        f"metric request 'm' failed: two records for one cell (row 2024-01-01/{L1}, column 'Entries')"
    )


async def test_lost_metrics_link_is_retried(
    bus: FakeBus, metrics: FakeMetrics, s3: S3Server
) -> None:
    """The Metrics API link drops mid-request: csvgen reconnects, asks again and succeeds."""
    metrics.answers.append(({"route": "entries"}, entries_answer()))
    metrics.drop_once = "entries"
    async with running_exporter(bus, metrics):
        await bus.send(request("retry"))
        _, payload = await bus.reply()
    assert payload["body"][0]["rowCount"] == 3
    assert [route for _, route, _ in metrics.requests].count("entries") == 2
    assert len(metrics.connections) == 2


async def test_link_lost_in_the_middle_of_a_streamed_answer_starts_it_again(
    bus: FakeBus, metrics: FakeMetrics, s3: S3Server
) -> None:
    """Parts already read when the link drops are dropped with it: the answer is read
    again from its first part, and the CSV holds each record once."""
    answer = entries_answer(days=1000, entities=tuple(f"loc{n:04d}" for n in range(300)))
    for n, record in enumerate(answer["segments"]):  # 300,000 records, about 24 MB
        record["entries"] = n  # each line of the CSV its own
    metrics.answers.append(({"route": "entries"}, RawFrames(answer, parts=8)))
    metrics.cut_after["entries"] = 7  # past a batch of the reader: it has read some
    async with running_exporter(bus, metrics):
        await bus.send(request("cut"))
        _, payload = await bus.reply()
    assert payload["body"][0]["rowCount"] == 300_000
    assert [route for _, route, _ in metrics.requests].count("entries") == 2
    lines = download(payload["body"][0]["signedUrl"]).splitlines()
    assert len(lines) == len(set(lines)) == 300_001


class DuplicatePart(RawFrames):
    """A two-part answer whose first part arrives twice."""

    def frames(self, rid: str) -> list[str]:
        first, second = super().frames(rid)
        return [first, first, second]


async def test_broken_multipart_answer_is_metric_failed(bus: FakeBus, metrics: FakeMetrics) -> None:
    """A duplicate part fails the request at once (no hang until the timeout)."""
    metrics.answers.append(({"route": "entries"}, DuplicatePart(entries_answer(), parts=2)))
    async with running_exporter(bus, metrics):
        await bus.send(request("broken"))
        _, payload = await bus.reply()
    assert payload["error"]["code"] == "metric_failed"
    assert payload["error"]["message"].startswith(
        "metric request 'm' failed: broken answer: duplicate part 0"
    )


async def test_s3_down_is_storage_failed_and_worker_goes_on(
    bus: FakeBus, metrics: FakeMetrics, own_s3: S3Server
) -> None:
    """With S3 stopped the export fails as storage_failed; the worker still answers."""
    metrics.answers.append(({"route": "entries"}, entries_answer()))
    own_s3.stop()
    async with running_exporter(bus, metrics):
        await bus.send(request("s3"))
        _, payload = await bus.reply()
        assert (payload["error"]["code"], payload["error"]["status"]) == ("storage_failed", 502)
        assert payload["error"]["message"].startswith("upload to bucket 'aura-exports' failed: ")
        await bus.send(request("s3-again", {"csvFormat": {}}))
        assert (await bus.reply())[0] == "s3-again"


async def test_rows_over_the_limit_are_refused_before_fetching(
    bus: FakeBus, metrics: FakeMetrics
) -> None:
    """Issue 8 #11: the plan bounds the rows (30 days + 2 edge buckets, one entity); nothing is fetched."""
    async with running_exporter(bus, metrics, max_rows=31):
        await bus.send(request("big"))
        _, payload = await bus.reply()
    assert payload["error"]["code"] == "too_large"
    assert payload["error"]["message"].startswith(
        "the export could have up to 32 rows; the limit is 31"
    )
    assert metrics.requests == []


async def test_too_many_rows_is_too_large(bus: FakeBus, metrics: FakeMetrics, s3: S3Server) -> None:
    """A period csvgen cannot count buckets of has no estimate: the joined table is checked."""
    metrics.answers.append(({"route": "entries"}, entries_answer(days=5)))
    body = seed()
    body["metricRequests"][0]["aggregationPeriod"] = "fortnight"
    async with running_exporter(bus, metrics, max_rows=4):
        await bus.send(request("big", body))
        _, payload = await bus.reply()
    assert payload["error"]["code"] == "too_large"
    assert payload["error"]["message"] == "the export has 5 rows; the limit is 4"


async def test_same_second_same_owner_gets_new_keys(
    bus: FakeBus, metrics: FakeMetrics, s3: S3Server
) -> None:
    """Two exports for one owner in the same (pinned) second never overwrite each other."""
    metrics.answers.append(({"route": "entries"}, entries_answer()))
    async with running_exporter(bus, metrics):
        await bus.send(request("k1"))
        await bus.send(request("k2"))
        replies = dict([await bus.reply(), await bus.reply()])
    keys = sorted(r["body"][0]["key"] for r in replies.values())
    stem = (
        "exports/64a1b2c3d4e5f6a7b8c9d0e3/2024-04-15T10-15-00"  # no reference data: the entity id
    )
    assert keys == [f"{stem}-2.csv", f"{stem}.csv"]
    listed = s3.client().list_objects_v2(Bucket="aura-exports")["Contents"]
    manifests = [k + ".manifest.json" for k in keys]
    assert sorted(o["Key"] for o in listed) == sorted(keys + manifests)


async def test_repeat_of_a_finished_id_is_resigned_not_rerun(
    bus: FakeBus, metrics: FakeMetrics, s3: S3Server
) -> None:
    """A finished id is answered again with the same object and a working signed URL."""
    metrics.answers.append(({"route": "entries"}, entries_answer()))
    async with running_exporter(bus, metrics):
        await bus.send(request("once"))
        _, first = await bus.reply()
        runs = len(metrics.requests)
        await bus.send(request("once"))
        _, again = await bus.reply()
    assert len(metrics.requests) == runs
    a, b = first["body"][0], again["body"][0]
    assert {k: v for k, v in a.items() if k not in ("signedUrl", "expiresAt")} == {
        k: v for k, v in b.items() if k not in ("signedUrl", "expiresAt")
    }
    assert download(b["signedUrl"]) == download(a["signedUrl"])


async def test_big_export_leaves_the_loop_free(
    bus: FakeBus, metrics: FakeMetrics, s3: S3Server
) -> None:
    """While a 730k-row export is combined, a ping and a small export are answered first."""
    locations = tuple(f"{n:024x}" for n in range(2000))
    big = seed()
    big["metricRequests"][0]["entities"] = list(locations)
    small = seed()
    small["csvFormat"]["columns"][1]["fetchValue"] = "passers_by"
    metrics.answers.append(({"route": "entries"}, entries_answer(days=365, entities=locations)))
    metrics.answers.append(
        (
            {"route": "passers-by"},
            {"segments": [{"index": "2024-04-01T00:00:00.000", "location": L1, "passers_by": 7}]},
        )
    )
    async with running_exporter(bus, metrics):
        await bus.send(request("big", big))
        assert await metrics.answered.get() == "entries"  # the worker now parses and combines
        ws = await bus.wait_connections(1)
        pong = await ws.ping()
        await bus.send(request("small", small))
        async with asyncio.timeout(5):
            latency = await pong
        first, second = await bus.reply(), await bus.reply()
    assert latency < 5
    assert [first[0], second[0]] == ["small", "big"]
    assert second[1]["body"][0]["rowCount"] == 365 * 2000


async def test_refused_metrics_token_fails_exports_fast(bus: FakeBus) -> None:
    """A Metrics API that answers 401 fails each export at once, not after the timeout."""

    def reject(connection: Any, request: Any) -> Response:
        return connection.respond(401, "bad token\n")

    async with serve(lambda ws: ws.wait_closed(), "127.0.0.1", 0, process_request=reject) as server:
        refusing = FakeMetrics()
        refusing.uri = f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}"
        async with running_exporter(bus, refusing, metric_timeout_s=60):
            await bus.send(request("refused"))
            _, payload = await bus.reply()
    assert payload["error"]["code"] == "metric_failed"
    assert payload["error"]["message"] == (
        "metric request 'm' failed: the Metrics API refused the connection (HTTP 401)"
    )


async def test_file_over_the_byte_limit_is_too_large(
    bus: FakeBus, metrics: FakeMetrics, s3: S3Server
) -> None:
    metrics.answers.append(({"route": "entries"}, entries_answer(days=5)))
    async with running_exporter(bus, metrics, max_bytes=40):
        await bus.send(request("bytes"))
        _, payload = await bus.reply()
    assert payload["error"]["code"] == "too_large"
    size = len(b"Date,Entries\r\n") + 5 * len(b"2024-01-01,100\r\n")
    assert payload["error"]["message"] == f"the export is at least {size} bytes; the limit is 40"
    assert "Contents" not in s3.client().list_objects_v2(Bucket="aura-exports")


async def test_metric_requests_of_one_export_run_at_once(
    bus: FakeBus, metrics: FakeMetrics, s3: S3Server
) -> None:
    """Three metric requests are all in flight before any answer comes back."""
    body = seed()
    for mid, fetch in (("p", "passers_by"), ("c", "capture_rate")):
        body["metricRequests"].append({**body["metricRequests"][0], "metricId": mid})
        body["csvFormat"]["columns"].append({"heading": mid, "metricId": mid, "fetchValue": fetch})
    for route in ("entries", "passers-by", "capture-rate"):
        metrics.answers.append(({"route": route}, {"segments": []}))
    metrics.hold.clear()
    async with running_exporter(bus, metrics):
        await bus.send(request("together", body))
        seen: set[str] = set()
        async with asyncio.timeout(5):  # one after another, the second would never come
            while len(seen - {"detail/list"}) < 3:
                seen.add(await metrics.received.get())
        metrics.hold.set()
        _, payload = await bus.reply()
    assert payload["body"][0]["rowCount"] == 0


async def test_entity_names_are_looked_up_once_an_hour(
    bus: FakeBus, metrics: FakeMetrics, s3: S3Server
) -> None:
    """A second export naming the same entity uses the cached reference data."""
    body = seed()
    body["csvFormat"]["columns"].insert(1, {"heading": "Location name"})
    metrics.answers.append(({"route": "entries"}, entries_answer()))
    metrics.references = [{"id": L1, "name": "Oxford Street Store", "organisation_id": "org1"}]
    async with running_exporter(bus, metrics):
        for rid in ("n1", "n2"):
            await bus.send(request(rid, body))
            _, payload = await bus.reply()
            assert payload["body"][0]["key"].startswith("exports/org1/")
        url = payload["body"][0]["signedUrl"]
    assert download(url).split(b"\r\n")[1] == b"2024-01-01,Oxford Street Store,100"
    assert [route for _, route, _ in metrics.requests].count("detail/list") == 1


@pytest.mark.parametrize(
    ("budget", "what"), [(1024, "the CSV"), (0, "the answers' records")], ids=["csv", "records"]
)
async def test_a_spill_directory_gone_is_storage_failed_and_leaves_nothing(
    bus: FakeBus, metrics: FakeMetrics, s3: S3Server, tmp_path: Path, budget: int, what: str
) -> None:
    """CSVGEN_SPILL_DIR removed (or full) after start: storage_failed, no object, no path;
    with a budget of 0 the answers' records are the first to go there."""
    metrics.answers.append(({"route": "entries"}, entries_answer(days=5)))
    gone = tmp_path / "gone"
    async with running_exporter(bus, metrics, spill_dir=str(gone), memory_budget_mb=budget):
        await bus.send(request("disk"))
        _, payload = await bus.reply()
    assert payload["error"]["code"] == "storage_failed"
    assert payload["error"]["message"] == (
        f"{what} could not be written to the spill directory: No such file or directory"
    )
    assert "Contents" not in s3.client().list_objects_v2(Bucket="aura-exports")


async def test_an_answer_the_stream_cannot_trust_is_asked_for_again(
    bus: FakeBus, metrics: FakeMetrics, s3: S3Server
) -> None:
    """A value column mixing numbers and text, found after the reading began: the answer
    is asked for again and read whole; numbers stay numbers, the text is text."""
    answer = entries_answer(days=4000)  # about 320 KB: read as it arrives
    answer["segments"][-1]["entries"] = "n/a"
    metrics.answers.append(({"route": "entries"}, RawFrames(answer, parts=4)))
    async with running_exporter(bus, metrics, max_rows=10_000):
        await bus.send(request("again"))
        _, payload = await bus.reply()
    [item] = payload["body"]
    assert [route for _, route, _ in metrics.requests].count("entries") == 2
    assert item["rowCount"] == 4000
    assert item["warnings"][0].startswith("column 'Entries': the Metrics API answered numbers")
    lines = download(item["signedUrl"]).splitlines()
    assert lines[1] == b"2024-01-01,100" and lines[-1].endswith(b",n/a")


def test_the_writer_stops_at_the_first_batch_past_the_byte_limit(tmp_path: Any) -> None:
    """CSVGEN_MAX_BYTES is checked as the file is written: the batches after the one that
    passes it are never asked for (out of core they are still being sorted)."""
    plan = make_plan(seed())
    asked: list[int] = []

    def rows(stop: Stop) -> Any:
        for n in range(3):
            asked.append(n)
            yield pl.DataFrame({"c0": ["2024-01-01"] * 10, "c1": [float(n)] * 10})

    with (tmp_path / "csv").open("w+b") as f, pytest.raises(TooLarge, match="at least"):
        write_rows(plan, rows, f, set(), 100, Stop())
    assert asked == [0]
