"""Manifests beside the golden exports, checked field by field against the CSV bytes."""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import re
from typing import Any

import orjson
import pytest

from csvgen.frames import fingerprint
from tests.conftest import S3Server
from tests.fakes import FakeBus, FakeMetrics
from tests.test_export import EXPORTS, GOLDEN, download, export

TYPES = {
    "date": re.compile(r"\d{4}-\d{2}-\d{2}"),
    "datetime": re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}"),
    "integer": re.compile(r"-?\d+"),
    "decimal": re.compile(r"-?\d+([.,]\d+)?"),
    "text": re.compile(r".*", re.DOTALL),
}


def cells(data: bytes, dialect: str) -> list[list[str]]:
    text = data.decode("utf-8-sig")
    return list(
        csv.reader(io.StringIO(text, newline=""), delimiter=";" if dialect == "excel-eu" else ",")
    )


@pytest.mark.parametrize("name", [*GOLDEN, "seed"])
async def test_manifest_describes_the_file(
    bus: FakeBus, metrics: FakeMetrics, s3: S3Server, name: str
) -> None:
    payload = await export(bus, metrics, name)
    [item] = payload["body"]
    stored = download(item["signedUrl"])
    doc: dict[str, Any] = orjson.loads(s3.get(item["manifestKey"]))
    assert item["manifestKey"] == item["key"] + ".manifest.json"
    frame = orjson.loads((EXPORTS / name / "request.json").read_bytes())["data"]
    assert doc["format"] == "csvgen-manifest/1"
    assert doc["request"] == {
        "id": frame["id"],
        "fingerprint": fingerprint(frame["route"], frame["body"]).hex(),
    }
    exported = doc["export"]
    assert {
        k: exported[k] for k in ("bucket", "key", "sha256", "sizeBytes", "rowCount", "contentType")
    } == {k: item[k] for k in ("bucket", "key", "sha256", "sizeBytes", "rowCount", "contentType")}
    assert exported["sha256"] == hashlib.sha256(stored).hexdigest()
    assert exported["compression"] == ("gzip" if name == "gzip" else "none")
    assert doc["warnings"] == item["warnings"]
    rows = cells(gzip.decompress(stored) if name == "gzip" else stored, exported["dialect"])
    header, data = rows[0], rows[1:]
    assert len(data) == exported["rowCount"]
    assert [c["heading"] for c in doc["columns"]] == [h.removeprefix("'") for h in header]
    for n, column in enumerate(doc["columns"]):
        assert column["index"] == n
        values = [row[n] for row in data]
        assert column["emptyCells"] == values.count(""), (name, column)
        pattern = TYPES[column["type"]]
        assert all(pattern.fullmatch(v) for v in values if v), (name, column)
        assert column["kind"] == ("dimension" if "dimension" in column else "value")
    escaped = sum(
        cell.startswith("'") and cell[1:2] in ("=", "+", "-", "@", "\t", "\r")
        for row in rows
        for cell in row
    )
    assert doc["formulaEscapedCells"] == escaped
    # Every value column names a metric request that was run, and each was run once.
    run = [m["metricId"] for m in doc["metricRequests"]]
    assert len(run) == len(set(run))
    assert {c["metricId"] for c in doc["columns"] if c["kind"] == "value"} == set(run)
    assert all(len(m["upstreamFingerprint"]) == 64 for m in doc["metricRequests"])
