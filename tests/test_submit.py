"""`csvgen submit` as a user runs it (a real process), against a bus that answers what a
test tells it to: the token never printed, a reply's URL never opened unless http(s)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from websockets.asyncio.server import ServerConnection, serve

from tests.processes import Child, child_env

FRAME = {"action": "external-service", "data": {"id": "s1", "route": "x", "body": {}}}
TOKEN = "s3cr3t-token-value"


@pytest.fixture
async def bus_replying() -> AsyncIterator[tuple[str, list[Any]]]:
    """A submit URL whose bus answers each frame with the next reply of the list."""
    replies: list[Any] = []

    async def answer(ws: ServerConnection) -> None:
        async for message in ws:
            rid = orjson.loads(message)["data"]["id"]
            await ws.send(f"{rid}|0|0|{orjson.dumps(replies.pop(0)).decode()}")

    async with serve(answer, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        yield f"ws://127.0.0.1:{port}/", replies


async def submit(tmp_path: Path, url: str, *extra: str) -> tuple[int, str]:
    frame = tmp_path / "frame.json"
    frame.write_bytes(orjson.dumps(FRAME))
    env = child_env(CSVGEN_BUS_TOKEN=TOKEN)
    child = await Child("submit", str(frame), "--url", url, *extra, env=env, stream="both").start()
    return await child.wait(), "\n".join(child.lines)


@pytest.mark.parametrize("url", ["http://127.0.0.1:9/", "ws://127.0.0.1:0/", "ws:///nohost"])
async def test_a_bad_url_is_bad_usage_and_the_token_never_shows(tmp_path: Path, url: str) -> None:
    status, out = await submit(tmp_path, url)
    assert status == 2 and "csvgen submit: --url" in out
    assert TOKEN not in out and "Traceback" not in out


async def test_a_bus_that_is_not_there_prints_no_token(tmp_path: Path) -> None:
    status, out = await submit(tmp_path, "ws://127.0.0.1:9/")
    assert status == 1 and "no reply from the bus" in out
    assert TOKEN not in out and "Traceback" not in out


async def test_a_reply_url_that_is_not_http_is_never_opened(
    tmp_path: Path, bus_replying: tuple[str, list[Any]]
) -> None:
    url, replies = bus_replying
    secret = tmp_path / "secret.txt"
    secret.write_text("private")
    item = {"key": "k", "signedUrl": secret.as_uri(), "sizeBytes": 7, "sha256": "x"}
    replies.append({"body": [item]})
    status, out = await submit(tmp_path, url, "--download")
    assert status == 1 and "not an http(s) URL" in out
    assert "private" not in out
