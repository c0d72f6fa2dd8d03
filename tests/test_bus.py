"""The worker against a real WebSocket bus on loopback (tests.fakes.FakeBus)."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import orjson
import pytest
from websockets.asyncio.server import serve
from websockets.exceptions import InvalidStatus
from websockets.http11 import Response

from csvgen.frames import Action, encode_action
from csvgen.links import connect_options
from csvgen.routes import Router
from csvgen.worker import serve as serve_worker
from tests.conftest import make_settings, running_worker
from tests.fakes import FakeBus


class Routes:
    """Test routes with witnesses: what ran, and gates the test opens."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.replays: list[Any] = []
        self.gate = asyncio.Event()
        self.started = asyncio.Queue[str]()
        self.replay_gate = asyncio.Event()
        self.replay_gate.set()
        self.replaying = asyncio.Queue[Any]()
        self.router = Router()
        self.router.add("external-service/echo", self.echo, replay=self.replay)
        self.router.add("external-service/slow", self.slow, replay=self.replay)
        self.router.add("external-service/boom", self.boom)

    async def echo(self, action: Action) -> Any:
        self.calls.append(action.id)
        return {"body": [action.body]}

    async def slow(self, action: Action) -> Any:
        self.calls.append(action.id)
        await self.started.put(action.id)
        await self.gate.wait()
        return {"body": [{"done": action.id}]}

    async def replay(self, payload: Any) -> Any:
        self.replays.append(payload)
        await self.replaying.put(payload)
        await self.replay_gate.wait()
        return {"body": [{**payload["body"][0], "repeat": True}]}

    async def boom(self, action: Action) -> Any:
        raise RuntimeError("handler bug")


def frame(rid: str, route: str = "echo", body: dict[str, Any] | None = None) -> str:
    return encode_action(Action(rid, f"external-service/{route}", body or {"n": 1}))


async def test_request_is_answered_single_part(bus: FakeBus) -> None:
    """A request to a registered route is answered as one id|0|0|json frame."""
    routes = Routes()
    async with running_worker(make_settings(bus), routes.router):
        await bus.send(frame("r1", body={"x": "a|b"}))
        assert await bus.reply() == ("r1", {"body": [{"x": "a|b"}]})
    assert bus.raw == ['r1|0|0|{"body":[{"x":"a|b"}]}']


async def test_token_goes_in_the_query(bus: FakeBus) -> None:
    """The bus token is sent as ?token= at connect time."""
    async with running_worker(make_settings(bus, bus_token="s3cr3t"), Routes().router):
        await bus.wait_connections(1)
    assert bus.tokens == ["s3cr3t"]


async def test_loopback_link_offers_no_compression(bus: FakeBus) -> None:
    """On a loopback bus, permessage-deflate is not offered (it only costs CPU there)."""
    async with running_worker(make_settings(bus), Routes().router):
        await bus.wait_connections(1)
    assert bus.extensions == [None]


def test_remote_links_offer_compression() -> None:
    assert (
        connect_options(make_settings(FakeBus()), "wss://ws.auravision.ai")["compression"]
        == "deflate"
    )


async def test_unknown_route(bus: FakeBus) -> None:
    """An external-service route nobody serves gets unknown_route 404."""
    async with running_worker(make_settings(bus), Routes().router):
        await bus.send(frame("r1", route="csv-exprot"))
        rid, payload = await bus.reply()
    assert rid == "r1"
    assert payload["error"]["code"] == "unknown_route"
    assert payload["error"]["status"] == 404
    assert payload["error"]["message"] == "unknown route: 'external-service/csv-exprot'"


@pytest.mark.parametrize(
    "garbage",
    [
        "not json at all",
        "[1, 2, 3]",
        '{"action": "external-service", "data": {"route": "external-service/echo"}}',
        '{"action": "external-service", "data": {"id": 42, "route": "external-service/echo"}}',
        '{"action": "external-service", "data": {"id": "a|b", "route": "external-service/echo"}}',
        '{"action": "metric", "data": {"id": "m1", "route": "entries"}}',
        "x" * 5_000_000,
        '{"action": "external-service", "data": {"pad": "' + "y" * 5_000_000 + '"}}',
        '{"action": "external-service", "data": {"id": ' + "[" * 1000 + "]" * 1000 + "}}",
    ],
    ids=[
        "text",
        "array",
        "no-id",
        "int-id",
        "pipe-id",
        "other-action",
        "huge-text",
        "huge-json",
        "deep-id",  # its repr would pass Python's recursion limit
    ],
)
async def test_garbage_is_dropped_and_the_worker_goes_on(bus: FakeBus, garbage: str) -> None:
    """Frames with no usable id get no reply; the next valid request is answered."""
    async with running_worker(make_settings(bus), Routes().router):
        await bus.send(garbage)
        await bus.send(frame("after"))
        assert await bus.reply() == ("after", {"body": [{"n": 1}]})
    assert bus.connections == 1  # the huge frames did not cost the connection


async def test_bad_envelope_with_usable_id_gets_invalid_request(bus: FakeBus) -> None:
    """A usable id with a wrong envelope gets invalid_request with JSON paths."""
    text = '{"action": "external-service", "data": {"id": "r9", "route": 7, "body": []}}'
    async with running_worker(make_settings(bus), Routes().router):
        await bus.send(text)
        rid, payload = await bus.reply()
    assert rid == "r9"
    assert payload["error"]["code"] == "invalid_request"
    assert payload["error"]["details"] == [
        {"path": "route", "message": "must be a non-empty string"},
        {"path": "body", "message": "must be an object, got an array"},
    ]


async def test_handler_exception_is_internal_and_worker_goes_on(
    bus: FakeBus, caplog: pytest.LogCaptureFixture
) -> None:
    """A handler that raises gives `internal` (no internals leaked) and a logged traceback."""
    async with running_worker(make_settings(bus), Routes().router):
        await bus.send(frame("b1", route="boom"))
        rid, payload = await bus.reply()
        await bus.send(frame("e1"))
        assert (await bus.reply())[0] == "e1"
    assert rid == "b1"
    assert payload["error"]["code"] == "internal"
    assert payload["error"]["status"] == 500
    assert "handler bug" not in orjson.dumps(payload).decode()
    assert "RuntimeError: handler bug" in caplog.text


async def test_reply_made_while_disconnected_is_sent_after_reconnect(bus: FakeBus) -> None:
    """The bus drops the link while a slow export runs; its reply arrives on the next link."""
    routes = Routes()
    async with running_worker(make_settings(bus), routes.router):
        await bus.send(frame("s1", route="slow"))
        assert await routes.started.get() == "s1"
        bus.drop()
        await bus.wait_closed(1)
        routes.gate.set()
        await bus.wait_connections(2)
        assert await bus.reply() == ("s1", {"body": [{"done": "s1"}]})
    assert bus.connections == 2


async def test_queue_full_is_overloaded(bus: FakeBus) -> None:
    """Beyond running + queued capacity, a request is answered overloaded at once."""
    routes = Routes()
    settings = make_settings(bus, max_concurrent_exports=1, max_queued_exports=1)
    async with running_worker(settings, routes.router):
        await bus.send(frame("s1", route="slow"))
        await bus.send(frame("s2", route="slow"))
        await bus.send(frame("s3", route="slow"))
        rid, payload = await bus.reply()
        assert (rid, payload["error"]["code"], payload["error"]["status"]) == (
            "s3",
            "overloaded",
            503,
        )
        assert await routes.started.get() == "s1"
        assert routes.calls == ["s1"]  # s2 waits for the slot
        routes.gate.set()
        got = {(await bus.reply())[0], (await bus.reply())[0]}
    assert got == {"s1", "s2"}


async def test_duplicate_in_flight_starts_nothing_and_each_receipt_is_answered(
    bus: FakeBus,
) -> None:
    """The same id twice while running: one export, two identical replies."""
    routes = Routes()
    async with running_worker(make_settings(bus), routes.router):
        await bus.send(frame("d1", route="slow"))
        await routes.started.get()
        await bus.send(frame("d1", route="slow"))
        await bus.send(frame("probe"))  # the duplicate was received before this is answered
        assert (await bus.reply())[0] == "probe"
        routes.gate.set()
        first, second = await bus.reply(), await bus.reply()
    assert first == second == ("d1", {"body": [{"done": "d1"}]})
    assert routes.calls == ["d1", "probe"]


async def test_completed_duplicate_is_replayed_through_the_hook(bus: FakeBus) -> None:
    """A finished id is answered again at once through the route's replay hook."""
    routes = Routes()
    routes.gate.set()
    async with running_worker(make_settings(bus), routes.router):
        await bus.send(frame("d2", route="slow"))
        assert await bus.reply() == ("d2", {"body": [{"done": "d2"}]})
        await bus.send(frame("d2", route="slow"))
        assert await bus.reply() == ("d2", {"body": [{"done": "d2", "repeat": True}]})
    assert routes.calls == ["d2"]
    assert routes.replays == [{"body": [{"done": "d2"}]}]


async def test_same_id_with_another_body_is_invalid(bus: FakeBus) -> None:
    """Reusing an id with a different body is invalid_request naming the id."""
    routes = Routes()
    async with running_worker(make_settings(bus), routes.router):
        await bus.send(frame("d3", body={"n": 1}))
        await bus.reply()
        await bus.send(frame("d3", body={"n": 2}))
        rid, payload = await bus.reply()
    assert (rid, payload["error"]["code"]) == ("d3", "invalid_request")
    assert payload["error"]["details"] == [
        {"path": "id", "message": "request id 'd3' was already used with a different body"}
    ]
    assert routes.calls == ["d3"]


async def test_expired_dedupe_runs_again(bus: FakeBus) -> None:
    """After the dedupe window an id is a new request."""
    routes = Routes()
    async with running_worker(make_settings(bus, dedupe_ttl_s=1e-9), routes.router):
        for _ in range(2):
            await bus.send(frame("d4"))
            await bus.reply()
    assert routes.calls == ["d4", "d4"]


async def test_drain_finishes_running_refuses_new_and_closes_1001(bus: FakeBus) -> None:
    """On stop: new work gets shutting_down, running work finishes, close code 1001."""
    routes = Routes()
    async with running_worker(make_settings(bus), routes.router) as stop:
        await bus.send(frame("s1", route="slow"))
        await routes.started.get()
        stop.set()
        await bus.send(frame("late"))
        rid, payload = await bus.reply()
        assert (rid, payload["error"]["code"]) == ("late", "shutting_down")
        routes.gate.set()
        assert await bus.reply() == ("s1", {"body": [{"done": "s1"}]})
    await bus.wait_closed(1)
    assert bus.close_codes == [1001]


async def test_drain_answers_what_outlives_the_grace(bus: FakeBus) -> None:
    """An export still running when the grace period ends is answered shutting_down."""
    routes = Routes()
    async with running_worker(make_settings(bus, shutdown_grace_s=0.05), routes.router) as stop:
        await bus.send(frame("s1", route="slow"))
        await routes.started.get()
        stop.set()
        rid, payload = await bus.reply()
    assert (rid, payload["error"]["code"], payload["error"]["status"]) == (
        "s1",
        "shutting_down",
        503,
    )
    await bus.wait_closed(1)
    assert bus.close_codes == [1001]


async def test_rejected_token_is_fatal() -> None:
    """A bus that answers 401 ends the worker instead of retrying forever."""

    def reject(connection: Any, request: Any) -> Response:
        return connection.respond(401, "bad token\n")

    async with serve(lambda ws: ws.wait_closed(), "127.0.0.1", 0, process_request=reject) as server:
        port = server.sockets[0].getsockname()[1]
        settings = make_settings(FakeBus()).replace(bus_url=f"ws://127.0.0.1:{port}")
        with pytest.raises(InvalidStatus):
            await serve_worker(settings, Routes().router, asyncio.Event())


async def test_frame_over_the_limit_costs_the_link_not_the_worker(bus: FakeBus) -> None:
    """A frame above max_frame_bytes closes the link (1009); the worker reconnects and goes on."""
    async with running_worker(make_settings(bus, max_frame_bytes=2048), Routes().router):
        await bus.send(frame("big", body={"pad": "x" * 10_000}))
        await bus.wait_closed(1)
        await bus.wait_connections(2)
        await bus.send(frame("after"))
        assert await bus.reply() == ("after", {"body": [{"n": 1}]})
    assert bus.close_codes[0] == 1009


async def test_repeat_received_while_draining_is_answered(bus: FakeBus) -> None:
    """A repeat of a finished id that arrives during the drain still gets its answer."""
    routes = Routes()
    async with running_worker(make_settings(bus), routes.router) as stop:
        await bus.send(frame("d1"))
        assert await bus.reply() == ("d1", {"body": [{"n": 1}]})
        routes.replay_gate.clear()
        await bus.send(frame("s1", route="slow"))
        await routes.started.get()
        stop.set()
        await bus.send(frame("d1"))
        await routes.replaying.get()
        routes.gate.set()
        assert await bus.reply() == ("s1", {"body": [{"done": "s1"}]})
        routes.replay_gate.set()
        assert await bus.reply() == ("d1", {"body": [{"n": 1, "repeat": True}]})


async def test_repeat_outliving_the_grace_is_answered_shutting_down(bus: FakeBus) -> None:
    """A repeat still being answered when the grace ends gets shutting_down, not silence."""
    routes = Routes()
    async with running_worker(make_settings(bus, shutdown_grace_s=0.05), routes.router) as stop:
        await bus.send(frame("d1"))
        await bus.reply()
        routes.replay_gate.clear()
        await bus.send(frame("d1"))
        await routes.replaying.get()
        stop.set()
        rid, payload = await bus.reply()
    assert (rid, payload["error"]["code"]) == ("d1", "shutting_down")


async def test_refused_handshakes_are_retried_with_backoff(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A bus answering 503 twice is retried (with a logged delay) until it lets the worker in."""
    caplog.set_level(logging.INFO, logger="csvgen.websockets")
    attempts: list[int] = []

    def flaky(connection: Any, request: Any) -> Response | None:
        attempts.append(1)
        return connection.respond(503, "busy\n") if len(attempts) <= 2 else None

    routes = Routes()
    bus = FakeBus()
    bus.process_request = flaky
    await bus.start()
    try:
        async with running_worker(make_settings(bus), routes.router):
            await bus.send(frame("after-503"))
            assert (await bus.reply())[0] == "after-503"
    finally:
        await bus.stop()
    assert len(attempts) == 3
    assert caplog.text.count("connect failed; reconnecting in") == 2


async def test_a_huge_route_name_is_answered_and_logged_short(
    bus: FakeBus, caplog: pytest.LogCaptureFixture
) -> None:
    """A 500 kB route: unknown_route with the name cut, and a log line of normal size."""
    caplog.set_level(logging.INFO, logger="csvgen")
    route = "external-service/" + "x" * 500_000
    async with running_worker(make_settings(bus), Routes().router):
        await bus.send(encode_action(Action("long", route, {})))
        rid, payload = await bus.reply()
    assert rid == "long" and payload["error"]["code"] == "unknown_route"
    assert len(payload["error"]["message"]) < 250
    assert max(len(r.getMessage()) for r in caplog.records) < 1000
