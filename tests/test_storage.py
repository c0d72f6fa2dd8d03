"""S3 storage against moto's server: no overwrite ever, multipart for big files, signed URLs."""

from __future__ import annotations

import hashlib
import io
import os
from urllib.parse import parse_qs, urlsplit

from csvgen.storage import Storage, content_disposition
from tests.conftest import S3Server
from tests.test_export import download

META = {"content_type": "text/csv", "disposition": 'attachment; filename="x.csv"', "metadata": {}}


async def test_taken_keys_get_suffixes_and_nothing_is_overwritten(s3: S3Server) -> None:
    """Each upload to one stem lands on a new key; every object keeps its own bytes."""
    storage = Storage("aura-exports")
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
    stored = await Storage("aura-exports").put_new(
        "exports/o/t", ".csv", io.BytesIO(b"ours"), 4, **META
    )
    assert stored.key == "exports/o/t-2.csv"
    assert (s3.get("exports/o/t.csv"), s3.get(stored.key)) == (b"theirs", b"ours")


async def test_big_files_go_up_in_parts(s3: S3Server) -> None:
    """Above the threshold the file is sent as a multipart upload and arrives whole."""
    data = os.urandom(12 * 1024 * 1024)
    storage = Storage(
        "aura-exports", multipart_threshold=5 * 1024 * 1024, part_size=5 * 1024 * 1024
    )
    stored = await storage.put_new("exports/o/big", ".csv", io.BytesIO(data), len(data), **META)
    head = s3.client().head_object(Bucket="aura-exports", Key=stored.key)
    assert head["ETag"].strip('"').endswith("-3")  # three parts: 5 + 5 + 2 MiB
    assert hashlib.sha256(s3.get(stored.key)).digest() == hashlib.sha256(data).digest()
    again = await storage.put_new("exports/o/big", ".csv", io.BytesIO(data), len(data), **META)
    assert again.key == "exports/o/big-2.csv"


async def test_presigned_url_downloads_and_says_its_lifetime(s3: S3Server) -> None:
    storage = Storage("aura-exports")
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
