"""The worker as a real process: `python -m csvgen run`, real signals, exit statuses."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from typing import Any

import pytest

from tests.conftest import AWS_ENV, S3Server
from tests.fakes import FakeBus, FakeMetrics
from tests.test_export_errors import entries_answer, request

TOKEN = "tok-do-not-log-4711"


class Worker:
    """A `python -m csvgen run` child; its stderr is read line by line as it comes."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.lines: list[str] = []
        self._new_line = asyncio.Condition()

    async def start(self) -> Worker:
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "csvgen",
            "run",
            env=self.env,
            stderr=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.DEVNULL,
        )
        self._reader = asyncio.create_task(self._read())
        return self

    async def _read(self) -> None:
        assert self.proc.stderr is not None
        async for raw in self.proc.stderr:
            async with self._new_line:
                self.lines.append(raw.decode().rstrip("\n"))
                self._new_line.notify_all()

    async def wait_for_line(self, fragment: str) -> None:
        async with asyncio.timeout(15), self._new_line:
            await self._new_line.wait_for(lambda: any(fragment in line for line in self.lines))

    async def wait(self) -> int:
        async with asyncio.timeout(30):
            status = await self.proc.wait()
            await self._reader
        return status

    def kill(self) -> None:
        if self.proc.returncode is None:
            self.proc.kill()


def worker_env(**extra: str) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CSVGEN_", "AWS_"))}
    return {**env, **AWS_ENV, **extra}


async def test_sigterm_drains_then_exits_zero(
    bus: FakeBus, metrics: FakeMetrics, s3: S3Server
) -> None:
    """SIGTERM mid-export: the export is answered, a new request is refused, close 1001, exit 0."""
    metrics.answers.append(({"route": "entries"}, entries_answer()))
    metrics.hold.clear()
    env = worker_env(
        CSVGEN_BUS_URL=bus.uri,
        CSVGEN_BUS_TOKEN=TOKEN,
        CSVGEN_METRICS_URL=metrics.uri,
        CSVGEN_LOG_LEVEL="DEBUG",
        AWS_ENDPOINT_URL_S3=s3.endpoint,
    )
    worker = await Worker(env).start()
    try:
        await bus.send(request("slow"))
        assert await metrics.received.get() in ("entries", "detail/list")
        worker.proc.send_signal(signal.SIGTERM)
        await worker.wait_for_line("received SIGTERM: draining")
        await bus.send(request("late"))
        rid, payload = await bus.reply()
        assert (rid, payload["error"]["code"]) == ("late", "shutting_down")
        metrics.hold.set()
        rid, payload = await bus.reply()
        assert rid == "slow" and payload["body"][0]["rowCount"] == 3
        assert await worker.wait() == 0
    finally:
        worker.kill()
    await bus.wait_closed(1)
    assert bus.close_codes == [1001]
    assert bus.tokens == [TOKEN] and metrics.tokens == [TOKEN]
    log = "\n".join(worker.lines)
    assert "request id=slow route=external-service/csv-generator outcome=ok" in log
    assert TOKEN not in log
    assert "X-Amz-Signature" not in log


async def test_second_signal_forces_exit(bus: FakeBus, metrics: FakeMetrics) -> None:
    """A second SIGINT while draining ends the process at once with status 1."""
    metrics.answers.append(({"route": "entries"}, entries_answer()))
    metrics.hold.clear()
    env = worker_env(CSVGEN_BUS_URL=bus.uri, CSVGEN_METRICS_URL=metrics.uri)
    worker = await Worker(env).start()
    try:
        await bus.send(request("stuck"))
        await metrics.received.get()
        worker.proc.send_signal(signal.SIGINT)
        await worker.wait_for_line("received SIGINT: draining")
        worker.proc.send_signal(signal.SIGINT)
        assert await worker.wait() == 1
    finally:
        worker.kill()
    assert any("second SIGINT: forcing exit" in line for line in worker.lines)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        (
            {},
            "csvgen: invalid configuration: CSVGEN_BUS_URL: required (the bus WebSocket URL, ws:// or wss://)",
        ),
        (
            {"CSVGEN_BUS_URL": "ws://127.0.0.1:9", "CSVGEN_MAX_ROWS": "lots"},
            "csvgen: invalid configuration: CSVGEN_MAX_ROWS: must be an integer, got 'lots'",
        ),
    ],
)
async def test_bad_configuration_exits_2_with_one_line(env: dict[str, str], message: str) -> None:
    """Bad configuration: exit status 2 and one clear line on stderr."""
    worker = await Worker(worker_env(**env)).start()
    try:
        assert await worker.wait() == 2
    finally:
        worker.kill()
    assert worker.lines == [message]


async def test_flags_override_the_environment() -> None:
    """`csvgen run --max-rows` beats CSVGEN_MAX_ROWS (and is validated the same way)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "csvgen",
        "run",
        "--max-rows",
        "-1",
        env=worker_env(CSVGEN_BUS_URL="ws://127.0.0.1:9", CSVGEN_MAX_ROWS="5"),
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await proc.communicate()
    assert proc.returncode == 2
    assert (
        err.decode().strip()
        == "csvgen: invalid configuration: CSVGEN_MAX_ROWS: must be at least 0, got -1"
    )
