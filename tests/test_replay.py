"""Captured bus frames replayed through a live worker: inbound text → expected reply text.

Each ``tests/data/frames/NNN-name.in.txt`` is sent as is; ``.out.txt`` holds the
reply frames expected for it, one per line (empty: no reply at all). A sentinel
request follows every frame, so "no reply" is shown by the sentinel's reply
coming first.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from csvgen.frames import Action, encode_action
from csvgen.routes import Router
from tests.conftest import make_settings, running_worker
from tests.fakes import FakeBus

FRAMES = Path(__file__).parent / "data" / "frames"
BUS_CASES = sorted(p.name.removesuffix(".in.txt") for p in FRAMES.glob("0*.in.txt"))


async def _echo(action: Action) -> object:
    return {"body": [action.body]}


@pytest.mark.parametrize("name", BUS_CASES)
async def test_replay_captured_frame(bus: FakeBus, name: str) -> None:
    """The worker answers a captured frame with exactly the captured reply frames."""
    router = Router()
    router.add("external-service/sentinel", _echo)
    inbound = (FRAMES / f"{name}.in.txt").read_text()
    expected = (FRAMES / f"{name}.out.txt").read_text().splitlines()
    sentinel = encode_action(Action("sentinel", "external-service/sentinel", {}))
    async with running_worker(make_settings(bus), router):
        await bus.send(inbound)
        await bus.send(sentinel)
        while (await bus.reply())[0] != "sentinel":
            pass
    assert bus.raw == [*expected, 'sentinel|0|0|{"body":[{}]}']
