"""Fakes for the services csvgen does not own. They record; they do not mock csvgen."""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Self
from urllib.parse import parse_qs, urlsplit

import orjson
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from csvgen.frames import ReplyAssembler


class LoopbackServer:
    """A WebSocket server on 127.0.0.1, port 0; subclasses give the connection handler.

    ``process_request`` (websockets') may refuse handshakes, as a flaky server would.
    """

    server: Server | None = None
    uri = ""
    process_request: Any = None

    async def start(self) -> Self:
        self.server = await serve(
            self._handler, "127.0.0.1", 0, compression=None, max_size=None,
            process_request=self.process_request,
        )  # fmt: skip
        self.uri = f"ws://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"
        return self

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()

    async def _handler(self, ws: ServerConnection) -> None:
        raise NotImplementedError


class FakeBus(LoopbackServer):
    """A loopback WebSocket server playing the Aura bus for one worker.

    It records every frame the worker sends, reassembles replies and keeps the
    query tokens and close codes it saw.
    """

    def __init__(self) -> None:
        self.raw: list[str] = []
        self.replies: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        self.tokens: list[str | None] = []
        self.extensions: list[str | None] = []  # Sec-WebSocket-Extensions offered per connection
        self.close_codes: list[int | None] = []
        self.current: ServerConnection | None = None
        self._assembler = ReplyAssembler()
        self._changed = asyncio.Condition()

    async def _handler(self, ws: ServerConnection) -> None:
        assert ws.request is not None
        query = parse_qs(urlsplit(ws.request.path).query)
        self.tokens.append(query.get("token", [None])[0])
        self.extensions.append(ws.request.headers.get("Sec-WebSocket-Extensions"))
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


Answer = Any  # a JSON document, or a RawFrames instance


class RawFrames:
    """An answer given as exact frame bodies: ``parts`` JSON slices sent as id|n|total|…"""

    def __init__(self, document: Any, parts: int, *, first: int = 0) -> None:
        text = orjson.dumps(document).decode()
        size = -(-len(text) // parts)
        self.slices = [text[i * size : (i + 1) * size] for i in range(parts)]
        self.first = first

    def frames(self, rid: str) -> list[str]:
        total = len(self.slices)
        return [f"{rid}|{n + self.first}|{total}|{s}" for n, s in enumerate(self.slices)]


class Scripted(RawFrames):
    """An answer given as exact frame texts, ``{rid}`` standing for the request's id."""

    def __init__(self, *texts: str) -> None:
        self.texts = texts

    def frames(self, rid: str) -> list[str]:
        return [t.replace("{rid}", rid) for t in self.texts]


class FakeMetrics(LoopbackServer):
    """A loopback WebSocket server playing the Aura Metrics API from canned answers.

    ``answers`` is a list of ``(match, answer)``: the first entry whose ``match``
    items all equal the request's (``route`` against the route, the rest against
    the body) answers it. ``hold`` makes it answer nothing until released.
    ``interleave`` collects that many requests, then sends all their frames
    round-robin, so parts of different answers interleave on the wire.
    """

    def __init__(
        self,
        answers: list[tuple[dict[str, Any], Answer]] | None = None,
        references: list[dict[str, Any]] | None = None,
        *,
        interleave: int = 0,
    ) -> None:
        self.answers = answers or []
        self.references = references or []
        self.interleave = interleave
        self.requests: list[tuple[str, str, dict[str, Any]]] = []  # (action, route, body)
        self.tokens: list[str | None] = []
        self.hold = asyncio.Event()
        self.hold.set()
        self.received = asyncio.Queue[str]()
        self.answered = asyncio.Queue[str]()  # routes whose answer was sent, in order
        self._batch: list[tuple[ServerConnection, list[str]]] = []
        self.connections: list[ServerConnection] = []
        self.drop_once: str | None = None  # cut the link on the first request for this route
        self.cut_after: dict[str, int] = {}  # route -> frames sent before cutting the link, once
        self._answering: set[asyncio.Task[None]] = set()
        self.latency = 0.0  # each answer waits up to this many seconds (seeded)
        self.random = random.Random(7)

    async def stop(self) -> None:
        self.hold.set()  # a held handler must not keep the server from closing
        await super().stop()

    def answer_for(self, route: str, body: dict[str, Any]) -> Answer:
        for match, answer in self.answers:
            if all((route if k == "route" else body.get(k)) == v for k, v in match.items()):
                return answer
        return {"error": {"code": "not_found", "message": f"no canned answer for {route}"}}

    async def _handler(self, ws: ServerConnection) -> None:
        assert ws.request is not None
        self.tokens.append(parse_qs(urlsplit(ws.request.path).query).get("token", [None])[0])
        self.connections.append(ws)
        with contextlib.suppress(ConnectionClosed):
            await self._serve(ws)

    async def _serve(self, ws: ServerConnection) -> None:
        async for message in ws:
            doc = orjson.loads(message)
            action, data = doc["action"], doc["data"]
            self.requests.append((action, data["route"], data["body"]))
            await self.received.put(data["route"])
            if data["route"] == self.drop_once:
                self.drop_once = None
                ws.transport.abort()
                return
            if action == "detail":
                wanted = set(data["body"].get("entities", []))
                refs = [r for r in self.references if r["id"] in wanted]
                await ws.send(f"{data['id']}|0|0|{orjson.dumps(refs).decode()}")
                continue
            # Each metric request is answered in its own task, as a real API would, so a
            # held answer holds back nothing else.
            task = asyncio.create_task(self._answer(ws, data))
            self._answering.add(task)
            task.add_done_callback(self._answering.discard)

    async def _answer(self, ws: ServerConnection, data: dict[str, Any]) -> None:
        answer = self.answer_for(data["route"], data["body"])
        await self.hold.wait()
        if self.latency:
            await asyncio.sleep(self.random.uniform(0, self.latency))
        with contextlib.suppress(ConnectionClosed):
            if isinstance(answer, RawFrames):
                frames = answer.frames(data["id"])
            else:
                frames = [f"{data['id']}|0|0|{orjson.dumps(answer).decode()}"]
            if self.interleave:
                self._batch.append((ws, frames))
                if len(self._batch) == self.interleave:
                    await self._send_interleaved()
                    await self.answered.put("interleaved")
                return
            cut = self.cut_after.pop(data["route"], None)
            for n, f in enumerate(frames):
                if n == cut:
                    ws.transport.abort()
                    return
                await ws.send(f)
            await self.answered.put(data["route"])

    async def _send_interleaved(self) -> None:
        batch, self._batch = self._batch, []
        longest = max(len(frames) for _, frames in batch)
        for n in range(longest):
            for ws, frames in batch:
                if n < len(frames):
                    await ws.send(frames[n])


@dataclass
class Fault:
    """What :class:`FaultProxy` does to the requests it matches: all of ``method``, a
    ``path`` substring and a ``header`` present (each when given). ``times``: how many
    requests it applies to (None: all); ``hits`` counts them."""

    method: str | None = None
    path: str = ""
    header: str | None = None
    delay: float = 0.0  # seconds before the request goes on
    late: float = 0.0  # seconds between the upstream's answer and passing it on
    answer: tuple[int, str] | None = None  # (status, S3 error code) instead of forwarding
    strip: tuple[str, ...] = ()  # headers removed before forwarding
    times: int | None = None
    chance: float = 1.0  # the share of matching requests it applies to (seeded)
    after: int = 0  # the first that many matching requests pass untouched
    hits: int = 0
    passed: int = 0

    def matches(self, method: str, target: str, names: set[str], dice: random.Random) -> bool:
        return (
            (self.times is None or self.hits < self.times)
            and (self.chance >= 1 or dice.random() < self.chance)
            and (self.method is None or self.method == method)
            and self.path in target
            and (self.header is None or self.header in names)
        )


class FaultProxy:
    """An HTTP proxy on loopback in front of an S3 server that delays, fails or strips the
    conditional headers of chosen requests (the first :class:`Fault` that matches)."""

    def __init__(self, upstream: str, *faults: Fault) -> None:
        self.faults = list(faults)
        parts = urlsplit(upstream)
        self.upstream = (parts.hostname or "127.0.0.1", parts.port or 80)
        self.server: asyncio.Server | None = None
        self.endpoint = ""
        self.seen: list[tuple[str, str, set[str]]] = []  # method, target, header names
        self.handling: set[asyncio.Task[Any]] = set()
        self.dice = random.Random(11)

    async def start(self) -> Self:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.endpoint = f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"
        return self

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            for task in self.handling:  # a delayed request is not waited for
                task.cancel()
            await self.server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """One request per connection: forwarded (or not) as the faults say, answered, closed."""
        task = asyncio.current_task()
        assert task is not None
        self.handling.add(task)
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.split(b"\r\n")[:-2]
            method, target = lines[0].decode("latin-1").split(" ")[:2]
            headers = [
                (line.split(b":", 1)[0].strip().lower().decode("latin-1"), line)
                for line in lines[1:]
            ]
            names = {name for name, _ in headers}
            self.seen.append((method, target, names))
            length = next(
                (int(line.split(b":", 1)[1]) for n, line in headers if n == "content-length"), 0
            )
            if "expect" in names:  # botocore waits up to a second for this before the body
                writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
                await writer.drain()
            body = await reader.readexactly(length)
            fault = next(
                (f for f in self.faults if f.matches(method, target, names, self.dice)), Fault()
            )
            if fault.passed < fault.after:
                fault.passed += 1
                fault = Fault()
            fault.hits += 1
            if fault.delay:
                await asyncio.sleep(fault.delay)
            if fault.answer is not None:
                writer.write(_error(*fault.answer))
                await writer.drain()
                return
            dropped = {*fault.strip, "connection", "expect"}
            kept = [line for name, line in headers if name not in dropped]
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
            up_writer.write(b"\r\n".join([lines[0], *kept, b"Connection: close", b"", b""]) + body)
            await up_writer.drain()
            answer = await up_reader.read()  # the upstream closes after its answer
            up_writer.close()
            if fault.late:
                await asyncio.sleep(fault.late)
            writer.write(answer)
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()
            self.handling.discard(task)

    def count(self, method: str, path: str = "", header: str | None = None) -> int:
        """Requests seen with ``method``, ``path`` in their target and ``header`` sent."""
        return sum(
            m == method and path in t and (header is None or header in names)
            for m, t, names in self.seen
        )


def _error(status: int, code: str) -> bytes:
    body = (
        f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code>'
        f"<Message>{code}</Message></Error>"
    ).encode()
    return (
        f"HTTP/1.1 {status} {code}\r\nContent-Type: application/xml\r\nConnection: close\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body
