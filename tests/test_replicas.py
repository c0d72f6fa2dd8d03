"""Replicas share their state through the bucket (SPEC §9): real worker processes, one fake
bus each (the bus delivering one id to several replicas), one fake Metrics API, moto's S3."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.conftest import S3Server
from tests.fakes import FakeBus, FakeMetrics, running_bus
from tests.processes import Child, child_env
from tests.test_export_errors import entries_answer, request
from tests.test_plan import seed


def env(bus: FakeBus, metrics: FakeMetrics, s3: S3Server, **extra: str) -> dict[str, Any]:
    return child_env(
        **{
            "CSVGEN_BUS_URL": bus.uri,
            "CSVGEN_METRICS_URL": metrics.uri,
            "AWS_ENDPOINT_URL_S3": s3.endpoint,
            "CSVGEN_RECONNECT_MAX_DELAY_S": "0.05",
            **extra,
        }
    )


@contextlib.asynccontextmanager
async def replica(
    bus: FakeBus, metrics: FakeMetrics, s3: S3Server, **extra: str
) -> AsyncIterator[Child]:
    worker = await Child("run", env=env(bus, metrics, s3, **extra)).start()
    try:
        await worker.wait_for_line("connected to the bus")
        yield worker
    finally:
        await worker.kill()


def objects(s3: S3Server) -> list[str]:
    listed = s3.client().list_objects_v2(Bucket="aura-exports").get("Contents", [])
    return sorted(o["Key"] for o in listed if "/.receipts/" not in o["Key"])


def entries_asked(metrics: FakeMetrics) -> int:
    return [route for _, route, _ in metrics.requests].count("entries")


@pytest.fixture
async def other_bus() -> AsyncIterator[FakeBus]:
    async with running_bus() as fake:
        yield fake


async def test_one_id_at_two_replicas_at_once_makes_one_export(
    bus: FakeBus, other_bus: FakeBus, metrics: FakeMetrics, s3: S3Server
) -> None:
    metrics.answers.append(({"route": "entries"}, entries_answer()))
    metrics.hold.clear()
    async with replica(bus, metrics, s3) as a, replica(other_bus, metrics, s3) as b:
        await bus.send(request("twice"))
        assert await metrics.received.get() in ("entries", "detail/list")
        await other_bus.send(request("twice"))
        await b.wait_for_line("request twice: waiting for")  # b found a's live lease
        metrics.hold.set()
        (rid_a, one), (rid_b, two) = await bus.reply(), await other_bus.reply()
    assert rid_a == rid_b == "twice"
    assert one["body"][0]["key"] == two["body"][0]["key"]
    assert entries_asked(metrics) == 1
    key = one["body"][0]["key"]
    assert objects(s3) == [key, key + ".manifest.json"]
    assert not any("waiting for" in line for line in a.lines)  # a ran it


async def test_a_replica_killed_mid_export_is_taken_over_after_its_lease(
    bus: FakeBus, other_bus: FakeBus, metrics: FakeMetrics, s3: S3Server
) -> None:
    metrics.answers.append(({"route": "entries"}, entries_answer()))
    metrics.hold.clear()
    async with replica(bus, metrics, s3, CSVGEN_LEASE_S="1") as a:
        await bus.send(request("orphan"))
        assert await metrics.received.get() in ("entries", "detail/list")
        await a.kill()  # SIGKILL: no drain, no reply, the lease stays until it expires
    metrics.hold.set()
    async with replica(other_bus, metrics, s3, CSVGEN_LEASE_S="1") as b:
        await other_bus.send(request("orphan"))
        rid, payload = await other_bus.reply()
        await b.wait_for_line("request orphan: took over the receipt of")
    assert rid == "orphan" and payload["body"][0]["rowCount"] == 3
    key = payload["body"][0]["key"]
    assert objects(s3) == [key, key + ".manifest.json"]


async def test_after_a_restart_the_same_id_is_answered_from_the_bucket(
    bus: FakeBus, metrics: FakeMetrics, s3: S3Server
) -> None:
    metrics.answers.append(({"route": "entries"}, entries_answer()))
    async with replica(bus, metrics, s3) as first:
        await bus.send(request("kept"))
        _, before = await bus.reply()
        assert await first.stop() == 0
    asked = len(metrics.requests)
    async with replica(bus, metrics, s3):
        await bus.send(request("kept"))
        _, again = await bus.reply()
        other = seed()
        other["csvFormat"]["sortBy"] = []
        await bus.send(request("kept", other))
        _, reused = await bus.reply()
    assert len(metrics.requests) == asked  # nothing recomputed
    assert again["body"][0]["key"] == before["body"][0]["key"]
    assert again["body"][0]["manifestKey"] == before["body"][0]["manifestKey"]
    assert [d["path"] for d in reused["error"]["details"]] == ["id"]


async def test_a_failed_export_can_be_retried_with_the_same_id(
    bus: FakeBus, metrics: FakeMetrics, s3: S3Server
) -> None:
    metrics.answers.append(({"route": "entries"}, {"error": {"code": "busy", "message": "later"}}))
    async with replica(bus, metrics, s3):
        await bus.send(request("retry"))
        _, failed = await bus.reply()
        assert failed["error"]["code"] == "metric_failed"
        metrics.answers.insert(0, ({"route": "entries"}, entries_answer()))
        await bus.send(request("retry"))
        _, ok = await bus.reply()
    assert ok["body"][0]["rowCount"] == 3
