"""`csvgen submit FILE --url WS_URL`: send one request frame to a bus and print the reply.

For operators and for trying the stand-in by hand. The token, when the bus needs one,
comes from ``CSVGEN_BUS_TOKEN`` (as for the worker; never a flag). With
``--download`` the signed URL is fetched and the file is checked against the reply's
``sizeBytes`` and ``sha256``.

Exit status: 0 for a success reply (and a file that matches it), 1 for an error reply,
a mismatch or no reply in time, 2 for bad usage (no such file, not a request frame, a
URL that is not ws:// or wss://). The URL is checked before the token is added, and no
error it prints holds the token. A download is only ever over http(s), read and hashed
a chunk at a time, never held whole.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import sys
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import orjson
from websockets.asyncio.client import connect
from websockets.exceptions import WebSocketException

from .config import ws_url
from .frames import ReplyAssembler
from .links import with_token
from .logs import scrub

__all__ = ["add_parser", "main"]

#: A download is read and hashed this much at a time.
CHUNK = 1024 * 1024


def add_parser(commands: Any) -> None:
    submit = commands.add_parser("submit", help="send one request frame to a bus, print the reply")
    submit.add_argument("file", metavar="FILE", help="the request frame (JSON)")
    submit.add_argument("--url", required=True, help="the bus's submit URL (ws:// or wss://)")
    submit.add_argument("--download", action="store_true", help="fetch and check the file")
    submit.add_argument("--timeout", type=float, default=600.0, help="seconds to wait (600)")


def main(args: argparse.Namespace) -> int:
    try:
        frame = orjson.loads(Path(args.file).read_bytes())
        rid = frame["data"]["id"]
        if not isinstance(rid, str) or not rid:
            raise TypeError("data.id must be a non-empty string")
    except (OSError, orjson.JSONDecodeError, KeyError, TypeError) as exc:
        print(f"csvgen submit: {args.file}: not a request frame ({exc})", file=sys.stderr)
        return 2
    try:
        checked = ws_url(args.url)
    except ValueError as exc:
        print(f"csvgen submit: --url {exc}", file=sys.stderr)
        return 2
    token = os.environ.get("CSVGEN_BUS_TOKEN")
    url = with_token(checked, token)
    try:
        reply = asyncio.run(_ask(url, rid, frame, args.timeout))
    except (OSError, TimeoutError, WebSocketException) as exc:
        reason = scrub(str(exc), [token] if token else []) if str(exc) else "timed out"
        print(f"csvgen submit: no reply from the bus: {reason}", file=sys.stderr)
        return 1
    print(orjson.dumps(reply, option=orjson.OPT_INDENT_2).decode())
    if "error" in reply or not isinstance(reply.get("body"), list):
        return 1
    if args.download:
        return _check(reply["body"][0])
    return 0


async def _ask(url: str, rid: str, frame: Any, timeout_s: float) -> Any:
    assembler = ReplyAssembler()
    async with asyncio.timeout(timeout_s), connect(url, max_size=None) as ws:
        await ws.send(orjson.dumps(frame).decode())
        async for message in ws:
            done = assembler.feed(message)
            if done is not None and done[0] == rid:
                return done[1]
    raise OSError("the bus closed the connection first")


def _check(item: dict[str, Any]) -> int:
    url = item.get("signedUrl")
    if not isinstance(url, str) or urlsplit(url).scheme not in ("http", "https"):
        print("csvgen submit: the reply's signedUrl is not an http(s) URL", file=sys.stderr)
        return 1
    digest, size = hashlib.sha256(), 0
    try:
        with urllib.request.urlopen(url, timeout=60) as response:
            while chunk := response.read(CHUNK):
                digest.update(chunk)
                size += len(chunk)
    except OSError as exc:
        print(f"csvgen submit: the download failed: {type(exc).__name__}", file=sys.stderr)
        return 1
    if size != item.get("sizeBytes") or digest.hexdigest() != item.get("sha256"):
        print(
            f"csvgen submit: downloaded {size} bytes, sha256 {digest.hexdigest()}; the reply "
            f"said {item.get('sizeBytes')} bytes, sha256 {item.get('sha256')}",
            file=sys.stderr,
        )
        return 1
    print(f"downloaded {item.get('key')}: {size} bytes, sha256 matches", file=sys.stderr)
    return 0
