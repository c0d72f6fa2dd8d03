"""The outbox alone: replies kept in order until sent, whatever the link does meanwhile."""

from __future__ import annotations

import asyncio

from csvgen.outbox import Outbox


async def test_replies_stay_until_popped_and_come_out_in_order() -> None:
    outbox = Outbox()
    outbox.put("a")
    outbox.put("b")
    assert await outbox.peek() == "a"
    assert await outbox.peek() == "a"  # peeking sends nothing: a dead link loses nothing
    outbox.pop()
    assert await outbox.peek() == "b"
    outbox.pop()
    assert len(outbox) == 0
    async with asyncio.timeout(1):
        await outbox.wait_empty()
