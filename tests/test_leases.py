"""Receipts in the bucket, against moto's S3: what a replica finds decides what it does,
and a replica that loses its lease stops (SPEC §9, protocol.md "Leases")."""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import AsyncIterator
from typing import Any

import boto3
import orjson
import pytest
from botocore.config import Config

from csvgen.csvexport.leases import MAX_RECEIPT_BYTES, BucketReceipts, Lease
from csvgen.errors import InvalidRequest, LeaseLost, StorageFailed
from csvgen.stores.s3 import S3Store
from tests.conftest import S3Server
from tests.fakes import Fault, FaultProxy


def receipts(store: S3Store | None = None, **kw: Any) -> BucketReceipts:
    kw = {"lease_s": 30, "dedupe_ttl_s": 600, **kw}
    return BucketReceipts(store or S3Store("aura-exports"), "exports", **kw)


def state(s3: S3Server, key: str) -> dict[str, Any]:
    doc: dict[str, Any] = orjson.loads(s3.get(key))
    return doc


@pytest.fixture
async def proxy(s3: S3Server) -> AsyncIterator[FaultProxy]:
    """S3 through a proxy whose faults a test sets; its store makes one attempt per call."""
    running = await FaultProxy(s3.endpoint).start()
    try:
        yield running
    finally:
        await running.stop()


def through(proxy: FaultProxy, **config: Any) -> S3Store:
    settings = Config(retries={"mode": "standard", "total_max_attempts": 1}, **config)
    client = boto3.client("s3", endpoint_url=proxy.endpoint, config=settings)
    return S3Store("aura-exports", client)


async def forever() -> None:
    await asyncio.Event().wait()


@pytest.mark.parametrize("junk", [b"not json", b'{"fingerprint": "ab", "state": 7}', b"[]"])
async def test_an_object_that_is_no_receipt_is_taken_over_not_trusted(
    s3: S3Server, junk: bytes
) -> None:
    """A broken receipt (another writer, a truncated object) neither fails the export
    with `internal` nor blocks its id: it is replaced by this replica's lease."""
    store = receipts()
    s3.client().put_object(Bucket="aura-exports", Key=store.key("r1"), Body=junk)
    got = await store.acquire("r1", b"\x01")
    assert isinstance(got, Lease)
    assert state(s3, store.key("r1"))["state"] == "running"


async def test_a_receipt_over_the_size_cap_is_junk_and_never_read_whole(s3: S3Server) -> None:
    store = receipts()
    fields = {"state": "done", "fingerprint": "01", "updatedAt": time.time(), "item": {}}
    big = orjson.dumps({**fields, "pad": "x" * MAX_RECEIPT_BYTES})
    s3.client().put_object(Bucket="aura-exports", Key=store.key("big"), Body=big)
    assert isinstance(await store.acquire("big", b"\x01"), Lease)


async def test_finished_and_reused_ids(s3: S3Server) -> None:
    store = receipts()
    lease = await store.acquire("r2", b"\x01")
    assert isinstance(lease, Lease)
    await store.finish(lease, {"key": "exports/o/k.csv", "signedUrl": "http://x", "rowCount": 3})
    assert await store.acquire("r2", b"\x01") == {"key": "exports/o/k.csv", "rowCount": 3}
    with pytest.raises(InvalidRequest) as info:
        await store.acquire("r2", b"\x02")
    assert [d.path for d in info.value.details] == ["id"]


async def test_a_finished_receipt_the_check_refuses_is_taken_over(s3: S3Server) -> None:
    store = receipts()
    lease = await store.acquire("forged", b"\x01")
    assert isinstance(lease, Lease)
    await store.finish(lease, {"key": "hr/payroll-2026.xlsx"})
    checked: list[dict[str, Any]] = []

    async def no_export(item: dict[str, Any]) -> None:
        checked.append(item)

    again = await store.acquire("forged", b"\x01", no_export)
    assert isinstance(again, Lease) and checked == [{"key": "hr/payroll-2026.xlsx"}]


async def test_an_old_receipt_with_another_body_is_taken_over_not_refused(s3: S3Server) -> None:
    """Fingerprints are compared within the dedupe window only: a 30-day-old receipt of
    another body does not answer invalid_request for ever."""
    month_ago = time.time() - 30 * 86400
    store = receipts(clock=lambda: month_ago)
    lease = await store.acquire("old", b"\x01")
    assert isinstance(lease, Lease)
    await store.finish(lease, {"key": "exports/o/k.csv"})
    assert isinstance(await receipts().acquire("old", b"\x02"), Lease)


async def test_a_failed_export_leaves_a_terminal_receipt_that_is_taken_over(s3: S3Server) -> None:
    store = receipts()
    lease = await store.acquire("failed", b"\x01")
    assert isinstance(lease, Lease)
    await store.release(lease, {"code": "metric_failed", "message": "no"})
    doc = state(s3, lease.key)
    assert (doc["state"], doc["error"]["code"]) == ("failed", "metric_failed")
    assert isinstance(await store.acquire("failed", b"\x01"), Lease)


async def test_a_renewal_in_flight_is_never_cut_off(s3: S3Server) -> None:
    """The work ends while renewals run every 200 ms: finish still holds the right etag."""
    store = receipts(lease_s=0.6)
    lease = await store.acquire("r3", b"\x01")
    assert isinstance(lease, Lease)
    first = lease.etag

    async def work() -> str:
        while lease.etag == first:  # wait for one renewal to have landed
            await store.store.read(lease.key)
        return "done"

    assert await store.run(lease, work) == "done"
    assert state(s3, lease.key)["startedAt"] == lease.started  # kept by renewals
    await store.finish(lease, {"key": "k"})
    assert state(s3, lease.key)["state"] == "done"


async def test_a_live_lease_is_waited_on_whatever_the_clocks_say(s3: S3Server) -> None:
    """B's clock runs two minutes (a hundred leases) ahead of A's: B still waits while A's receipt keeps changing
    (judged on B's monotonic clock), and answers with A's export."""
    a = receipts(lease_s=1.2, poll_s=0.05, replica="a")
    b = receipts(lease_s=1.2, poll_s=0.05, clock=lambda: time.time() + 120, replica="b")
    lease = await a.acquire("skew", b"\x01")
    assert isinstance(lease, Lease)
    renewals = 0

    async def work() -> None:
        nonlocal renewals
        waiting = asyncio.create_task(b.acquire("skew", b"\x01"))
        seen = lease.etag
        while renewals < 4:  # more than a whole lease
            await asyncio.sleep(0.01)
            renewals += lease.etag != seen
            seen = lease.etag
            assert not waiting.done()
        await a.finish(lease, {"key": "exports/o/a.csv"})
        assert await waiting == {"key": "exports/o/a.csv"}

    await a.run(lease, work)


async def test_a_lease_that_stands_still_is_taken_over_after_one_lease(s3: S3Server) -> None:
    a = receipts(lease_s=0.3, replica="a")
    dead = await a.acquire("dead", b"\x01")  # never renewed: its replica died
    assert isinstance(dead, Lease)
    started = time.monotonic()
    b = await receipts(lease_s=0.3, poll_s=0.02, replica="b").acquire("dead", b"\x01")
    assert isinstance(b, Lease)
    assert time.monotonic() - started >= 0.3


async def test_a_receipt_of_this_process_that_no_export_holds_is_taken_over_at_once(
    s3: S3Server,
) -> None:
    """Its final write failed and left it running: the retry need not wait for a lease."""
    store = receipts()
    assert isinstance(await store.acquire("mine", b"\x01"), Lease)
    started = time.monotonic()
    assert isinstance(await store.acquire("mine", b"\x01"), Lease)
    assert time.monotonic() - started < store.lease_s


async def test_a_replica_whose_receipt_is_taken_over_stops_and_writes_nothing(
    s3: S3Server,
) -> None:
    store = receipts(lease_s=0.3)
    lease = await store.acquire("taken", b"\x01")
    assert isinstance(lease, Lease)
    theirs = b'{"state": "running", "fingerprint": "01", "replica": "b", "updatedAt": 1}'
    s3.client().put_object(Bucket="aura-exports", Key=lease.key, Body=theirs)
    with pytest.raises(LeaseLost):
        await store.run(lease, forever)  # the next renewal is refused: the work stops
    await store.release(lease, {"code": "storage_failed", "message": "lost"})
    with pytest.raises(LeaseLost):
        await store.finish(lease, {"key": "exports/o/a.csv"})
    assert s3.get(lease.key) == theirs


async def test_a_renewal_too_slow_for_the_lease_stops_the_export(proxy: FaultProxy) -> None:
    """A renewal PUT that takes 3 s against a lease of 0.6 s: the export is stopped within
    the lease, not left running while another replica takes over."""
    store = receipts(through(proxy), lease_s=0.6)
    lease = await store.acquire("slow", b"\x01")
    assert isinstance(lease, Lease)
    proxy.faults.append(Fault("PUT", "/.receipts/", "if-match", delay=3))
    cancelled = asyncio.Event()

    async def work() -> None:
        try:
            await forever()
        finally:
            cancelled.set()

    started = time.monotonic()
    with pytest.raises(LeaseLost):
        await store.run(lease, work)
    assert cancelled.is_set() and time.monotonic() - started < 0.6


async def test_a_store_that_blinks_does_not_lose_the_lease(proxy: FaultProxy) -> None:
    store = receipts(through(proxy), lease_s=0.6)
    lease = await store.acquire("blink", b"\x01")
    assert isinstance(lease, Lease)
    blink = Fault("PUT", "/.receipts/", "if-match", answer=(503, "SlowDown"), times=2)
    proxy.faults.append(blink)
    first = lease.etag

    async def work() -> None:
        while lease.etag == first:  # until a renewal lands, past the two errors
            await store.store.read(lease.key)

    await store.run(lease, work)
    assert blink.hits == 2


async def test_the_final_write_is_retried_past_the_stores_errors(proxy: FaultProxy) -> None:
    """SlowDown and 409 ConditionalRequestConflict on the final write: retried, not turned
    into storage_failed; a receipt create that meets a 409 is retried too."""
    store = receipts(through(proxy))
    conflict = Fault(
        "PUT", "/.receipts/", "if-none-match", answer=(409, "ConditionalRequestConflict"), times=1
    )
    proxy.faults.append(conflict)
    lease = await store.acquire("final", b"\x01")
    assert isinstance(lease, Lease) and conflict.hits == 1
    slow = Fault("PUT", "/.receipts/", "if-match", answer=(503, "SlowDown"), times=2)
    racing = Fault(
        "PUT", "/.receipts/", "if-match", answer=(409, "ConditionalRequestConflict"), times=2
    )
    proxy.faults += [slow, racing]
    await store.finish(lease, {"key": "exports/o/k.csv"})
    assert (slow.hits, racing.hits) == (2, 2)
    assert (await store.store.read(lease.key)) is not None
    assert orjson.loads((await store.store.read(lease.key)).data)["state"] == "done"  # type: ignore[union-attr]


async def test_a_final_write_that_landed_though_its_answer_failed_is_kept(
    proxy: FaultProxy, s3: S3Server
) -> None:
    """The write lands but its answer is lost: the retry is refused (412), the receipt read
    back is this write, so the export stands."""
    store = receipts(through(proxy, read_timeout=0.2))
    lease = await store.acquire("landed", b"\x01")
    assert isinstance(lease, Lease)
    lost_answer = Fault("PUT", "/.receipts/", "if-match", late=0.5, times=1)
    proxy.faults.append(lost_answer)
    await store.finish(lease, {"key": "exports/o/k.csv"})
    assert state(s3, lease.key)["state"] == "done" and lost_answer.hits == 1
    assert proxy.count("GET", "/.receipts/") == 1  # the refused retry read it back


async def test_a_final_write_that_keeps_failing_is_storage_failed(proxy: FaultProxy) -> None:
    store = receipts(through(proxy))
    lease = await store.acquire("down", b"\x01")
    assert isinstance(lease, Lease)
    proxy.faults.append(Fault("PUT", "/.receipts/", "if-match", answer=(503, "SlowDown")))
    with pytest.raises(StorageFailed):
        await store.finish(lease, {"key": "exports/o/k.csv"})
    assert hashlib.sha256(b"down").hexdigest() in lease.key
    assert (await store.store.read(lease.key)) is not None
    assert orjson.loads((await store.store.read(lease.key)).data)["state"] == "running"  # type: ignore[union-attr]


async def test_leftovers_a_failed_cleanup_could_not_remove_are_passed_on(
    s3: S3Server, proxy: FaultProxy
) -> None:
    """A is killed after its upload; B takes over but cannot list the bucket, so its
    export fails: its terminal receipt keeps A's stem, and C, taking it over, removes
    what A left."""
    a = receipts(lease_s=0.3, replica="a")
    lease = await a.acquire("left", b"\x01")
    assert isinstance(lease, Lease)
    await a.claim(lease, "exports/o/2026-12-08T00-00-00")
    left = "exports/o/2026-12-08T00-00-00.csv"
    meta = {"request-id": "left"}
    s3.client().put_object(Bucket="aura-exports", Key=left, Body=b"a", Metadata=meta)
    s3.client().put_object(Bucket="aura-exports", Key=left + ".manifest.json", Body=b"{}")
    b = receipts(through(proxy), lease_s=0.3, poll_s=0.02, replica="b")
    proxy.faults.append(Fault("GET", "list-type=2", answer=(503, "SlowDown")))
    taken = await b.acquire("left", b"\x01")  # after A's lease stood still
    assert isinstance(taken, Lease) and taken.stems == ["exports/o/2026-12-08T00-00-00"]
    with pytest.raises(StorageFailed):
        await b.run(taken, forever)
    await b.release(taken, {"code": "storage_failed", "message": "list failed"})
    doc = state(s3, taken.key)
    assert (doc["state"], doc["stems"]) == ("failed", ["exports/o/2026-12-08T00-00-00"])
    c = receipts(replica="c")
    again = await c.acquire("left", b"\x01")
    assert isinstance(again, Lease)

    async def nothing() -> None:
        pass

    await c.run(again, nothing)
    listed = s3.client().list_objects_v2(Bucket="aura-exports", Prefix="exports/o/")
    assert listed.get("KeyCount") == 0
