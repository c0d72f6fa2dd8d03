"""The Metrics API client against a fake API on loopback: demultiplexing, bad frames, budgets."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable

import orjson
import pytest

from csvgen.config import Settings
from csvgen.errors import TooLarge, UpstreamError
from csvgen.metrics import AnswerBudget, MetricsClient
from tests.fakes import FakeMetrics, RawFrames, Scripted


def settings(metrics: FakeMetrics) -> Settings:
    return Settings(bus_url=metrics.uri, reconnect_max_delay_s=0.02)


async def test_answers_are_matched_to_their_requests(metrics: FakeMetrics) -> None:
    """Two requests at once on one socket, their parts interleaved: each gets its own answer."""
    metrics.interleave = 2
    metrics.answers += [
        ({"route": "a"}, RawFrames({"segments": [{"x": 1}] * 50}, 4)),
        ({"route": "b"}, RawFrames({"segments": [{"y": 2}] * 50}, 3, first=1)),
    ]
    async with MetricsClient(settings(metrics)) as client:
        a, b = await asyncio.gather(
            client.request("metric", "a", {}), client.request("metric", "b", {})
        )
    assert a == {"segments": [{"x": 1}] * 50} and b == {"segments": [{"y": 2}] * 50}
    assert len(metrics.connections) == 1


async def test_a_broken_frame_fails_its_request_only(metrics: FakeMetrics) -> None:
    """Issue 8 #5: a part number of 5,000 digits is csvgen's own error; the link stays usable."""
    metrics.answers += [
        ({"route": "bad"}, Scripted("{rid}|0|" + "9" * 5000 + "|{")),
        ({"route": "good"}, {"ok": True}),
    ]
    async with MetricsClient(settings(metrics)) as client:
        with pytest.raises(UpstreamError) as info:
            await client.request_raw("metric", "bad", {})
        assert info.value.message.startswith("broken answer: part numbers must be")
        assert await client.request("metric", "good", {}) == {"ok": True}
    assert len(metrics.connections) == 1


async def test_an_error_answer_is_an_upstream_error(metrics: FakeMetrics) -> None:
    metrics.answers.append(({"route": "x"}, {"error": {"code": "bad_dates", "message": "no"}}))
    async with MetricsClient(settings(metrics)) as client:
        with pytest.raises(UpstreamError) as info:
            await client.request("metric", "x", {})
    assert info.value.message == "bad_dates: no"


async def test_the_answer_budget_is_counted_frame_by_frame(metrics: FakeMetrics) -> None:
    answer = {"segments": [{"x": n} for n in range(200)]}
    metrics.answers.append(({"route": "big"}, RawFrames(answer, 10)))
    budget = AnswerBudget(len(orjson.dumps(answer)) // 2)
    async with MetricsClient(settings(metrics)) as client:
        with pytest.raises(TooLarge):
            await client.request_raw("metric", "big", {}, budget)
        assert budget.used > budget.limit
        assert b"".join(await client.request_raw("metric", "big", {}, AnswerBudget(10**6)))


class Gate:
    """A sink that is full until opened: records what it was fed, and when."""

    def __init__(self, log: list[str], name: str) -> None:
        self.log, self.name = log, name
        self.open = asyncio.Event()

    def feed(self, part: bytes) -> None:
        self.log.append(self.name)

    def restart(self) -> None:
        pass

    def room(self) -> Awaitable[object] | None:
        return None if self.open.is_set() else self.open.wait()


async def test_a_full_sink_stops_the_link_until_it_has_room(metrics: FakeMetrics) -> None:
    """Backpressure: no frame is read past a full sink; reading goes on once it drains."""
    metrics.interleave = 2
    metrics.answers += [
        ({"route": "a"}, RawFrames({"segments": [{"x": 1}] * 50}, 3)),
        ({"route": "b"}, RawFrames({"segments": [{"y": 2}] * 50}, 3)),
    ]
    log: list[str] = []
    a, b = Gate(log, "a"), Gate(log, "b")
    b.open.set()
    async with MetricsClient(settings(metrics)) as client:
        first = asyncio.create_task(client.request_into("metric", "a", {}, a))
        second = asyncio.create_task(client.request_into("metric", "b", {}, b))
        assert await metrics.answered.get() == "interleaved"  # a0 b0 a1 b1 a2 b2 all sent
        # A ping after them: once its pong is back, the client has taken in every frame.
        await (await metrics.connections[0].ping())
        assert log == ["a"]  # a is full after its first part: b's parts wait behind it
        a.open.set()
        await asyncio.gather(first, second)
    assert log == ["a", "b", "a", "b", "a", "b"]


async def test_a_request_that_ends_while_its_sink_is_full_frees_the_link(
    metrics: FakeMetrics,
) -> None:
    """A cancelled export never leaves the shared link waiting on its reader."""
    metrics.answers += [
        ({"route": "a"}, RawFrames({"segments": [{"x": 1}] * 50}, 3)),
        ({"route": "b"}, {"ok": True}),
    ]
    log: list[str] = []
    async with MetricsClient(settings(metrics)) as client:
        stuck = asyncio.create_task(client.request_into("metric", "a", {}, Gate(log, "a")))
        await metrics.answered.get()  # every part of a sent: the link waits on a's sink
        await (await metrics.connections[0].ping())
        stuck.cancel()
        assert await client.request("metric", "b", {}) == {"ok": True}
    assert log == ["a"]
