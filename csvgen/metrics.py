"""The Aura Metrics API client: one WebSocket, many requests in flight (SPEC §3).

Theory of operation
-------------------

One background task owns the connection (websockets' reconnecting ``connect``
loop, as the bus does) and is its only reader: it feeds each frame to a
:class:`~csvgen.frames.ReplyAssembler` and resolves the future waiting on that
id. :meth:`MetricsClient.request` sends one envelope with a fresh id and waits
for its answer. If the connection drops before the answer is complete, the
request is sent again on the next connection, at most ``MAX_ATTEMPTS`` times.
The caller's timeout bounds the whole: waiting for a connection, sending,
retries and reassembly.

The link survives bad frames (SPEC §8): a frame that breaks the framing rules
fails only the request it names (or is dropped with a warning when it names
none), and no frame ever ends the reader. Only a 401/403 on connect marks the
link refused. An :class:`AnswerBudget` shared by one export's requests counts
the bytes of their frames as they arrive; past it they fail ``too_large``.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
from collections.abc import Awaitable
from typing import Any, Protocol

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from . import frames, telemetry
from .config import Settings, redact_url
from .errors import PartError, TooLarge, UpstreamError
from .links import connect_options, with_token

__all__ = ["AnswerBudget", "AnswerSink", "MetricsClient"]

logger = logging.getLogger(__name__)

MAX_ATTEMPTS = 3
MAX_QUEUED = 2


class _ConnectionLost(Exception):
    pass


class AnswerBudget:
    """Bytes one export may receive from the Metrics API (CSVGEN_MAX_ANSWER_BYTES)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0

    def take(self, n: int) -> bool:
        """Count ``n`` more bytes; False once the total is over the limit."""
        self.used += n
        return self.used <= self.limit

    def give_back(self, n: int) -> None:
        """Uncount ``n`` bytes (an answer read again: its first reading is not counted twice)."""
        self.used -= n

    def error(self) -> TooLarge:
        return TooLarge(
            f"the metric answers of this export passed {self.limit} bytes; "
            "ask for fewer days, entities or breakdowns"
        )


class AnswerSink(Protocol):
    """Where :meth:`MetricsClient.request_into` hands an answer's parts, in order."""

    def feed(self, part: bytes) -> None:
        """One more part; called on the event loop, so it must be quick."""

    def restart(self) -> None:
        """The request is being sent again: forget every part fed so far."""

    def room(self) -> Awaitable[object] | None:
        """None while the sink can take more; else what to await until it can.

        While a sink is full the link reads no further frame (backpressure: memory
        holds what the reader has not caught up with, never a whole answer)."""


class _Collect:
    """The sink of :meth:`MetricsClient.request_raw`: the parts, kept."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []

    def feed(self, part: bytes) -> None:
        self.parts.append(part)

    def restart(self) -> None:
        self.parts.clear()

    def room(self) -> None:
        return None


async def _until(room: Awaitable[object], request: asyncio.Future[None]) -> None:
    """Wait for a sink to have room, or for its request to end (failed, cancelled)."""
    waiting: asyncio.Future[Any] = asyncio.ensure_future(room)
    try:
        await asyncio.wait([waiting, request], return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiting.cancel()


class MetricsClient:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._ids = itertools.count(1)
        self._prefix = f"csvgen-{os.getpid()}"
        self._waiting: dict[str, tuple[asyncio.Future[None], ClientConnection]] = {}
        self._sinks: dict[str, AnswerSink] = {}
        self._budgets: dict[str, AnswerBudget] = {}
        self._assembler = frames.ReplyAssembler()
        self._ws: ClientConnection | None = None
        self._up = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._refused: str | None = None

    async def __aenter__(self) -> MetricsClient:
        self._task = asyncio.create_task(self._run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._closing = True
        if self._ws is not None:
            await self._ws.close()  # a clean 1000 before the loop task goes
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def request(
        self, action: str, route: str, body: dict[str, Any], budget: AnswerBudget | None = None
    ) -> Any:
        """Send one request and return its parsed answer (for small answers: detail/list).

        Raises:
            UpstreamError: an error answer, an answer that is not JSON, or see
                :meth:`request_raw`.
        """
        return frames.parse_answer(b"".join(await self.request_raw(action, route, body, budget)))

    async def request_raw(
        self, action: str, route: str, body: dict[str, Any], budget: AnswerBudget | None = None
    ) -> list[bytes]:
        """Send one request and return its answer's JSON text, unparsed, in its parts.

        Raises: see :meth:`request_into`.
        """
        collect = _Collect()
        await self.request_into(action, route, body, collect, budget)
        return collect.parts

    async def request_into(
        self,
        action: str,
        route: str,
        body: dict[str, Any],
        sink: AnswerSink,
        budget: AnswerBudget | None = None,
    ) -> None:
        """Send one request; hand its answer's parts to ``sink`` in order as they arrive.

        Returns when the last part has been handed out. Every frame of the answer is
        counted against ``budget`` as it arrives. If the connection drops, the request
        is sent again (``sink.restart()`` first).

        Raises:
            UpstreamError: a broken multi-part answer, or the connection was lost
                ``MAX_ATTEMPTS`` times.
            TooLarge: ``budget`` ran out.
            TimeoutError: from the caller's ``asyncio.timeout``.
        """
        for attempt in range(1, MAX_ATTEMPTS + 1):
            await self._up.wait()
            if self._refused is not None:
                raise UpstreamError(f"the Metrics API refused the connection ({self._refused})")
            ws = self._ws
            assert ws is not None
            rid = f"{self._prefix}-{next(self._ids)}"
            future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            if attempt > 1:
                sink.restart()
            self._waiting[rid] = (future, ws)
            self._sinks[rid] = sink
            if budget is not None:
                self._budgets[rid] = budget
            try:
                await ws.send(frames.encode_action(frames.Action(rid, route, body, action=action)))
                await future
            except (ConnectionClosed, _ConnectionLost):
                telemetry.METRIC_REQUESTS.labels("lost").inc()
                logger.warning("metrics link lost during %s (attempt %d)", route, attempt)
                continue
            except TooLarge:
                telemetry.METRIC_REQUESTS.labels("too_large").inc()
                raise
            except UpstreamError:
                telemetry.METRIC_REQUESTS.labels("error").inc()
                raise
            else:
                telemetry.METRIC_REQUESTS.labels("ok").inc()
                return
            finally:
                self._waiting.pop(rid, None)
                self._sinks.pop(rid, None)
                self._budgets.pop(rid, None)
                self._assembler.forget(rid)
        raise UpstreamError(f"the metrics connection was lost {MAX_ATTEMPTS} times")

    async def _run(self) -> None:
        while True:
            try:
                await self._connect_loop()
                return
            except InvalidStatus as exc:  # 401/403 (see classify): retrying will not help
                logger.error("the Metrics API refused the connection, giving up: %s", exc)
                self._refused = f"HTTP {exc.response.status_code}"
                self._up.set()  # wake the waiting requests, to fail them
                return
            except Exception:
                logger.exception("the metrics link failed; connecting again")
                await asyncio.sleep(self.settings.reconnect_max_delay_s)

    async def _connect_loop(self) -> None:
        url = self.settings.metrics_url
        # Frames websockets queues while a full sink holds the link (backpressure): at most
        # MAX_QUEUED of them, so memory holds a few parts, not sixteen (its default).
        options = {**connect_options(self.settings, url), "max_queue": MAX_QUEUED}
        async for ws in connect(with_token(url, self.settings.metrics_token), **options):
            logger.info("connected to the metrics API at %s", redact_url(url))
            self._ws = ws
            self._up.set()
            try:
                while True:  # bytes, not str: answers are not decoded, only cut and parsed
                    full = self._on_frame(await ws.recv(decode=False))
                    if full is not None:
                        await full
            except ConnectionClosed:
                pass
            finally:
                self._up.clear()
                self._ws = None
                self._fail_waiting(ws)
            if self._closing:
                return
            logger.warning("lost the metrics connection; reconnecting")

    def _on_frame(self, message: str | bytes) -> Awaitable[object] | None:
        """Route one frame to its request. Never raises: a bad frame costs its request only.

        Returns what to await before reading the next frame when the request's sink is
        full (it ends early if the request ends)."""
        data = message.encode() if isinstance(message, str) else message
        telemetry.UPSTREAM_BYTES.inc(len(data))
        cut = data.find(b"|")
        if cut < 0:
            logger.warning("unreadable frame from the metrics API: %.80r", data)
            return None
        rid = data[:cut].decode(errors="replace")
        if rid not in self._waiting:
            # An answer that came after its request gave up: its parts must not pile up.
            logger.debug("frame for unknown or finished request %.80r dropped", rid)
            return None
        budget = self._budgets.get(rid)
        if budget is not None and not budget.take(len(data)):
            self._assembler.forget(rid)
            self._settle(rid, error=budget.error())
            return None
        try:
            rid, ready, complete = self._assembler.feed_stream(data)
            sink = self._sinks[rid]
            for part in ready:
                sink.feed(part)
        except PartError as exc:
            self._settle(rid, error=UpstreamError(f"broken answer: {exc}"))
            return None
        except Exception:  # a codec bug must not end the reader: fail the one request
            logger.exception("frame for %.80r could not be read", rid)
            self._assembler.forget(rid)
            self._settle(rid, error=UpstreamError("broken answer"))
            return None
        if complete:
            self._settle(rid)
            return None
        room = sink.room()
        return None if room is None else _until(room, self._waiting[rid][0])

    def _settle(self, rid: str, *, error: Exception | None = None) -> None:
        entry = self._waiting.get(rid)
        if entry is None or entry[0].done():
            return
        if error is not None:
            entry[0].set_exception(error)
        else:
            entry[0].set_result(None)

    def _fail_waiting(self, ws: ClientConnection) -> None:
        for future, sent_on in list(self._waiting.values()):
            if sent_on is ws and not future.done():
                future.set_exception(_ConnectionLost())
