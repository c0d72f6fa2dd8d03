"""Receipts in the bucket, against moto's S3: what a replica finds decides what it does."""

from __future__ import annotations

import orjson
import pytest

from csvgen.csvexport.leases import BucketReceipts, Lease
from csvgen.errors import InvalidRequest
from csvgen.stores.s3 import S3Store
from tests.conftest import S3Server


def receipts(**kw: float) -> BucketReceipts:
    return BucketReceipts(S3Store("aura-exports"), "exports", lease_s=30, dedupe_ttl_s=600, **kw)


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
    assert orjson.loads(s3.get(store.key("r1")))["state"] == "running"


async def test_finished_and_reused_ids(s3: S3Server) -> None:
    store = receipts()
    lease = await store.acquire("r2", b"\x01")
    assert isinstance(lease, Lease)
    async with store.held(lease):
        pass
    await store.finish(lease, {"key": "exports/o/k.csv", "signedUrl": "http://x", "rowCount": 3})
    assert await store.acquire("r2", b"\x01") == {"key": "exports/o/k.csv", "rowCount": 3}
    with pytest.raises(InvalidRequest) as info:
        await store.acquire("r2", b"\x02")
    assert [d.path for d in info.value.details] == ["id"]


async def test_a_renewal_in_flight_is_never_cut_off(s3: S3Server) -> None:
    """The block ends while renewals run every 30 ms: finish still holds the right etag."""
    store = BucketReceipts(S3Store("aura-exports"), "exports", lease_s=0.09, dedupe_ttl_s=600)
    lease = await store.acquire("r3", b"\x01")
    assert isinstance(lease, Lease)
    first = lease.etag
    async with store.held(lease):
        while lease.etag == first:  # wait for one renewal to have landed
            await store.store.read(lease.key)
        assert orjson.loads(s3.get(lease.key))["started"] == lease.started  # kept by renewals
    await store.finish(lease, {"key": "k"})
    assert orjson.loads(s3.get(lease.key))["state"] == "done"
