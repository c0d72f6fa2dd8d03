"""Exactly once under faults (SPEC §9, protocol.md "Leases"): a replica that loses its lease
stops, nothing read back from the bucket is trusted blindly, a failed final write leaves
nothing. Real workers (in this process, or as processes) against moto's S3, with a proxy
in front of it that delays or fails chosen requests."""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import orjson
import pytest

from csvgen.csvexport.leases import BucketReceipts
from csvgen.frames import fingerprint
from csvgen.stores.s3 import S3Store
from tests.conftest import AWS_ENV, S3Process, S3Server, running_exporter
from tests.fakes import FakeBus, FakeMetrics, Fault, FaultProxy, running_bus
from tests.test_export_errors import entries_answer, request
from tests.test_plan import seed
from tests.test_replicas import entries_asked, objects, other_bus, replica

ROUTE = "external-service/csv-generator"
__all__ = ["other_bus"]


@pytest.fixture
async def proxy(s3: S3Server, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[FaultProxy]:
    """moto's S3 behind a fault proxy; in-process workers use the proxy."""
    running = await FaultProxy(s3.endpoint).start()
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", running.endpoint)
    try:
        yield running
    finally:
        await running.stop()


def put_receipt(s3: S3Server, rid: str, doc: dict[str, Any]) -> None:
    """A finished receipt for ``rid`` (the seed body), as another replica, or a forger, wrote it."""
    fp = fingerprint(ROUTE, seed()).hex()
    done = {"state": "done", "fingerprint": fp, "replica": "elsewhere", "updatedAt": time.time()}
    key = BucketReceipts(S3Store("aura-exports"), "exports", lease_s=30, dedupe_ttl_s=600).key(rid)
    s3.client().put_object(Bucket="aura-exports", Key=key, Body=orjson.dumps({**done, **doc}))


def receipt_states(s3: S3Server) -> list[str]:
    listed = s3.client().list_objects_v2(Bucket="aura-exports", Prefix="exports/.receipts/")
    return [orjson.loads(s3.get(o["Key"]))["state"] for o in listed.get("Contents", [])]


async def test_a_forged_or_partial_receipt_is_never_signed_as_it_says(
    bus: FakeBus, metrics: FakeMetrics, s3: S3Server
) -> None:
    """A receipt naming an object that is no export is junk: the export runs anew. A
    receipt naming a real export without its fields is answered from the manifest."""
    metrics.answers.append(({"route": "entries"}, entries_answer()))
    s3.client().put_object(Bucket="aura-exports", Key="hr/payroll-2026.xlsx", Body=b"secret")
    put_receipt(s3, "forged", {"item": {"key": "hr/payroll-2026.xlsx", "rowCount": 9}})
    async with running_exporter(bus, metrics, unsafe_store=False):
        await bus.send(request("forged"))
        _, forged = await bus.reply()
        [item] = forged["body"]
        for n in range(6):  # each once made a KeyError outside the outcome handling
            put_receipt(s3, f"partial-{n}", {"item": {"key": item["key"]}})
            await bus.send(request(f"partial-{n}"))
            _, partial = await bus.reply()
            assert {k: partial["body"][0][k] for k in ("key", "rowCount", "sha256")} == {
                k: item[k] for k in ("key", "rowCount", "sha256")
            }
    assert item["key"].startswith("exports/") and "payroll" not in forged["body"][0]["signedUrl"]
    assert entries_asked(metrics) == 1  # the forged receipt's export ran; the partial ones did not


async def test_a_final_receipt_write_that_keeps_failing_leaves_nothing(
    bus: FakeBus, metrics: FakeMetrics, s3: S3Server, proxy: FaultProxy
) -> None:
    """The "done" write meets conflicts past every retry: storage_failed, and neither the
    file nor its manifest stays behind to be made again by a retry."""
    metrics.answers.append(({"route": "entries"}, entries_answer()))
    conflict = Fault(  # the claim of a key stem passes; every final write meets a conflict
        "PUT", "/.receipts/", "if-match", answer=(409, "ConditionalRequestConflict"), after=1
    )
    async with running_exporter(bus, metrics, unsafe_store=False):
        proxy.faults.append(conflict)
        await bus.send(request("unlucky"))
        _, failed = await bus.reply()
        proxy.faults.remove(conflict)
        await bus.send(request("unlucky"))
        _, retried = await bus.reply()
    assert failed["error"]["code"] == "storage_failed" and conflict.hits > 5
    key = retried["body"][0]["key"]
    assert objects(s3) == [key, key + ".manifest.json"]
    assert receipt_states(s3) == ["done"]


async def test_a_final_write_past_a_slowdown_and_a_conflict_succeeds(
    bus: FakeBus, metrics: FakeMetrics, s3: S3Server, proxy: FaultProxy
) -> None:
    metrics.answers.append(({"route": "entries"}, entries_answer()))
    async with running_exporter(bus, metrics, unsafe_store=False):
        racing = Fault(
            "PUT",
            "/.receipts/",
            "if-none-match",
            answer=(409, "ConditionalRequestConflict"),
            times=1,
        )
        slow = Fault("PUT", "/.receipts/", "if-match", answer=(503, "SlowDown"), times=4)
        proxy.faults += [racing, slow]
        await bus.send(request("patient"))
        _, payload = await bus.reply()
    assert payload["body"][0]["rowCount"] == 3 and (racing.hits, slow.hits) == (1, 4)
    assert receipt_states(s3) == ["done"]


@contextlib.asynccontextmanager
async def faulty(s3: S3Server, *faults: Fault) -> AsyncIterator[FaultProxy]:
    proxy = await FaultProxy(s3.endpoint, *faults).start()
    try:
        yield proxy
    finally:
        await proxy.stop()


async def test_a_replica_whose_renewal_is_too_slow_stops_and_one_export_results(
    bus: FakeBus, other_bus: FakeBus, metrics: FakeMetrics, s3: S3Server
) -> None:
    """A's renewals take 3 s against a lease of 1.5 s: A stops and answers a retryable
    error, B takes the receipt over and makes the one export."""
    metrics.answers.append(({"route": "entries"}, entries_answer()))
    metrics.hold.clear()
    slow = Fault("PUT", "/.receipts/", "if-match", delay=3)
    async with faulty(s3, slow) as proxy:
        a_env = {"AWS_ENDPOINT_URL_S3": proxy.endpoint, "CSVGEN_LEASE_S": "1.5"}
        async with replica(bus, metrics, s3, **a_env) as a:
            await bus.send(request("slow"))
            await a.wait_for_line("lost the lease")
            _, lost = await bus.reply()
            async with replica(other_bus, metrics, s3, CSVGEN_LEASE_S="1.5") as b:
                metrics.hold.set()
                await other_bus.send(request("slow"))
                _, done = await other_bus.reply()
                await b.wait_for_line("request slow: took over the receipt of")
    assert lost["error"]["code"] == "storage_failed"
    assert "lost its lease" in lost["error"]["message"]
    key = done["body"][0]["key"]
    assert objects(s3) == [key, key + ".manifest.json"]
    assert receipt_states(s3) == ["done"]


RETRYABLE = ("storage_failed", "shutting_down", "overloaded")


class Requester:
    """The bus's clients: each id sent to two replicas, a retryable error or a replica that
    died retried on a live one, every success reply kept."""

    def __init__(self, buses: list[FakeBus], ids: list[str]) -> None:
        self.buses = buses
        self.live = [True] * len(buses)
        self.waiting: dict[tuple[int, str], list[asyncio.Future[Any]]] = {}
        self.keys: dict[str, set[str]] = {rid: set() for rid in ids}
        self.retries = 0
        self.dice = random.Random(3)

    async def route(self, n: int) -> None:
        """Hand each reply of bus ``n`` to the requester waiting for it."""
        while True:
            rid, payload = await self.buses[n].replies.get()
            waiting = self.waiting.get((n, rid))
            if waiting:
                waiting.pop(0).set_result(payload)

    def died(self, n: int) -> None:
        self.live[n] = False
        for (m, _), waiting in self.waiting.items():
            while m == n and waiting:
                waiting.pop(0).set_result(None)  # no reply will come: ask elsewhere

    async def ask(self, n: int, rid: str) -> None:
        for _ in range(20):
            future = asyncio.get_running_loop().create_future()
            self.waiting.setdefault((n, rid), []).append(future)
            await self.buses[n].send(request(rid))
            payload = await future
            if payload is not None and "body" in payload:
                self.keys[rid].add(payload["body"][0]["key"])
                return
            assert payload is None or payload["error"]["code"] in RETRYABLE, payload
            self.retries += 1
            await asyncio.sleep(0.1)  # a client's backoff before it asks again
            n = self.dice.choice([m for m, up in enumerate(self.live) if up])
        raise AssertionError(f"{rid}: no answer in 20 tries; the last: {payload}")


@pytest.fixture
def s3_process(monkeypatch: pytest.MonkeyPatch) -> Iterator[S3Server]:
    for name, value in AWS_ENV.items():
        monkeypatch.setenv(name, value)
    server = S3Process()
    try:
        yield server
    finally:
        server.stop()


@pytest.mark.timeout(150)  # about 30 s alone, about 70 s beside the rest of make test
async def test_chaos_three_replicas_one_bucket_exactly_one_export_per_id(
    metrics: FakeMetrics, s3_process: S3Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    """200 ids, each delivered to two of three replicas; receipt writes of one replica
    delayed past the lease at random; one replica killed mid-run and started again. Every id ends
    with exactly one export, every requester is answered with it (after retrying a
    retryable error), and no receipt is left running.

    The replicas run without coverage measurement (it doubles their time, and this run
    is about timing: the code it runs is measured by the tests above)."""
    monkeypatch.delenv("COVERAGE_PROCESS_CONFIG", raising=False)
    s3 = s3_process
    metrics.answers.append(({"route": "entries"}, entries_answer()))
    metrics.latency = 0.2
    ids = [f"chaos-{n}" for n in range(200)]
    lease = {"CSVGEN_LEASE_S": "3", "CSVGEN_MAX_CONCURRENT_EXPORTS": "16"}
    async with contextlib.AsyncExitStack() as stack:
        buses = [await stack.enter_async_context(running_bus()) for _ in range(3)]
        # One replica reaches the bucket through a proxy that delays one receipt write in
        # ten past the lease; the others reach it directly (through the proxy, each request
        # is a new connection: moto's one core is this run's bottleneck).
        slow = Fault("PUT", "/.receipts/", "if-match", delay=3.5, chance=0.1)
        proxy = await stack.enter_async_context(faulty(s3, slow))
        endpoints = [s3.endpoint, proxy.endpoint, s3.endpoint]
        envs = [{"AWS_ENDPOINT_URL_S3": e, **lease} for e in endpoints]
        workers = [
            await stack.enter_async_context(replica(b, metrics, s3, **e))
            for b, e in zip(buses, envs, strict=True)
        ]
        requester = Requester(buses, ids)
        routing = [asyncio.create_task(requester.route(n)) for n in range(3)]
        clients = asyncio.Semaphore(30)  # ids in flight at once

        async def both(n: int, rid: str) -> None:
            async with clients:
                await asyncio.gather(requester.ask(n % 3, rid), requester.ask((n + 1) % 3, rid))

        running = asyncio.gather(*(both(n, rid) for n, rid in enumerate(ids)))
        while len(metrics.requests) < 100:  # a third of the way: kill a replica mid-export
            await metrics.received.get()
        await workers[0].kill()
        requester.died(0)
        async with replica(buses[0], metrics, s3, **envs[0]):
            requester.live[0] = True
            await running
        for task in routing:
            task.cancel()
    assert {rid: len(keys) for rid, keys in requester.keys.items()} == dict.fromkeys(ids, 1)
    exports = [k for k in objects(s3) if not k.endswith(".manifest.json")]
    assert sorted(exports) == sorted(k for keys in requester.keys.values() for k in keys)
    assert len(objects(s3)) == 2 * len(ids)
    assert "running" not in receipt_states(s3)
    assert slow.hits > 0 and requester.retries > 0


async def test_waiting_for_another_replicas_export_holds_no_slot(
    bus: FakeBus, other_bus: FakeBus, metrics: FakeMetrics, s3: S3Server
) -> None:
    """B has one slot; it waits for A's slow export of "shared" and meanwhile runs and
    answers "own", instead of queueing it behind the wait."""
    metrics.answers.append(({"route": "entries"}, entries_answer()))
    slow_upload = Fault("PUT", "/exports/64a1b2c3d4e5f6a7b8c9d0e3/", delay=4, times=1)
    async with (
        faulty(s3, slow_upload) as proxy,
        replica(bus, metrics, s3, AWS_ENDPOINT_URL_S3=proxy.endpoint) as a,
        replica(other_bus, metrics, s3, CSVGEN_MAX_CONCURRENT_EXPORTS="1") as b,
    ):
        await bus.send(request("shared"))
        await a.wait_for_line("connected to the bus")
        assert await metrics.received.get() in ("entries", "detail/list")  # A runs it
        await other_bus.send(request("shared"))
        await b.wait_for_line("request shared: waiting for")
        other = seed()
        other["csvFormat"]["sortBy"] = []
        await other_bus.send(request("own", other))
        first, second = await other_bus.reply(), await other_bus.reply()
        _, from_a = await bus.reply()
    assert [first[0], second[0]] == ["own", "shared"] and slow_upload.hits == 1
    assert second[1]["body"][0]["key"] == from_a["body"][0]["key"]
