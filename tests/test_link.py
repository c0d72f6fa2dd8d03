"""`external-service/csv-generator/link`: a fresh URL for an export, from its manifest only."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import boto3
import orjson
import pytest

from csvgen.config import Settings
from csvgen.csvexport.link import ExportLinks
from csvgen.errors import NotFound
from csvgen.frames import Action, encode_action
from csvgen.stores.s3 import S3Store
from tests.conftest import S3Server, running_exporter
from tests.fakes import FakeBus, FakeMetrics
from tests.test_export import download
from tests.test_export_errors import entries_answer, request

LINK = "external-service/csv-generator/link"


def link(rid: str, body: dict[str, Any]) -> str:
    return encode_action(Action(rid, LINK, body))


async def test_a_link_is_re_issued_for_an_export_and_for_nothing_else(
    bus: FakeBus, metrics: FakeMetrics, s3: S3Server
) -> None:
    metrics.answers.append(({"route": "entries"}, entries_answer()))
    s3.client().put_object(Bucket="aura-exports", Key="exports/other/secret.csv", Body=b"no")
    async with running_exporter(bus, metrics):
        await bus.send(request("first"))
        _, first = await bus.reply()
        [item] = first["body"]
        asked = len(metrics.requests)
        await bus.send(link("again", {"key": item["key"], "expiresIn": 120}))
        _, again = await bus.reply()
        await bus.send(link("long", {"key": item["key"], "expiresIn": 10**7}))
        _, long = await bus.reply()
        refused = {}
        for rid, key in [
            ("no-manifest", "exports/other/secret.csv"),
            ("outside", "elsewhere/x.csv"),
            ("the-manifest", item["manifestKey"]),
            ("climbing", "exports/../exports/x.csv"),
            ("a-receipt", "exports/.receipts/0123.json"),
            ("hidden", "exports/.receipts/0123.csv"),
        ]:
            await bus.send(link(rid, {"key": key}))
            got, payload = await bus.reply()
            refused[got] = payload["error"]
        await bus.send(link("bad", {"key": 7, "expiresIn": "soon"}))
        _, bad = await bus.reply()
    [fresh] = again["body"]
    assert len(metrics.requests) == asked  # nothing recomputed
    assert {k: v for k, v in fresh.items() if k not in ("signedUrl", "expiresAt")} == {
        k: v for k, v in item.items() if k not in ("signedUrl", "expiresAt")
    }
    assert parse_qs(urlsplit(fresh["signedUrl"]).query)["X-Amz-Expires"] == ["120"]
    assert download(fresh["signedUrl"]) == download(item["signedUrl"])
    [clamped] = long["body"]
    assert parse_qs(urlsplit(clamped["signedUrl"]).query)["X-Amz-Expires"] == ["604800"]
    assert clamped["warnings"] == [
        "expiresIn 10000000 is over the 604800 s a signed URL may live; the link lives 604800 s"
    ]
    assert {rid: (e["code"], e["status"]) for rid, e in refused.items()} == dict.fromkeys(
        ["no-manifest", "outside", "the-manifest", "climbing", "a-receipt", "hidden"],
        ("not_found", 404),
    )
    assert [d["path"] for d in bad["error"]["details"]] == ["key", "expiresIn"]


async def test_temporary_credentials_clamp_the_link(
    bus: FakeBus,
    metrics: FakeMetrics,
    s3: S3Server,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Credentials from moto's STS that end in 15 minutes: a link asked for an hour lives
    as long as they do, says so, and its expiresAt is true."""
    sts = boto3.client("sts", endpoint_url=s3.endpoint, region_name="us-east-1")
    temporary = sts.get_session_token(DurationSeconds=900)["Credentials"]
    process = tmp_path / "credentials.json"
    process.write_text(
        orjson.dumps(
            {
                "Version": 1,
                "AccessKeyId": temporary["AccessKeyId"],
                "SecretAccessKey": temporary["SecretAccessKey"],
                "SessionToken": temporary["SessionToken"],
                "Expiration": temporary["Expiration"].isoformat(),
            }
        ).decode()
    )
    config = tmp_path / "config"
    config.write_text(f"[profile temporary]\ncredential_process = cat {process}\n")
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(config))
    monkeypatch.setenv("AWS_PROFILE", "temporary")
    boto3.setup_default_session()  # the worker's S3 client resolves them afresh
    metrics.answers.append(({"route": "entries"}, entries_answer()))
    try:
        async with running_exporter(bus, metrics, now=None):
            await bus.send(request("temp"))
            _, first = await bus.reply()
            await bus.send(link("temp-link", {"key": first["body"][0]["key"], "expiresIn": 3600}))
            _, again = await bus.reply()
    finally:
        boto3.setup_default_session()
    [item] = again["body"]
    lifetime = int(parse_qs(urlsplit(item["signedUrl"]).query)["X-Amz-Expires"][0])
    assert 800 < lifetime <= 900
    [warning] = item["warnings"]
    assert warning.startswith("the signing credentials expire in ")
    ends = datetime.strptime(item["expiresAt"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    assert ends <= temporary["Expiration"]


async def test_a_broken_manifest_is_not_found_not_internal(s3: S3Server) -> None:
    key = "exports/o/x.csv"
    links = ExportLinks(Settings(bus_url="ws://127.0.0.1:1/bus"), S3Store("aura-exports"))
    for manifest in (b'{"format": "csvgen-manifest/1", "export": "x"}', b"{", b"[1]"):
        s3.client().put_object(Bucket="aura-exports", Key=key + ".manifest.json", Body=manifest)
        with pytest.raises(NotFound):
            await links.run(key, 60)
