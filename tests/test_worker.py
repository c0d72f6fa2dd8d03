"""The worker's lifecycle helpers in this process (the real signals are in test_process.py)."""

from __future__ import annotations

import asyncio
import os
import signal
from types import FrameType

from csvgen.worker import signal_handlers


async def test_signal_handlers_set_stop_and_restore_the_previous_handlers() -> None:
    seen: list[int] = []

    def mine(signum: int, frame: FrameType | None) -> None:
        seen.append(signum)

    before = {sig: signal.signal(sig, mine) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        stop = asyncio.Event()
        async with signal_handlers(stop):
            os.kill(os.getpid(), signal.SIGTERM)
            async with asyncio.timeout(5):
                await stop.wait()
        assert signal.getsignal(signal.SIGTERM) is mine
        assert signal.getsignal(signal.SIGINT) is mine
        assert seen == []  # the worker's handler took SIGTERM, not ours
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)
