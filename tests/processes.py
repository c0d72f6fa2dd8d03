"""Child processes for tests: `python -m csvgen ...` with its output read line by line."""

from __future__ import annotations

import asyncio
import os
import sys
from typing import Any

from tests.conftest import AWS_ENV


def child_env(**extra: str) -> dict[str, Any]:
    """This environment without CSVGEN_* and AWS_* settings, plus dummy AWS keys and ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CSVGEN_", "AWS_"))}
    return {**env, **AWS_ENV, **extra}


class Child:
    """A `python -m csvgen <args>` child; the chosen stream is read line by line as it comes."""

    def __init__(self, *args: str, env: dict[str, str], stream: str = "stderr") -> None:
        self.args = args
        self.env = env
        self.stream = stream
        self.lines: list[str] = []
        self._new_line = asyncio.Condition()

    async def start(self) -> Child:
        pipe, devnull = asyncio.subprocess.PIPE, asyncio.subprocess.DEVNULL
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "csvgen", *self.args, env=self.env,
            stdout=pipe if self.stream == "stdout" else devnull,
            stderr=pipe if self.stream == "stderr" else devnull,
        )  # fmt: skip
        self._reader = asyncio.create_task(self._read())
        return self

    async def _read(self) -> None:
        stream = self.proc.stdout if self.stream == "stdout" else self.proc.stderr
        assert stream is not None
        async for raw in stream:
            async with self._new_line:
                self.lines.append(raw.decode().rstrip("\n"))
                self._new_line.notify_all()

    async def wait_for_line(self, fragment: str) -> str:
        async with asyncio.timeout(30), self._new_line:
            await self._new_line.wait_for(lambda: any(fragment in line for line in self.lines))
            return next(line for line in self.lines if fragment in line)

    async def wait(self) -> int:
        async with asyncio.timeout(30):
            status = await self.proc.wait()
            await self._reader
        return status

    async def kill(self) -> None:
        """Kill the child if it still runs, and reap it (so no transport outlives the loop)."""
        if self.proc.returncode is None:
            self.proc.kill()
        await self.proc.wait()
        await self._reader
