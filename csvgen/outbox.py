"""Reply texts waiting to be sent, in order; kept across reconnects (protocol.md §8).

The dispatcher puts replies in; the bus sends them while connected and removes each
only after ``send`` returned, so a reply made during an outage goes out after it.
"""

from __future__ import annotations

import asyncio
import collections

__all__ = ["Outbox"]


class Outbox:
    """Reply texts waiting to be sent, in order; kept across reconnects."""

    def __init__(self) -> None:
        self._items: collections.deque[str] = collections.deque()
        self._ready = asyncio.Event()
        self._empty = asyncio.Event()
        self._empty.set()

    def put(self, text: str) -> None:
        self._items.append(text)
        self._ready.set()
        self._empty.clear()

    async def peek(self) -> str:
        """Wait for the oldest reply without removing it (it is removed once sent)."""
        while not self._items:
            self._ready.clear()
            await self._ready.wait()
        return self._items[0]

    def pop(self) -> None:
        self._items.popleft()
        if not self._items:
            self._empty.set()

    async def wait_empty(self) -> None:
        await self._empty.wait()

    def __len__(self) -> int:
        return len(self._items)
