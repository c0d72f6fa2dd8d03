"""S3 storage against moto's server: no overwrite ever, multipart for big files, signed URLs."""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
import threading
from typing import Any
from urllib.parse import parse_qs, urlsplit

import boto3
import pytest

from csvgen.stores import content_disposition
from csvgen.stores.s3 import S3Store
from tests.conftest import S3Server
from tests.fakes import Fault, FaultProxy
from tests.test_export import download

META = {"content_type": "text/csv", "disposition": 'attachment; filename="x.csv"', "metadata": {}}


async def test_taken_keys_get_suffixes_and_nothing_is_overwritten(s3: S3Server) -> None:
    """Each upload to one stem lands on a new key; every object keeps its own bytes."""
    storage = S3Store("aura-exports")
    keys = []
    for n in range(3):
        body = f"file {n}".encode()
        stored = await storage.put_new("exports/o/t", ".csv", io.BytesIO(body), len(body), **META)
        keys.append(stored.key)
    assert keys == ["exports/o/t.csv", "exports/o/t-2.csv", "exports/o/t-3.csv"]
    assert [s3.get(k) for k in keys] == [b"file 0", b"file 1", b"file 2"]


async def test_a_key_taken_by_someone_else_is_skipped(s3: S3Server) -> None:
    """A key another replica wrote is never overwritten: the conditional put moves on."""
    s3.client().put_object(Bucket="aura-exports", Key="exports/o/t.csv", Body=b"theirs")
    stored = await S3Store("aura-exports").put_new(
        "exports/o/t", ".csv", io.BytesIO(b"ours"), 4, **META
    )
    assert stored.key == "exports/o/t-2.csv"
    assert (s3.get("exports/o/t.csv"), s3.get(stored.key)) == (b"theirs", b"ours")


async def test_big_files_go_up_in_parts(s3: S3Server) -> None:
    """Above the threshold the file is sent as a multipart upload and arrives whole."""
    data = os.urandom(12 * 1024 * 1024)
    storage = S3Store(
        "aura-exports", multipart_threshold=5 * 1024 * 1024, part_size=5 * 1024 * 1024
    )
    stored = await storage.put_new("exports/o/big", ".csv", io.BytesIO(data), len(data), **META)
    head = s3.client().head_object(Bucket="aura-exports", Key=stored.key)
    assert head["ETag"].strip('"').endswith("-3")  # three parts: 5 + 5 + 2 MiB
    assert hashlib.sha256(s3.get(stored.key)).digest() == hashlib.sha256(data).digest()
    again = await storage.put_new("exports/o/big", ".csv", io.BytesIO(data), len(data), **META)
    assert again.key == "exports/o/big-2.csv"


async def test_presigned_url_downloads_and_says_its_lifetime(s3: S3Server) -> None:
    storage = S3Store("aura-exports")
    stored = await storage.put_new("exports/o/u", ".csv", io.BytesIO(b"a,b\r\n"), 5, **META)
    url, expires_at = storage.presign(stored.key, 120)
    query = parse_qs(urlsplit(url).query)
    assert query["X-Amz-Expires"] == ["120"] and "X-Amz-Signature" in query
    assert urlsplit(url).path == "/aura-exports/exports/o/u.csv"
    assert download(url) == b"a,b\r\n"
    assert expires_at.endswith("Z") and len(expires_at) == 20


def test_content_disposition_is_safe() -> None:
    assert (
        content_disposition('Footfall "Q1"/2024\r\n', ".csv")
        == 'attachment; filename="Footfall Q12024.csv"'
    )
    assert content_disposition("", ".csv.gz") == 'attachment; filename="export.csv.gz"'


class Gate:
    """Holds the upload thread at one S3 operation (a botocore event hook) until released."""

    def __init__(self, storage: S3Store, operation: str) -> None:
        self.reached = threading.Event()
        self.release = threading.Event()
        storage.client.meta.events.register(f"before-send.s3.{operation}", self._hold)

    def _hold(self, **_: Any) -> None:
        self.reached.set()
        self.release.wait(10)


@pytest.mark.parametrize("operation", ["UploadPart", "CompleteMultipartUpload", "PutObject"])
async def test_a_cancelled_upload_leaves_nothing_in_the_bucket(
    s3: S3Server, operation: str
) -> None:
    """Issue 8 #13: cancelled at any step (drain, deadline), an upload leaves no object behind.

    Held at the first part, the upload is aborted before the next one; held at the
    completion (or a single put), it completes and is then deleted.
    """
    threshold = 1 if operation != "PutObject" else 64 * 1024 * 1024
    storage = S3Store("aura-exports", multipart_threshold=threshold, part_size=5 * 1024 * 1024)
    gate = Gate(storage, operation)
    data = os.urandom(11 * 1024 * 1024)
    task = asyncio.create_task(
        storage.put_new("exports/o/c", ".csv", io.BytesIO(data), len(data), **META)
    )
    assert await asyncio.to_thread(gate.reached.wait, 10)
    task.cancel()
    gate.release.set()
    with pytest.raises(asyncio.CancelledError):
        await task
    client = s3.client()
    assert client.list_objects_v2(Bucket="aura-exports").get("Contents", []) == []
    assert client.list_multipart_uploads(Bucket="aura-exports").get("Uploads", []) == []


async def test_conditional_small_objects(s3: S3Server) -> None:
    """What replica receipts build on: create once, replace only the version read, read, delete."""
    store = S3Store("aura-exports")
    first = await store.create("exports/.receipts/a.json", b"one", "application/json")
    assert first is not None
    assert await store.create("exports/.receipts/a.json", b"two", "application/json") is None
    read = await store.read("exports/.receipts/a.json")
    assert read is not None and (read.data, read.etag) == (b"one", first)
    second = await store.replace("exports/.receipts/a.json", b"three", "application/json", first)
    assert second is not None and second != first
    stale = await store.replace("exports/.receipts/a.json", b"four", "application/json", first)
    assert stale is None
    assert s3.get("exports/.receipts/a.json") == b"three"
    await store.delete("exports/.receipts/a.json")
    assert await store.read("exports/.receipts/a.json") is None


async def test_moto_honours_conditional_writes_and_the_probe_is_removed(s3: S3Server) -> None:
    assert await S3Store("aura-exports").honours_conditions("exports") is True
    assert s3.client().list_objects_v2(Bucket="aura-exports").get("Contents", []) == []


async def test_a_conditional_conflict_is_retried_on_the_same_key(s3: S3Server) -> None:
    """AWS answers 409 ConditionalRequestConflict to racing conditional writes: the same
    key is tried again, not the next suffix."""
    conflict = Fault("PUT", answer=(409, "ConditionalRequestConflict"), times=2)
    proxy = await FaultProxy(s3.endpoint, conflict).start()
    try:
        store = S3Store("aura-exports", boto3.client("s3", endpoint_url=proxy.endpoint))
        stored = await store.put_new("exports/o/c", ".csv", io.BytesIO(b"a,b\r\n"), 5, **META)
    finally:
        await proxy.stop()
    assert (stored.key, conflict.hits) == ("exports/o/c.csv", 2)
    assert s3.get("exports/o/c.csv") == b"a,b\r\n"
