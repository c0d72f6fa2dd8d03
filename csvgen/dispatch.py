"""From inbound frame text to reply texts in the outbox, with no network I/O.

Theory of operation
-------------------

:meth:`Dispatcher.receive` is called by the single bus reader for every text
frame. It never blocks and never raises: it parses (refusing oversized or too
deeply nested bodies first), routes, validates the body through the route's
``prepare`` (SPEC §8: an invalid request is answered at once, even while every
slot is busy) and either puts an immediate reply in the :class:`Outbox` (errors,
idempotent re-answers) or starts one task for the prepared job. Tasks run at
most ``max_concurrent_exports`` at a time (a semaphore); admitted tasks beyond
that wait, holding their plan and not their body, and at most
``max_queued_exports`` may wait: the next one is answered ``overloaded``. Each
admitted export has a deadline, ``export_timeout_s`` from admission to reply,
waiting included: past it the job is cancelled and answered ``export_timeout``.

Every reply goes through the :class:`Outbox`, which outlives connections: the bus
sends from it while connected and leaves it alone while not, so a reply made
during an outage is sent after the reconnect.

Idempotency (protocol.md, "Idempotency"): an id in flight gains one more
receipt (at most ``MAX_RECEIPTS``; more are dropped with one warning per id)
and is answered once per receipt when its export ends; a successful id
is remembered for ``dedupe_ttl_s`` and answered again at once through the
route's ``replay`` hook. Errors are not remembered, so a failed request may be
retried with the same id. The same id with another body is ``invalid_request``.

Draining (:meth:`Dispatcher.drain`): new exports get ``shutting_down``; running
ones get the grace period; the rest are cancelled and answered ``shutting_down``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from . import frames, telemetry
from .errors import (
    BodyTooLarge,
    ExportTimeout,
    FrameError,
    InternalError,
    InvalidEnvelope,
    Overloaded,
    ReplyError,
    ShuttingDown,
    cut,
    echo,
)
from .outbox import Outbox
from .receipts import MAX_RECEIPTS, Done, MemoryReceipts, Receipts, Seen
from .routes import Job, Route, Router

__all__ = ["Dispatcher"]

logger = logging.getLogger(__name__)

ROUTE_PREFIX = "external-service/"


class Dispatcher:
    def __init__(
        self,
        router: Router,
        outbox: Outbox,
        *,
        max_concurrent: int,
        max_queued: int,
        dedupe_ttl_s: float,
        export_timeout_s: float = 1800.0,
        max_body_bytes: int = frames.MAX_BODY_BYTES,
        max_depth: int = frames.MAX_DEPTH,
        stop: asyncio.Event | None = None,
        clock: Callable[[], float] = time.monotonic,
        receipts: Receipts | None = None,
    ) -> None:
        self.router = router
        self.outbox = outbox
        self.max_concurrent = max_concurrent
        self.max_queued = max_queued
        self.dedupe_ttl_s = dedupe_ttl_s
        self.export_timeout_s = export_timeout_s
        self.max_body_bytes = max_body_bytes
        self.max_depth = max_depth
        self.clock = clock
        # Draining starts the moment stop is set, not when the drain coroutine runs.
        self.stop = stop if stop is not None else asyncio.Event()
        self.tasks: set[asyncio.Task[None]] = set()
        self._slots = asyncio.Semaphore(max_concurrent)
        self._admitted = 0  # running + waiting exports
        self._running = 0
        self.receipts = receipts or MemoryReceipts(ttl_s=dedupe_ttl_s, clock=clock)

    @property
    def draining(self) -> bool:
        return self.stop.is_set()

    # -- inbound ---------------------------------------------------------------

    def receive(self, text: str | bytes) -> None:
        """Handle one inbound frame. Never raises: no input stops the worker."""
        logger.debug("frame in: %r (%d chars)", text[:200], len(text))
        start = time.perf_counter()
        try:
            action = frames.parse_action(
                text, max_body_bytes=self.max_body_bytes, max_depth=self.max_depth
            )
        except FrameError as exc:
            logger.warning("dropped frame: %s (%d chars)", exc.reason, len(text))
            return
        except (InvalidEnvelope, BodyTooLarge) as exc:
            self._reply(exc.request_id, exc.as_json())
            elapsed = time.perf_counter() - start
            self._log(exc.request_id, "-", exc.code, elapsed, {"detail": cut(str(exc))})
            return
        if action is None:
            logger.debug("ignored frame that is not an external-service action")
            return
        try:
            self._accept(action)
        except ReplyError as exc:
            self._reply(action.id, exc.as_json())
            self._log(action.id, action.route, exc.code, time.perf_counter() - start)
        except Exception:
            logger.exception("request %s: bug while accepting", action.id)
            self._reply(action.id, InternalError().as_json())

    def _accept(self, action: frames.Action) -> None:
        if not action.route.startswith(ROUTE_PREFIX):
            logger.debug("ignored action for route %s", echo(action.route))
            return
        route = self.router.resolve(action.route)
        fp = None
        if self.receipts.known(action.id):
            fp = frames.fingerprint(action.route, action.body)
            seen, done = self.receipts.receive(action.id, fp)
            if seen is Seen.DUPLICATE:
                logger.info("request %s: duplicate of a request in flight", action.id)
                return
            if seen is Seen.OVERFLOW:
                logger.warning(
                    "request %s: more than %d receipts in flight; the rest are dropped",
                    action.id,
                    MAX_RECEIPTS,
                )
            if seen in (Seen.OVERFLOW, Seen.DROPPED):
                return
            if done is not None:
                self._spawn(self._replay(action, done))
                return
        if self.draining:
            raise ShuttingDown()
        # A new id is validated before it is fingerprinted: an invalid body costs no hash.
        job = route.prepare(action)  # validates: an invalid request is answered now
        fp = fp or frames.fingerprint(action.route, action.body)
        if self._admitted >= self.max_concurrent + self.max_queued:
            raise Overloaded(max(0, self._admitted - self.max_concurrent))
        self._admitted += 1
        self._gauges()
        self.receipts.admit(action.id, fp)
        self._spawn(self._export(action.id, action.route, route, job, fp))

    def _spawn(self, coro: Any) -> None:
        task: asyncio.Task[None] = asyncio.create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    # -- tasks -----------------------------------------------------------------

    async def _export(self, rid: str, name: str, route: Route, job: Job, fp: bytes) -> None:
        start = self.clock()
        deadline = asyncio.timeout(self.export_timeout_s)
        try:
            async with deadline:
                payload = await _outcome(
                    functools.partial(job, fp, self._slot),
                    f"request {rid}: bug in the handler of {name}",
                )
        except asyncio.CancelledError:
            if self.draining:
                self._finish(rid, name, ShuttingDown().as_json(), "shutting_down", start)
            raise
        except TimeoutError:
            if not deadline.expired():
                raise
            payload = ExportTimeout(self.export_timeout_s).as_json()
        outcome = _code(payload)
        done = Done(fp, payload, route.replay, self.clock()) if outcome == "ok" else None
        self._finish(
            rid, name, payload, outcome, start, route.summarize(payload) if done else None, done
        )

    @contextlib.asynccontextmanager
    async def _slot(self) -> AsyncIterator[None]:
        """One of ``max_concurrent`` export slots, held while the job's work runs."""
        async with self._slots:
            self._running += 1
            self._gauges()
            try:
                yield
            finally:
                self._running -= 1
                self._gauges()

    def _finish(
        self,
        rid: str,
        name: str,
        payload: Any,
        outcome: str,
        start: float,
        summary: dict[str, Any] | None = None,
        done: Done | None = None,
    ) -> None:
        self._admitted -= 1
        self._gauges()
        for _ in range(self.receipts.finish(rid, done)):
            self._reply(rid, payload)
        seconds = self.clock() - start
        self._log(rid, name, outcome, seconds, summary)
        label = name if name in self.router else "other"
        telemetry.EXPORT_SECONDS.labels(label, outcome).observe(seconds)

    def _gauges(self) -> None:
        telemetry.EXPORTS_RUNNING.set(self._running)
        telemetry.EXPORTS_QUEUED.set(self._admitted - self._running)

    async def _replay(self, action: frames.Action, done: Done) -> None:
        start = self.clock()
        try:
            payload = await _outcome(
                lambda: done.replay(done.payload),
                f"request {action.id}: bug while answering a repeat",
            )
        except asyncio.CancelledError:
            if self.draining:
                self._reply(action.id, ShuttingDown().as_json())
                self._log(action.id, action.route, "shutting_down", self.clock() - start)
            raise
        outcome = _code(payload)
        self._reply(action.id, payload)
        shown = "ok (repeat)" if outcome == "ok" else outcome
        self._log(action.id, action.route, shown, self.clock() - start)

    # -- helpers -----------------------------------------------------------------

    def _reply(self, rid: str, payload: Any) -> None:
        [text] = frames.encode_reply(rid, payload)  # csvgen's replies are single-part
        # Only the size: a reply's text holds a signed URL, which never goes to a log.
        logger.debug("frame out: %s, %d chars", rid, len(text))
        self.outbox.put(text)

    def _log(
        self,
        rid: str,
        route: str,
        outcome: str,
        seconds: float,
        summary: dict[str, Any] | None = None,
    ) -> None:
        """The one line per request: as text, and as fields for a JSON log (logs.py)."""
        route = cut(route)  # a route is any text the request sent: a log line stays short
        extra = "".join(f" {k}={v}" for k, v in (summary or {}).items())
        fields = {"id": rid, "route": route, "outcome": outcome, "duration_s": round(seconds, 6)}
        telemetry.EXPORTS.labels(route if route in self.router else "other", outcome).inc()
        logger.info(
            "request id=%s route=%s outcome=%s duration=%.3fs%s",
            rid,
            route,
            outcome,
            seconds,
            extra,
            extra={"fields": {**fields, **(summary or {})}},
        )

    # -- shutdown ----------------------------------------------------------------

    async def drain(self, grace_s: float) -> tuple[int, int]:
        """Stop taking work, wait up to ``grace_s`` for running exports, cancel the rest.

        Returns (finished, cancelled) counts.
        """
        self.stop.set()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace_s
        finished = 0
        # Repeats of finished requests are still answered while draining, so tasks
        # can start during the wait: wait again until none is left.
        while pending := set(self.tasks):
            done, still = await asyncio.wait(pending, timeout=max(0.0, deadline - loop.time()))
            finished += len(done)
            if still:
                for task in still:
                    task.cancel(msg="csvgen is shutting down")
                await asyncio.wait(still)
                return finished, len(still)
        return finished, 0


async def _outcome(job: Callable[[], Awaitable[Any]], bug: str) -> Any:
    """The job's payload, or the error reply it ends with (``internal`` for a bug)."""
    try:
        return await job()
    except ReplyError as exc:
        return exc.as_json()
    except Exception:
        logger.exception("%s", bug)
        return InternalError().as_json()


def _code(payload: Any) -> str:
    """``ok`` for a success payload, else the error reply's code."""
    error = payload.get("error") if isinstance(payload, dict) else None
    return str(error["code"]) if isinstance(error, dict) else "ok"
