"""Fakes for the services csvgen does not own. They record; they do not mock csvgen."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import Server, ServerConnection, serve

from csvgen.frames import ReplyAssembler


class FakeBus:
    """A loopback WebSocket server playing the Aura bus for one worker.

    It records every frame the worker sends, reassembles replies and keeps the
    query tokens and close codes it saw.
    """

    def __init__(self) -> None:
        self.server: Server | None = None
        self.uri = ""
        self.raw: list[str] = []
        self.replies: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        self.tokens: list[str | None] = []
        self.close_codes: list[int | None] = []
        self.current: ServerConnection | None = None
        self._assembler = ReplyAssembler()
        self._changed = asyncio.Condition()

    async def start(self) -> FakeBus:
        self.server = await serve(self._handler, "127.0.0.1", 0, compression=None)
        port = self.server.sockets[0].getsockname()[1]
        self.uri = f"ws://127.0.0.1:{port}"
        return self

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()

    async def _handler(self, ws: ServerConnection) -> None:
        assert ws.request is not None
        query = parse_qs(urlsplit(ws.request.path).query)
        self.tokens.append(query.get("token", [None])[0])
        async with self._changed:
            self.current = ws
            self._changed.notify_all()
        try:
            async for message in ws:
                assert isinstance(message, str)
                self.raw.append(message)
                done = self._assembler.feed(message)
                if done is not None:
                    await self.replies.put(done)
        finally:
            self.close_codes.append(ws.close_code)
            async with self._changed:
                if self.current is ws:
                    self.current = None
                self._changed.notify_all()

    @property
    def connections(self) -> int:
        return len(self.tokens)

    async def wait_connections(self, n: int) -> ServerConnection:
        """Wait until the worker has opened its n-th connection and it is up."""
        async with self._changed:
            await self._changed.wait_for(lambda: self.connections >= n and self.current is not None)
            assert self.current is not None
            return self.current

    async def wait_closed(self, n: int) -> None:
        async with self._changed:
            await self._changed.wait_for(lambda: len(self.close_codes) >= n)

    async def send(self, text: str) -> None:
        ws = await self.wait_connections(1)
        await ws.send(text)

    async def reply(self) -> tuple[str, Any]:
        async with asyncio.timeout(10):
            return await self.replies.get()

    def drop(self) -> None:
        """Cut the current connection without a close frame."""
        assert self.current is not None
        self.current.transport.abort()


@contextlib.asynccontextmanager
async def running_bus() -> AsyncIterator[FakeBus]:
    bus = await FakeBus().start()
    try:
        yield bus
    finally:
        await bus.stop()
