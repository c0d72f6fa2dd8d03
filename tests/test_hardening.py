"""SPEC §8 against the real worker: each reproduction of issue 8, hostile input by hostile input.

The worker runs in this event loop against the fake bus and Metrics API on
loopback and moto's S3 server; every case ends by showing the worker still serves.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import threading
from typing import Any
from urllib.parse import quote

import orjson
import pytest

from csvgen.errors import MAX_REPLY_BYTES
from tests.conftest import S3Server, running_exporter
from tests.fakes import FakeBus, FakeMetrics, Scripted
from tests.test_export import download
from tests.test_export_errors import entries_answer, request
from tests.test_plan import L1, seed


def raw_frame(rid: str, body_text: str) -> str:
    """A request frame around a body given as JSON text (too big or deep to build as objects)."""
    return (
        '{"action":"external-service","data":{"id":"' + rid + '",'
        '"route":"external-service/csv-generator","body":' + body_text + "}}"
    )


async def reply_text(bus: FakeBus, rid: str) -> tuple[dict[str, Any], int]:
    """The next reply, checked to be ``rid``'s, with its size on the wire."""
    got, payload = await bus.reply()
    assert got == rid
    return payload, len(bus.raw[-1])


async def seed_still_served(bus: FakeBus, metrics: FakeMetrics, rid: str = "after") -> None:
    await bus.send(request(rid))
    got, payload = await bus.reply()
    assert got == rid and payload["body"][0]["rowCount"] == 3, payload


@pytest.mark.parametrize("entries", [4_000_000, 1_000_000])
async def test_huge_body_is_refused_by_size_with_a_small_reply(
    bus: FakeBus, metrics: FakeMetrics, s3: S3Server, entries: int
) -> None:
    """#1: an 8 MB (or 2 MB) array body: one too_large of a few hundred bytes, the worker goes on."""
    metrics.answers.append(({"route": "entries"}, entries_answer()))
    text = raw_frame("huge", '{"metricRequests":[' + ",".join(["1"] * entries) + "]}")
    async with running_exporter(bus, metrics):
        await bus.send(text)
        payload, size = await reply_text(bus, "huge")
        await seed_still_served(bus, metrics)
    assert size < 1024
    assert payload["error"]["code"] == "too_large"
    assert payload["error"]["details"] == [
        {"path": "body", "message": f"must be at most 1048576 bytes of JSON, got {len(text)}"}
    ]


async def test_body_within_the_size_limit_gets_a_bounded_reply(
    bus: FakeBus, metrics: FakeMetrics
) -> None:
    """#1, #2: a 1 MB body of 20,000 bad columns and 20,000 bad metric requests: a short reply."""
    body = {
        "csvFormat": {"columns": [{"heading": 7}] * 20_000, "sortBy": [{"x": 1}] * 20_000},
        "metricRequests": [1] * 20_000,
    }
    async with running_exporter(bus, metrics):
        await bus.send(request("wide", body))
        payload, size = await reply_text(bus, "wide")
    assert size < MAX_REPLY_BYTES
    assert payload["error"]["details"] == [
        {"path": "metricRequests", "message": "must hold at most 50 metric requests, got 20000"},
        {
            "path": "csvFormat.rowFilters",
            "message": "must be a non-empty array of one of 'entity', 'age', 'gender', 'role', "
            "'taxonomy', got null",
        },
        {"path": "csvFormat.columns", "message": "must hold at most 500 columns, got 20000"},
        {"path": "csvFormat.sortBy", "message": "must hold at most 500 indices"},
    ]


async def test_many_problems_are_cut_at_one_hundred(bus: FakeBus, metrics: FakeMetrics) -> None:
    """#1: 500 bad columns: 100 details, then one that counts the rest; long strings cut."""
    long = "=" + "x" * 1_000
    body = seed()
    body["csvFormat"]["columns"] = [{"heading": "h", "metricId": long}] * 500
    async with running_exporter(bus, metrics):
        await bus.send(request("many", body))
        payload, size = await reply_text(bus, "many")
    error = payload["error"]
    assert size < MAX_REPLY_BYTES
    assert error["message"] == "invalid request: 500 problems"
    assert len(error["details"]) == 101
    assert error["details"][-1] == {"path": "", "message": "… and 400 more problems"}
    first = error["details"][0]["message"]
    assert first.startswith("names no metric request: '=xxx") and first.endswith("…'")
    assert len(first) < 250


@pytest.mark.parametrize("depth", [33, 300, 1000])
async def test_deep_nesting_is_invalid_request_not_internal(
    bus: FakeBus, metrics: FakeMetrics, s3: S3Server, depth: int
) -> None:
    """#4: a body nested beyond 32 levels (orjson's dump limit is 254) is a typed reply."""
    metrics.answers.append(({"route": "entries"}, entries_answer()))
    deep = "[" * (depth - 1) + "]" * (depth - 1)
    async with running_exporter(bus, metrics):
        await bus.send(raw_frame("deep", '{"x":' + deep + "}"))
        payload, _ = await reply_text(bus, "deep")
        await seed_still_served(bus, metrics)
    assert payload["error"]["code"] == "invalid_request"
    assert payload["error"]["details"] == [
        {"path": "body", "message": "must be nested at most 32 levels"}
    ]


async def test_nesting_of_32_levels_is_read(bus: FakeBus, metrics: FakeMetrics) -> None:
    """The limit is not off by one: a body of exactly 32 levels reaches validation."""
    body = seed()
    body["metricRequests"][0]["extra"] = orjson.loads("[" * 29 + "]" * 29)  # levels 4..32
    async with running_exporter(bus, metrics, max_rows=1):
        await bus.send(request("deep32", body))
        payload, _ = await reply_text(bus, "deep32")
    assert payload["error"]["code"] == "too_large"  # planned, then refused by its row estimate


async def test_invalid_request_is_answered_while_every_slot_is_busy(
    bus: FakeBus, metrics: FakeMetrics, s3: S3Server
) -> None:
    """#3: validation happens on receipt, not when a slot frees."""
    metrics.answers.append(({"route": "entries"}, entries_answer()))
    metrics.hold.clear()
    async with running_exporter(bus, metrics, max_concurrent_exports=1):
        await bus.send(request("busy"))
        assert await metrics.received.get() in ("entries", "detail/list")
        await bus.send(request("queued"))  # valid: waits for the slot
        await bus.send(request("bad", {"csvFormat": {}}))
        first, payload = await bus.reply()
        assert (first, payload["error"]["code"]) == ("bad", "invalid_request")
        metrics.hold.set()
        assert {(await bus.reply())[0], (await bus.reply())[0]} == {"busy", "queued"}


async def test_bad_metrics_frame_fails_one_request_not_the_link(
    bus: FakeBus, metrics: FakeMetrics, s3: S3Server
) -> None:
    """#5: `rid|0|<5000 digits>|{` fails its export with csvgen's words; the next one works."""
    body = seed()
    body["metricRequests"][0]["aggregationPeriod"] = "hour"
    metrics.answers.append(
        ({"aggregationPeriod": "hour"}, Scripted("{rid}|0|" + "9" * 5000 + "|{"))
    )
    metrics.answers.append(({"route": "entries"}, entries_answer()))
    async with running_exporter(bus, metrics):
        await bus.send(request("broken", body))
        payload, _ = await reply_text(bus, "broken")
        await seed_still_served(bus, metrics)
    assert payload["error"]["code"] == "metric_failed"
    assert payload["error"]["message"].startswith(
        "metric request 'm' failed: broken answer: part numbers must be non-negative integers"
    )
    assert len(metrics.connections) == 1  # the link was kept


async def test_frame_naming_no_request_is_dropped(
    bus: FakeBus, metrics: FakeMetrics, s3: S3Server
) -> None:
    """#5: frames with no usable id or for nobody are dropped; the export they precede works."""
    frames = ("no bars at all", "|0|0|{}", "stranger|x|0|{}")
    answer = "{rid}|0|0|" + orjson.dumps(entries_answer()).decode()
    metrics.answers.append(({"route": "entries"}, Scripted(*frames, answer)))
    async with running_exporter(bus, metrics):
        await seed_still_served(bus, metrics, "ok")


async def test_ids_of_any_text_are_stored_encoded(
    bus: FakeBus, metrics: FakeMetrics, s3: S3Server
) -> None:
    """#7: an id with non-ASCII and CR/LF uploads; S3 metadata holds it percent-encoded."""
    metrics.answers.append(({"route": "entries"}, entries_answer()))
    rid = "café-1\r\n2026-01-01 00:00:00,000 INFO forged"
    async with running_exporter(bus, metrics):
        await bus.send(request(rid))
        got, payload = await bus.reply()
    assert got == rid
    [item] = payload["body"]
    head = s3.client().head_object(Bucket="aura-exports", Key=item["key"])
    assert head["Metadata"]["request-id"] == quote(rid, safe="")
    assert download(item["signedUrl"]).startswith(b"Date,Entries\r\n")


async def test_heading_with_a_line_break_is_invalid(bus: FakeBus, metrics: FakeMetrics) -> None:
    """#8: control characters in a heading would break CSV readers: invalid_request."""
    body = seed()
    body["csvFormat"]["columns"][1]["heading"] = "Entries\nper day"
    async with running_exporter(bus, metrics):
        await bus.send(request("heading", body))
        payload, _ = await reply_text(bus, "heading")
    assert payload["error"]["details"] == [
        {
            "path": "csvFormat.columns[1].heading",
            "message": "must not contain control characters (U+0000-U+001F, U+007F), "
            "got 'Entries\\nper day'",
        }
    ]


async def test_mixed_value_column_keeps_numbers_as_numbers(
    bus: FakeBus, metrics: FakeMetrics, s3: S3Server
) -> None:
    """#9: -5 and -12.5 stay numbers beside the text `-x`, which is escaped; one warning."""
    answer = entries_answer(days=3)
    for record, value in zip(answer["segments"], [-5, "-x", -12.5], strict=True):
        record["entries"] = value
    metrics.answers.append(({"route": "entries"}, answer))
    async with running_exporter(bus, metrics):
        await bus.send(request("mixed"))
        _, payload = await bus.reply()
    [item] = payload["body"]
    assert download(item["signedUrl"]) == (
        b"Date,Entries\r\n2024-01-01,-5\r\n2024-01-02,'-x\r\n2024-01-03,-12.5\r\n"
    )
    assert item["warnings"] == [
        "column 'Entries': the Metrics API answered numbers and text in one field; "
        "numbers are written as numbers, text cells as text"
    ]


async def test_receipts_of_one_id_are_bounded(
    bus: FakeBus, metrics: FakeMetrics, s3: S3Server, caplog: pytest.LogCaptureFixture
) -> None:
    """#10: 200 receipts of one in-flight id: 16 replies and one warning."""
    metrics.answers.append(({"route": "entries"}, entries_answer()))
    metrics.hold.clear()
    caplog.set_level(logging.INFO, logger="csvgen")
    async with running_exporter(bus, metrics):
        for _ in range(200):
            await bus.send(request("same"))
        await bus.send(request("other", {"csvFormat": {}}))  # sent after all 200
        assert (await bus.reply())[0] == "other"  # so all 200 were received by now
        metrics.hold.set()
        replies = [await bus.reply() for _ in range(16)]
        await seed_still_served(bus, metrics)  # and no 17th reply came before it
    assert {rid for rid, _ in replies} == {"same"}
    assert caplog.text.count("more than 16 receipts in flight") == 1
    assert caplog.text.count("duplicate of a request in flight") == 15


async def test_answer_bytes_are_counted_as_they_arrive(
    bus: FakeBus, metrics: FakeMetrics, s3: S3Server
) -> None:
    """An export whose answers pass CSVGEN_MAX_ANSWER_BYTES is too_large, part by part."""
    answer = entries_answer(days=30)
    metrics.answers.append(({"route": "entries"}, answer))
    async with running_exporter(bus, metrics, max_answer_bytes=500):
        await bus.send(request("greedy"))
        payload, _ = await reply_text(bus, "greedy")
    assert payload["error"]["code"] == "too_large"
    assert payload["error"]["message"].startswith(
        "the metric answers of this export passed 500 bytes"
    )


async def test_export_past_its_deadline_is_export_timeout(
    bus: FakeBus, metrics: FakeMetrics, s3: S3Server
) -> None:
    """An export still waiting for answers at its deadline gets export_timeout 504."""
    metrics.answers.append(({"route": "entries"}, entries_answer()))
    metrics.hold.clear()
    async with running_exporter(bus, metrics, export_timeout_s=0.2):
        await bus.send(request("late"))
        payload, _ = await reply_text(bus, "late")
        metrics.hold.set()
        await bus.send(request("next", {"csvFormat": {}}))  # the worker still answers
        assert (await bus.reply())[0] == "next"
    assert payload["error"] == {
        "code": "export_timeout",
        "status": 504,
        "message": "the export did not finish within its deadline of 0.2 s",
        "details": [],
    }


async def test_storage_failure_names_no_endpoint(
    bus: FakeBus, metrics: FakeMetrics, own_s3: S3Server
) -> None:
    """#12: storage_failed names the bucket and the kind of failure, never the endpoint URL."""
    metrics.answers.append(({"route": "entries"}, entries_answer()))
    own_s3.stop()
    async with running_exporter(bus, metrics):
        await bus.send(request("s3-down"))
        payload, _ = await reply_text(bus, "s3-down")
    message = payload["error"]["message"]
    assert message == "upload to bucket 'aura-exports' failed: EndpointConnectionError"
    assert "127.0.0.1" not in orjson.dumps(payload).decode()


async def test_a_wide_export_of_500_columns(
    bus: FakeBus, metrics: FakeMetrics, s3: S3Server
) -> None:
    """#14: 500 columns bound to one metric: every column carries the values."""
    body = seed()
    value = body["csvFormat"]["columns"][1]
    body["csvFormat"]["columns"] = [body["csvFormat"]["columns"][0]] + [
        {**copy.deepcopy(value), "heading": f"E{n}"} for n in range(499)
    ]
    metrics.answers.append(({"route": "entries"}, entries_answer(days=3)))
    async with running_exporter(bus, metrics):
        await bus.send(request("wide", body))
        _, payload = await bus.reply()
    lines = download(payload["body"][0]["signedUrl"]).decode().split("\r\n")
    assert lines[1] == "2024-01-01" + ",100" * 499
    assert lines[3] == "2024-01-03" + ",102" * 499


class Seen(logging.Handler):
    """Sets ``event`` when a record's message contains ``fragment``."""

    def __init__(self, fragment: str) -> None:
        super().__init__()
        self.fragment = fragment
        self.event = threading.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if self.fragment in record.getMessage():
            self.event.set()


async def test_a_reply_never_disagrees_with_the_bucket_when_the_drain_cuts_an_upload(
    bus: FakeBus, metrics: FakeMetrics, s3: S3Server, caplog: pytest.LogCaptureFixture
) -> None:
    """#13: SIGTERM's drain while an export uploads: either the upload made it within the
    grace and the reply is that success, or it was cut and the bucket holds nothing."""
    import boto3

    reached, release = threading.Event(), threading.Event()

    def hold(**_: Any) -> None:
        reached.set()
        release.wait(10)

    boto3.setup_default_session()  # the worker's S3 client is made from it
    assert boto3.DEFAULT_SESSION is not None
    boto3.DEFAULT_SESSION.events.register("before-send.s3.PutObject", hold)
    caplog.set_level(logging.INFO, logger="csvgen")
    draining = Seen("shutting down: 1 exports running")
    logging.getLogger("csvgen.worker").addHandler(draining)
    metrics.answers.append(({"route": "entries"}, entries_answer()))
    try:
        async with running_exporter(bus, metrics, shutdown_grace_s=0.001) as stop:
            await bus.send(request("uploading"))
            assert await asyncio.to_thread(reached.wait, 10)  # the PutObject is on its way
            stop.set()  # what SIGTERM does
            assert await asyncio.to_thread(draining.event.wait, 10)
            release.set()
            rid, payload = await bus.reply()
    finally:
        release.set()
        logging.getLogger("csvgen.worker").removeHandler(draining)
        boto3.DEFAULT_SESSION.events.unregister("before-send.s3.PutObject", hold)
    objects = s3.client().list_objects_v2(Bucket="aura-exports").get("Contents", [])
    assert rid == "uploading"
    if "error" in payload:
        assert payload["error"]["code"] == "shutting_down"
        assert objects == []
    else:
        key = payload["body"][0]["key"]
        assert [o["Key"] for o in objects] == [key, key + ".manifest.json"]


async def test_entity_lookups_count_against_the_answer_budget(
    bus: FakeBus, metrics: FakeMetrics, s3: S3Server
) -> None:
    """The detail/list answer is counted with the metric answers: a huge one is too_large."""
    body = seed()
    body["csvFormat"]["columns"].insert(1, {"heading": "Location name"})
    metrics.answers.append(({"route": "entries"}, entries_answer()))
    metrics.references = [{"id": L1, "name": "n" * 20_000, "organisation_id": "org1"}]
    async with running_exporter(bus, metrics, max_answer_bytes=10_000):
        await bus.send(request("names", body))
        payload, _ = await reply_text(bus, "names")
    assert payload["error"]["code"] == "too_large"
