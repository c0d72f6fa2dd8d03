"""The dispatcher without sockets: frames in through receive(), replies out of the Outbox."""

from __future__ import annotations

import asyncio
import functools
from typing import Any

import orjson

from csvgen.dispatch import Dispatcher
from csvgen.errors import Detail, InvalidRequest
from csvgen.frames import Action, encode_action
from csvgen.outbox import Outbox
from csvgen.routes import Job, Router, Slot


class Route:
    """A route that validates on receipt (``ok`` must be true) and waits for a gate to run."""

    def __init__(self) -> None:
        self.prepared: list[str] = []
        self.started = asyncio.Queue[str]()
        self.gate = asyncio.Event()

    def prepare(self, action: Action) -> Job:
        self.prepared.append(action.id)
        if action.body.get("ok") is not True:
            raise InvalidRequest([Detail("ok", "must be true")])
        return functools.partial(self.run, action.id, action.body["n"])

    async def run(self, rid: str, n: int, fingerprint: bytes, slot: Slot) -> Any:
        async with slot():
            await self.started.put(rid)
            await self.gate.wait()
            return {"body": [{"n": n}]}


def dispatcher(route: Route, **limits: Any) -> Dispatcher:
    router = Router()
    router.add("external-service/x", prepare=route.prepare)
    settings = {"max_concurrent": 1, "max_queued": 1, "dedupe_ttl_s": 600.0, **limits}
    return Dispatcher(router, Outbox(), **settings)


def frame(rid: str, body: dict[str, Any]) -> str:
    return encode_action(Action(rid, "external-service/x", body))


async def reply(outbox: Outbox) -> tuple[str, Any]:
    async with asyncio.timeout(5):
        text = await outbox.peek()
    outbox.pop()
    rid, _, _, payload = text.split("|", 3)
    return rid, orjson.loads(payload)


async def test_invalid_request_is_answered_on_receipt_while_the_slot_is_busy() -> None:
    route = Route()
    d = dispatcher(route)
    d.receive(frame("busy", {"ok": True, "n": 1}))
    assert await route.started.get() == "busy"  # it holds the only slot
    d.receive(frame("queued", {"ok": True, "n": 2}))
    d.receive(frame("bad", {"ok": False}))
    assert len(d.outbox) == 1  # answered inside receive(), before any await
    rid, payload = await reply(d.outbox)
    assert (rid, payload["error"]["code"]) == ("bad", "invalid_request")
    assert route.prepared == ["busy", "queued", "bad"]  # all validated on receipt
    assert route.started.empty()  # the queued one waits, holding its prepared job
    route.gate.set()
    assert {(await reply(d.outbox))[0], (await reply(d.outbox))[0]} == {"busy", "queued"}


async def test_beyond_running_and_queued_is_overloaded() -> None:
    route = Route()
    d = dispatcher(route)
    for n in range(3):
        d.receive(frame(f"r{n}", {"ok": True, "n": n}))
    rid, payload = await reply(d.outbox)
    assert (rid, payload["error"]["code"]) == ("r2", "overloaded")
    route.gate.set()


async def test_an_export_past_its_deadline_is_export_timeout_and_frees_its_slot() -> None:
    route = Route()
    d = dispatcher(route, export_timeout_s=0.05)
    d.receive(frame("late", {"ok": True, "n": 1}))
    rid, payload = await reply(d.outbox)
    assert (rid, payload["error"]["code"], payload["error"]["status"]) == (
        "late",
        "export_timeout",
        504,
    )
    route.gate.set()
    d.receive(frame("next", {"ok": True, "n": 2}))
    assert await reply(d.outbox) == ("next", {"body": [{"n": 2}]})


async def test_receipts_of_one_id_get_at_most_sixteen_replies() -> None:
    route = Route()
    d = dispatcher(route)
    for _ in range(40):
        d.receive(frame("same", {"ok": True, "n": 1}))
    assert route.prepared == ["same"]  # one export, validated once
    route.gate.set()
    replies = [await reply(d.outbox) for _ in range(16)]
    assert replies == [("same", {"body": [{"n": 1}]})] * 16
    await asyncio.gather(*d.tasks)
    assert len(d.outbox) == 0
