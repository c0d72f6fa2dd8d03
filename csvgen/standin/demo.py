"""`csvgen demo` (`make run`): the whole job on this machine, with no Aura and no AWS.

Starts `csvgen standin` and `csvgen run` as child processes, submits the seed
page's example request (or ``--request FILE``), prints the reply, downloads the
CSV through the signed URL, prints its first rows, then stops both children.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import time
import urllib.request
from pathlib import Path
from typing import Any

import orjson
from websockets.asyncio.client import connect

from ..frames import ReplyAssembler
from .child import Child

__all__ = ["SEED_REQUEST", "download", "main", "submit"]

#: The example request of the route's documentation page.
SEED_REQUEST: dict[str, Any] = {
    "action": "external-service",
    "data": {
        "id": "req-csv-001",
        "route": "external-service/csv-generator",
        "body": {
            "csvFormat": {
                "columns": [
                    {"heading": "Date"},
                    {"heading": "Entries", "metricId": "entries-by-day", "fetchValue": "entries"},
                ],
                "sortBy": [0],
                "rowFilters": ["entity"],
            },
            "metricRequests": [
                {
                    "metricId": "entries-by-day",
                    "name": "Entries by day",
                    "start": "2024-04-01T00:00:00.000Z",
                    "end": "2024-04-30T23:59:59.000Z",
                    "entities": ["64a1b2c3d4e5f6a7b8c9d0e3"],
                    "entityType": "location",
                    "facets": ["segments"],
                    "aggregationPeriod": "day",
                }
            ],
        },
    },
}


async def submit(url: str, frame: dict[str, Any], timeout_s: float = 120.0) -> Any:
    """Send one request frame to the bus at ``url`` and return its reassembled reply."""
    assembler = ReplyAssembler()
    async with asyncio.timeout(timeout_s), connect(url, compression=None, max_size=None) as ws:
        await ws.send(orjson.dumps(frame).decode())
        async for message in ws:
            done = assembler.feed(message if isinstance(message, str) else message.decode())
            if done is not None:
                return done[1]
    raise ConnectionError("the bus closed before the reply came")


def download(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=30) as response:
        data: bytes = response.read()
        return data


async def demo(frame: dict[str, Any], rows: int) -> int:
    frame = {**frame, "data": {**frame["data"], "id": f"demo-{int(time.time())}"}}
    standin = await Child("standin", stream="stdout").start()
    worker = None
    try:
        ready = await standin.wait_for_line("standin-ready ", within=60)
        for line in standin.lines[:-1]:
            print(line)
        info = json.loads(ready.removeprefix("standin-ready "))
        print(f"stand-in up: submitting to {info['submit']}")
        worker = await Child("run", env={**os.environ, **info["env"]}, stream="inherit").start()
        started = time.monotonic()
        reply = await submit(info["submit"], frame)
        print(f"\nreply after {time.monotonic() - started:.2f} s:")
        print(json.dumps(reply, indent=2))
        if "body" not in reply:
            return 1
        item = reply["body"][0]
        data = await asyncio.to_thread(download, item["signedUrl"])
        print(f"\n{item['key']}: {len(data)} bytes, {item['rowCount']} rows; the first {rows}:")
        lines = data.decode("utf-8-sig").splitlines() if not item["key"].endswith(".gz") else []
        for line in lines[: rows + 1]:
            print("  " + line)
        if len(lines) > rows + 1:
            print(f"  … {len(lines) - rows - 1} more")
        await show_manifest_and_link(info, item)
        return 0
    finally:
        if worker is not None:
            await worker.stop(signal.SIGTERM)
        await standin.stop(signal.SIGINT)


async def show_manifest_and_link(info: dict[str, Any], item: dict[str, Any]) -> None:
    """A link re-issued for the export by the link route, and the manifest beside it."""
    again = {
        "action": "external-service",
        "data": {
            "id": f"link-{int(time.time())}",
            "route": "external-service/csv-generator/link",
            "body": {"key": item["key"], "expiresIn": 3600},
        },
    }
    reply = await submit(info["submit"], again)
    if "body" not in reply:
        print("\nthe link route answered: " + json.dumps(reply))
        return
    fresh = reply["body"][0]
    print(f"\nre-issued link for {fresh['key']}: expires {fresh['expiresAt']} (asked: 3600 s)")
    print(f"manifest {item['manifestKey']}, its columns:")
    data = await asyncio.to_thread(_read_object, info["env"], item["bucket"], item["manifestKey"])
    for column in orjson.loads(data)["columns"]:
        binding = column.get("dimension") or f"{column['metricId']}.{column['fetchValue']}"
        print(f"  {column['index']}: {column['heading']!r} {column['kind']} {binding}, "
              f"{column['type']}, {column['emptyCells']} empty")  # fmt: skip


def _read_object(env: dict[str, str], bucket: str, key: str) -> bytes:
    """One object of the stand-in's S3, read with the worker's own settings."""
    import boto3

    client = boto3.client(
        "s3",
        endpoint_url=env["AWS_ENDPOINT_URL_S3"],
        region_name=env["AWS_REGION"],
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
    )
    data: bytes = client.get_object(Bucket=bucket, Key=key)["Body"].read()
    return data


def main(args: argparse.Namespace) -> int:
    frame = orjson.loads(Path(args.request).read_bytes()) if args.request else SEED_REQUEST
    return asyncio.run(demo(frame, args.rows))
