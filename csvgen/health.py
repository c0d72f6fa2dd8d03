"""``CSVGEN_HTTP_PORT``: liveness, readiness and Prometheus metrics over HTTP (SPEC §10).

A small HTTP/1.1 responder on the worker's own event loop (``asyncio.start_server``):
each request is a few bytes read and one short answer written, so it never holds the
loop. ``GET /healthz``: 200 while the process runs. ``GET /readyz``: 200 when the bus
link is up and the worker is not draining, else 503 with a JSON reason.
``GET /metrics``: the registry of telemetry.py in Prometheus' text format, written by
``prometheus_client``. Anything else: 404; a malformed or slow request: closed.

The port may face a network (``CSVGEN_HTTP_HOST=0.0.0.0``), so what a client can hold is
bounded: at most ``MAX_CONNECTIONS`` connections at once (one more is closed as soon as
it is accepted, so idle clients cannot use up the worker's files), and each connection
lives at most ``CONNECTION_TIMEOUT_S``, its read, answer, drain and close together.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

import orjson
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from .telemetry import REGISTRY

__all__ = ["HealthServer"]

logger = logging.getLogger(__name__)

#: A request line and headers larger than this are dropped.
MAX_REQUEST_BYTES = 8 * 1024
#: A connection's whole life (read, answer, drain, close), at most.
CONNECTION_TIMEOUT_S = 5.0
#: Connections served at once; more are closed as soon as they are accepted.
MAX_CONNECTIONS = 32

_REASONS = {200: "OK", 404: "Not Found", 405: "Method Not Allowed", 503: "Service Unavailable"}


class HealthServer:
    def __init__(self, host: str, port: int, not_ready: Callable[[], str | None]) -> None:
        """``not_ready`` returns why the worker is not ready, or None when it is."""
        self.host = host
        self.port = port
        self.not_ready = not_ready
        self.server: asyncio.Server | None = None
        self.open = 0  # connections being served
        self.refused = 0  # connections closed at once: MAX_CONNECTIONS were open

    async def start(self) -> int:
        """Listen; returns the bound port (a free one when asked for port 0)."""
        self.server = await asyncio.start_server(
            self._handle, self.host, self.port, limit=MAX_REQUEST_BYTES
        )
        port: int = self.server.sockets[0].getsockname()[1]
        return port

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.open >= MAX_CONNECTIONS:
            self.refused += 1
            writer.transport.abort()  # its file is given back now, not after a timeout
            return
        self.open += 1
        try:
            async with asyncio.timeout(CONNECTION_TIMEOUT_S):
                await self._serve(reader, writer)
        except (TimeoutError, ValueError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass  # not a request we answer, or too slow: the connection is closed
        except ConnectionError:
            pass
        finally:
            self.open -= 1
            writer.transport.abort()  # closed already, or stuck: never waited on

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        method, path, _ = head.split(b"\r\n", 1)[0].decode("latin-1").split(" ", 2)
        status, content_type, body = self._answer(method, path.split("?", 1)[0])
        writer.write(
            f"HTTP/1.1 {status} {_REASONS[status]}\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
            + (body if method != "HEAD" else b"")
        )
        await writer.drain()
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()

    def _answer(self, method: str, path: str) -> tuple[int, str, bytes]:
        if method not in ("GET", "HEAD"):
            return 405, "text/plain", b"GET only\n"
        if path == "/healthz":
            return 200, "application/json", b'{"status":"ok"}\n'
        if path == "/readyz":
            reason = self.not_ready()
            if reason is None:
                return 200, "application/json", b'{"status":"ready"}\n'
            doc = {"status": "not ready", "reason": reason}
            return 503, "application/json", orjson.dumps(doc) + b"\n"
        if path == "/metrics":
            return 200, CONTENT_TYPE_LATEST, generate_latest(REGISTRY)
        return 404, "text/plain", b"not found\n"
