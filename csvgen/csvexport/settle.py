"""Writes to the bucket that a cancellation must not cut short (no I/O of its own).

A call to the store runs in a thread: cancelling the coroutine that awaits it does not
stop the write, which may still land. Where what happens next depends on whether it
landed (a receipt's ETag, an export to undo), the write is awaited to its end first.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable
from typing import TypeVar

__all__ = ["whole"]

T = TypeVar("T")


async def whole(aw: Awaitable[T]) -> T:
    """Await ``aw`` to its end even if this task is cancelled meanwhile (the bucket's
    state is settled first); then the cancellation goes on."""
    task = asyncio.ensure_future(aw)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        while not task.done():
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait({task})
        raise
