from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest

from csvgen.config import Settings
from csvgen.routes import Router
from csvgen.worker import serve
from tests.fakes import FakeBus, running_bus

#: Reconnect delays in tests: milliseconds, not seconds (websockets' MS idea).
FAST = {"reconnect_max_delay_s": 0.02, "shutdown_grace_s": 5.0}


def make_settings(bus: FakeBus, **changes: Any) -> Settings:
    return Settings(bus_url=bus.uri, **{**FAST, **changes})


@contextlib.asynccontextmanager
async def running_worker(settings: Settings, router: Router) -> AsyncIterator[asyncio.Event]:
    """Run the worker in this event loop; yields its stop event and stops it after."""
    stop = asyncio.Event()
    task = asyncio.create_task(serve(settings, router, stop))
    try:
        yield stop
    finally:
        stop.set()
        async with asyncio.timeout(15):
            await task


@pytest.fixture
async def bus() -> AsyncIterator[FakeBus]:
    async with running_bus() as fake:
        yield fake
