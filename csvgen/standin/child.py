"""A child Python process whose output lines are collected as they come.

Used by ``csvgen demo`` (the stand-in and a worker), by ``make bench`` and by
the tests that run csvgen as real processes.
"""

from __future__ import annotations

import asyncio
import re
import signal
import sys
from pathlib import Path
from typing import Literal, Self

__all__ = ["Child"]

Stream = Literal["stdout", "stderr", "both", "inherit"]


class Child:
    """``python -m <module> <args>``; ``stream`` says which output is collected in ``lines``."""

    def __init__(
        self,
        *args: str,
        env: dict[str, str] | None = None,
        module: str = "csvgen",
        stream: Stream = "stderr",
    ) -> None:
        self.args = (sys.executable, "-m", module, *args)
        self.env = env
        self.stream = stream
        self.lines: list[str] = []
        self._new_line = asyncio.Condition()
        self._reader: asyncio.Task[None] | None = None

    async def start(self) -> Self:
        pipe, devnull = asyncio.subprocess.PIPE, asyncio.subprocess.DEVNULL
        outputs = {
            "stdout": (pipe, devnull),
            "stderr": (devnull, pipe),
            "both": (pipe, asyncio.subprocess.STDOUT),
            "inherit": (None, None),
        }
        stdout, stderr = outputs[self.stream]
        self.proc = await asyncio.create_subprocess_exec(
            *self.args, env=self.env, stdout=stdout, stderr=stderr
        )
        if self.stream != "inherit":
            self._reader = asyncio.create_task(self._read())
        return self

    async def _read(self) -> None:
        stream = self.proc.stderr if self.stream == "stderr" else self.proc.stdout
        assert stream is not None
        async for raw in stream:
            async with self._new_line:
                self.lines.append(raw.decode().rstrip("\n"))
                self._new_line.notify_all()

    async def wait_for_line(self, fragment: str, within: float = 30) -> str:
        """The first line containing ``fragment``, once it has been printed."""

        def found() -> str | None:
            return next((line for line in self.lines if fragment in line), None)

        async with asyncio.timeout(within), self._new_line:
            await self._new_line.wait_for(lambda: found() is not None)
        return found() or ""

    async def wait(self, within: float = 30) -> int:
        """Its exit status, once it has exited and its output is read."""
        async with asyncio.timeout(within):
            status = await self.proc.wait()
            if self._reader is not None:
                await self._reader
        return status

    async def stop(self, sig: signal.Signals = signal.SIGTERM, within: float = 30) -> int:
        """Send ``sig`` and wait for the exit; kill it if it does not exit in time."""
        if self.proc.returncode is None:
            self.proc.send_signal(sig)
        try:
            return await self.wait(within)
        except TimeoutError:
            await self.kill()
            return await self.wait()

    async def kill(self) -> None:
        """Kill it if it still runs, and reap it (so no transport outlives the loop)."""
        if self.proc.returncode is None:
            self.proc.kill()
        await self.wait()

    def peak_rss(self) -> int:
        """VmHWM: its peak resident set size so far, in bytes (Linux)."""
        return self._status_kb("VmHWM") * 1024

    def rss(self) -> int:
        """VmRSS: its resident set size now, in bytes (Linux)."""
        return self._status_kb("VmRSS") * 1024

    def _status_kb(self, field: str) -> int:
        status = Path(f"/proc/{self.proc.pid}/status").read_text()
        match = re.search(rf"{field}:\s+(\d+) kB", status)
        assert match is not None
        return int(match.group(1))
