"""The benchmark's bus and Metrics API: the stand-in, answering from pre-generated files.

Answers are read once at start and kept as ready-cut parts, so answering costs
a dictionary lookup and socket writes: the stand-in's own speed never counts in
csvgen's figures. It also pings every worker connection every 100 ms and keeps
the round-trip times, which a ``bench-stats`` action returns (and resets).

    python -m bench.replay <case-dir> [<case-dir>…] [--latency-ms N]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import orjson
from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from bench.cases import fingerprint
from csvgen.standin.server import AWS_STANDIN_ENV, Interleaver, S3Standin, Standin

PART_BYTES = 8 * 1024 * 1024
PING_EVERY_S = 0.1


class ReplayStandin(Standin):
    def __init__(self, folders: list[Path], latency_s: float) -> None:
        super().__init__(latency_s=latency_s)
        self.parts: dict[str, list[bytes]] = {}
        for path in (p for folder in folders for p in folder.glob("*.json")):
            if path.name.startswith("request-"):
                continue
            data = path.read_bytes()
            self.parts[path.stem] = [
                data[i : i + PART_BYTES] for i in range(0, len(data), PART_BYTES)
            ]
        self.rtts: list[float] = []
        self.monitors: set[asyncio.Task[None]] = set()

    def frames(self, rid: str, action: str, route: Any, body: Any) -> Iterable[str | bytes]:
        parts = self.parts.get(fingerprint(str(route), body)) if action == "metric" else None
        if parts is None:
            return super().frames(rid, action, route, body)
        total = len(parts)
        head = "0|0" if total == 1 else None
        # Each frame is made when its turn to be sent comes, as a real API streams:
        # making them all first would copy the whole answer before its first byte.
        return (f"{rid}|{head or f'{n}|{total}'}|".encode() + part for n, part in enumerate(parts))

    def on_worker(self, ws: ServerConnection) -> None:
        task = asyncio.create_task(self._keepalive(ws))
        self.monitors.add(task)
        task.add_done_callback(self.monitors.discard)

    async def _keepalive(self, ws: ServerConnection) -> None:
        with contextlib.suppress(ConnectionClosed):
            while True:
                sent = time.perf_counter()
                pong = await ws.ping()
                await pong
                self.rtts.append(time.perf_counter() - sent)
                await asyncio.sleep(PING_EVERY_S)

    def from_client(self, ws: ServerConnection, text: str, interleaver: Interleaver) -> None:
        doc = orjson.loads(text)
        if doc.get("action") != "bench-stats":
            super().from_client(ws, text, interleaver)
            return
        stats = {"pings": len(self.rtts), "max_rtt": max(self.rtts, default=0.0)}
        self.rtts.clear()
        interleaver.add(doc["data"]["id"], [f"{doc['data']['id']}|0|0|{json.dumps(stats)}"])


async def serve(folders: list[Path], latency_ms: float) -> None:
    s3 = await asyncio.to_thread(S3Standin, "aura-exports")
    standin = await ReplayStandin(folders, latency_ms / 1000).start()
    env = {
        "CSVGEN_BUS_URL": standin.bus_url,
        "CSVGEN_METRICS_URL": standin.metrics_url,
        "AWS_ENDPOINT_URL_S3": s3.endpoint,
        **AWS_STANDIN_ENV,
    }
    print("replay-ready " + json.dumps({"submit": standin.submit_url, "env": env}), flush=True)
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    await stop.wait()
    await standin.stop()
    await asyncio.to_thread(s3.stop)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("folders", type=Path, nargs="+")
    parser.add_argument("--latency-ms", type=float, default=0.0)
    args = parser.parse_args()
    asyncio.run(serve(args.folders, args.latency_ms))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
