"""The worker's lifecycle: startup → serve the bus until stopped → drain → exit.

Signals (uvicorn style, with an Event as arq does): the first SIGTERM or SIGINT
sets ``stop``; the worker then answers new requests ``shutting_down``, gives
running exports ``shutdown_grace_s`` to finish, answers the rest
``shutting_down``, closes the bus with 1001 and returns 0. A second SIGINT or
SIGTERM forces an exit with status 1 at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager

from .bus import Bus
from .config import Settings
from .dispatch import Dispatcher
from .health import HealthServer
from .outbox import Outbox
from .routes import Router

__all__ = ["main", "serve"]

logger = logging.getLogger(__name__)

#: Builds the routes and their clients at startup, closes them at exit.
RouterFactory = Callable[[Settings], AbstractAsyncContextManager[Router]]


async def serve(settings: Settings, router: Router, stop: asyncio.Event) -> None:
    """Serve the bus with ``router`` until ``stop`` is set, then drain and close."""
    dispatcher = Dispatcher(
        router,
        Outbox(),
        max_concurrent=settings.max_concurrent_exports,
        max_queued=settings.max_queued_exports,
        dedupe_ttl_s=settings.dedupe_ttl_s,
        export_timeout_s=settings.export_timeout_s,
        max_body_bytes=settings.max_body_bytes,
        max_depth=settings.max_body_depth,
        stop=stop,
    )
    bus = Bus(settings, dispatcher)
    health = None
    if settings.http_port is not None:

        def not_ready() -> str | None:
            if dispatcher.draining:
                return "draining"
            return None if bus.is_connected else "bus disconnected"

        health = HealthServer(settings.http_host, settings.http_port, not_ready)
        port = await health.start()
        logger.info(
            "serving /healthz, /readyz and /metrics on http://%s:%d", settings.http_host, port
        )
    done = asyncio.Event()
    bus_task = asyncio.create_task(bus.run(done))
    stop_task = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait({bus_task, stop_task}, return_when=asyncio.FIRST_COMPLETED)
        if bus_task.done():
            bus_task.result()  # a fatal connect error propagates from here
            return
        logger.info(
            "shutting down: %d exports running, grace %gs",
            len(dispatcher.tasks),
            settings.shutdown_grace_s,
        )
        finished, cancelled = await dispatcher.drain(settings.shutdown_grace_s)
        logger.info("drained: %d finished, %d cancelled", finished, cancelled)
        done.set()
        await bus_task
    finally:
        stop_task.cancel()
        bus_task.cancel()
        if health is not None:
            await health.stop()


@contextlib.asynccontextmanager
async def signal_handlers(stop: asyncio.Event) -> AsyncIterator[None]:
    """Install SIGTERM/SIGINT handlers for the block; restore the previous ones after."""
    loop = asyncio.get_running_loop()
    main_task = asyncio.current_task()

    def on_signal(sig: signal.Signals) -> None:
        if stop.is_set():
            logger.warning("second %s: forcing exit", sig.name)
            if main_task is not None:
                main_task.cancel(msg="forced exit")
            return
        logger.info("received %s: draining", sig.name)
        stop.set()

    sigs = (signal.SIGTERM, signal.SIGINT)
    previous = {sig: signal.getsignal(sig) for sig in sigs}
    for sig in sigs:
        loop.add_signal_handler(sig, on_signal, sig)
    try:
        yield
    finally:
        for sig in sigs:
            loop.remove_signal_handler(sig)  # sets the default: put back what was there
            signal.signal(sig, previous[sig])


async def main(settings: Settings, router_factory: RouterFactory) -> int:
    """Run the worker in this process; returns the exit status."""
    stop = asyncio.Event()
    async with signal_handlers(stop), router_factory(settings) as router:
        try:
            await serve(settings, router, stop)
        except asyncio.CancelledError:
            return 1
    return 0
