"""The bus connection: connect, read frames, send replies, reconnect.

Theory of operation
-------------------

States: *connecting* → *open* → (*connecting* again after any loss) → *closed*.

* Connecting uses websockets' ``async for ws in connect(...)`` loop with a
  capped, jittered exponential backoff (``reconnect_delays``) and
  :func:`classify` deciding retry or give up: a rejected token (401/403) ends
  the worker, anything else is retried.
* While open, one reader task feeds every text frame to the dispatcher, and
  one sender task drains the :class:`~csvgen.dispatch.Outbox`. A reply is
  removed from the outbox only after ``send`` returns, so a reply that meets a
  dead connection stays queued and goes out on the next one.
* When the worker is done (``done`` is set) the bus waits a short while for the
  outbox to empty, closes with 1001 "going away" and returns. If ``done`` is set
  while disconnected, the connect loop is cancelled; unsent replies are logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from . import telemetry
from .config import Settings, redact_url
from .dispatch import Dispatcher
from .links import connect_options, with_token

__all__ = ["Bus"]

logger = logging.getLogger(__name__)

FLUSH_TIMEOUT_S = 5.0


class Bus:
    def __init__(self, settings: Settings, dispatcher: Dispatcher) -> None:
        self.settings = settings
        self.dispatcher = dispatcher
        self.is_connected = False

    async def run(self, done: asyncio.Event) -> None:
        """Serve until ``done`` is set. Raises on a fatal connect error (rejected token)."""
        loop = asyncio.create_task(self._connect_loop(done))
        waiter = asyncio.create_task(done.wait())
        try:
            await asyncio.wait({loop, waiter}, return_when=asyncio.FIRST_COMPLETED)
            if not loop.done() and not self.is_connected:
                loop.cancel()
                left = len(self.dispatcher.outbox)
                if left:
                    logger.warning("bus is down at shutdown: %d replies not sent", left)
            with contextlib.suppress(asyncio.CancelledError):
                await loop
        finally:
            waiter.cancel()
            loop.cancel()

    async def _connect_loop(self, done: asyncio.Event) -> None:
        url = self.settings.bus_url
        shown = redact_url(url)
        options = connect_options(self.settings, url)
        connections = 0
        async for ws in connect(with_token(url, self.settings.bus_token), **options):
            logger.info("connected to the bus at %s", shown)
            connections += 1
            if connections > 1:
                telemetry.BUS_RECONNECTS.inc()
            self.is_connected = True
            try:
                if await self._serve(ws, done):
                    logger.info("closed the bus connection (1001 going away)")
                    return
            finally:
                self.is_connected = False
            logger.warning("lost the bus connection (%s); reconnecting", _close_reason(ws))

    async def _serve(self, ws: ClientConnection, done: asyncio.Event) -> bool:
        """Run one connection. True when closed on purpose, False when it was lost."""
        reader = asyncio.create_task(self._read(ws))
        sender = asyncio.create_task(self._send(ws))
        finished = asyncio.create_task(done.wait())
        try:
            await asyncio.wait({reader, finished}, return_when=asyncio.FIRST_COMPLETED)
            if not finished.done():
                return False
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(FLUSH_TIMEOUT_S):
                    await self.dispatcher.outbox.wait_empty()
            await ws.close(1001, "going away")
            return True
        finally:
            for task in (reader, sender, finished):
                task.cancel()
            await asyncio.gather(reader, sender, finished, return_exceptions=True)

    async def _read(self, ws: ClientConnection) -> None:
        with contextlib.suppress(ConnectionClosed):
            while True:
                # Bytes, not text: decoding a 1 MiB frame to str only for the codec to
                # encode it back cost the loop twice; orjson checks the UTF-8 itself.
                self.dispatcher.receive(await ws.recv(decode=False))

    async def _send(self, ws: ClientConnection) -> None:
        outbox = self.dispatcher.outbox
        with contextlib.suppress(ConnectionClosed):
            while True:
                text = await outbox.peek()
                await ws.send(text)
                outbox.pop()


def _close_reason(ws: ClientConnection) -> str:
    code = ws.close_code
    return "no close frame" if code is None else f"code {code}"
