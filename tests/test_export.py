"""The csv-generator route end to end: a real worker, a fake Aura on loopback, moto's S3 server.

Golden cases live in ``tests/data/exports/<case>/``: ``request.json`` (the inbound
frame as captured), ``case.json`` (the captured metric answers and reference
data) and ``expected.csv`` (the exact bytes the downloaded object must have).
"""

from __future__ import annotations

import gzip
import hashlib
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import orjson
import pytest

from tests.conftest import S3Server, running_exporter
from tests.fakes import FakeBus, FakeMetrics, RawFrames

EXPORTS = Path(__file__).parent / "data" / "exports"


def load_case(metrics: FakeMetrics, name: str) -> str:
    """Load a case's answers into the fake Aura; return the request frame text."""
    case = orjson.loads((EXPORTS / name / "case.json").read_bytes())
    for entry in case["answers"]:
        answer = entry["answer"]
        if "parts" in entry:
            answer = RawFrames(answer, entry["parts"], first=entry.get("first", 0))
        metrics.answers.append((entry["match"], answer))
    metrics.references = case.get("references", [])
    metrics.interleave = case.get("interleave", 0)
    return (EXPORTS / name / "request.json").read_text()


def download(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=10) as response:
        data: bytes = response.read()
        return data


async def export(bus: FakeBus, metrics: FakeMetrics, name: str, **settings: Any) -> dict[str, Any]:
    frame = load_case(metrics, name)
    async with running_exporter(bus, metrics, **settings):
        await bus.send(frame)
        _, payload = await bus.reply()
    return payload  # type: ignore[no-any-return]


async def test_seed_example(bus: FakeBus, metrics: FakeMetrics, s3: S3Server) -> None:
    """The seed page's request: golden CSV through the signed URL, and the SPEC §2 reply."""
    payload = await export(bus, metrics, "seed", url_expires_s=600)
    [item] = payload["body"]
    expected = (EXPORTS / "seed" / "expected.csv").read_bytes()
    assert download(item["signedUrl"]) == expected
    assert item == {
        "bucket": "aura-exports",
        "key": "exports/64a1b2c3d4e5f6a7b8c9d0e2/2024-04-15T10-15-00.csv",
        "signedUrl": item["signedUrl"],
        "expiresAt": item["expiresAt"],
        "rowCount": 30,
        "sizeBytes": len(expected),
        "sha256": hashlib.sha256(expected).hexdigest(),
        "contentType": "text/csv; charset=utf-8; header=present",
        "warnings": [],
        "manifestKey": "exports/64a1b2c3d4e5f6a7b8c9d0e2/2024-04-15T10-15-00.csv.manifest.json",
    }
    query = parse_qs(urlsplit(item["signedUrl"]).query)
    assert query["X-Amz-Expires"] == ["600"]
    assert query["X-Amz-Algorithm"] == ["AWS4-HMAC-SHA256"]
    head = s3.client().head_object(Bucket="aura-exports", Key=item["key"])
    assert head["ContentType"] == "text/csv; charset=utf-8; header=present"
    assert head["ContentDisposition"] == 'attachment; filename="Entries by day.csv"'
    assert head["Metadata"] == {
        "request-id": "req-seed",
        "row-count": "30",
        "sha256": item["sha256"],
    }


# Each golden case, with the rule it pins.
GOLDEN = {
    "multi": "three metric requests (entries, passers-by, sales) for three locations join on "
    "date+entity; a closed day keeps its row with empty cells; sort by date then name",
    "entity-age": "demographic entries by age beside entity-only sales: sales land on the row "
    "whose age is empty, never repeated per age; an explicit route with the metric/ prefix",
    "taxonomy": "a taxonomy filter matches the exact path only (Products:Clothing:Shoes is "
    "not Products:Clothing)",
    "summary": "no time column: the summary facet, and a tie on the sort column broken by "
    "the row key",
    "nulls-zeros": "null is an empty cell, 0 stays 0; floats in plain decimal, never exponents",
    "empty": "an empty result is a header-only file with rowCount 0",
    "excel": "excel: a UTF-8 BOM; quoting only where a field holds a comma or a quote",
    "excel-eu": "excel-eu: BOM, ';' separator, decimal comma in non-integer numbers",
    "gzip": "gzip: the stored object is gzip, the sha256 and size describe the stored bytes",
    "hostile": "formula safety: headings and names starting = + - @ tab get a leading "
    "quote, numbers never",
    "multipart": "answers split in parts (numbered from 0 and from 1) that interleave on the "
    "wire reassemble into the same CSV",
}


@pytest.mark.parametrize("name", sorted(GOLDEN))
async def test_golden(bus: FakeBus, metrics: FakeMetrics, s3: S3Server, name: str) -> None:
    """The object behind the signed URL has exactly the golden bytes (see GOLDEN for the rule)."""
    payload = await export(bus, metrics, name)
    [item] = payload["body"]
    stored = download(item["signedUrl"])
    assert item["sha256"] == hashlib.sha256(stored).hexdigest()
    assert item["sizeBytes"] == len(stored)
    csv = gzip.decompress(stored) if name == "gzip" else stored
    expected = (EXPORTS / name / "expected.csv").read_bytes()
    assert csv == expected
    assert item["rowCount"] == expected.count(b"\r\n") - 1
    if name == "gzip":
        assert item["key"].endswith(".csv.gz")
        assert item["contentType"] == "application/gzip"
        head = s3.client().head_object(Bucket="aura-exports", Key=item["key"])
        assert head["ContentDisposition"] == 'attachment; filename="Gzipped entries.csv.gz"'
