"""`csvgen standin`: the bus, the Metrics API and S3 on 127.0.0.1, in one process.

One WebSocket server, three paths:

* ``/bus``: workers connect here (their ``CSVGEN_BUS_URL``). Each
  ``external-service`` action is handed to the connected worker with the fewest
  requests outstanding; its reply frames are relayed to whoever submitted it.
  Actions submitted while no worker is connected wait for one.
* ``/metrics``: the Metrics API (a worker's ``CSVGEN_METRICS_URL``): ``metric``
  routes and ``detail/list`` answered from the sample data set. Answers longer
  than ``part_chars`` are split into parts, and the parts of answers in flight on
  one connection are sent round-robin, so they interleave.
* ``/`` (any other path): submitters: ``external-service`` actions go to a
  worker; ``metric`` and ``detail`` actions are answered like on ``/metrics``.

Any token is accepted. moto's S3 server runs beside it with the bucket created.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import itertools
import logging
import signal
import sys
from collections.abc import Iterable, Iterator
from typing import Any

import orjson
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from ..frames import encode_reply, envelope_head, parse_part
from .api import MetricsAPI
from .data import DataSet

__all__ = ["Interleaver", "Standin", "main"]

logger = logging.getLogger("csvgen.standin")

DEFAULT_PART_CHARS = 256 * 1024
AWS_STANDIN_ENV = {
    "AWS_ACCESS_KEY_ID": "standin",
    "AWS_SECRET_ACCESS_KEY": "standin",
    "AWS_REGION": "us-east-1",
}


class Interleaver:
    """Sends the frames of several answers on one connection, one frame of each in turn.

    While an answer to this connection is being computed, nothing is sent: answers
    to requests that arrived together are then all queued before the first frame
    goes out, so their parts really interleave (a computed answer is ready far
    faster than a real API would stream it). An answer's frames may be made as they
    are sent (an iterator), as a real API streams its answer.
    """

    def __init__(self, ws: ServerConnection) -> None:
        self.ws = ws
        self.queues: dict[str, Iterator[str | bytes]] = {}
        self.wake = asyncio.Event()
        self.computing = 0

    def add(self, rid: str, frames: Iterable[str | bytes]) -> None:
        queued = self.queues.get(rid)
        self.queues[rid] = iter(frames) if queued is None else itertools.chain(queued, frames)
        self.wake.set()

    async def run(self) -> None:
        while True:
            await self.wake.wait()
            self.wake.clear()
            while self.queues and not self.computing:
                for rid in list(self.queues):
                    frame = next(self.queues[rid], None)
                    if frame is None:
                        del self.queues[rid]
                    else:
                        await self.ws.send(frame, text=True)


class Standin:
    def __init__(
        self,
        data: DataSet | None = None,
        *,
        part_chars: int = DEFAULT_PART_CHARS,
        latency_s: float = 0.0,
    ) -> None:
        self.api = MetricsAPI(data or DataSet())
        self.part_chars = part_chars
        self.latency_s = latency_s
        self.server: Server | None = None
        self.port = 0
        self.workers: list[ServerConnection] = []
        self.outstanding: collections.Counter[ServerConnection] = collections.Counter()
        self.submitters: dict[str, tuple[ServerConnection, ServerConnection | None]] = {}
        self.waiting: collections.deque[tuple[str, str]] = collections.deque()  # (id, frame)
        self.parts_seen: collections.Counter[str] = collections.Counter()
        self._turn = itertools.count()

    @property
    def submit_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/"

    @property
    def bus_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/bus"

    @property
    def metrics_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/metrics"

    async def start(self, port: int = 0) -> Standin:
        self.server = await serve(
            self._handler, "127.0.0.1", port, compression=None, max_size=None, ping_interval=None
        )
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()

    async def _handler(self, ws: ServerConnection) -> None:
        assert ws.request is not None
        path = ws.request.path.split("?")[0]
        interleaver = Interleaver(ws)
        sender = asyncio.create_task(interleaver.run())
        if path == "/bus":
            self.workers.append(ws)
            self.on_worker(ws)
            self._flush_waiting()
        try:
            async for message in ws:
                text = message if isinstance(message, str) else message.decode()
                if path == "/bus":
                    await self._from_worker(ws, text)
                else:
                    self.from_client(ws, text, interleaver)
        except ConnectionClosed:
            pass
        finally:
            sender.cancel()
            if ws in self.workers:
                self.workers.remove(ws)
                del self.outstanding[ws]

    def on_worker(self, ws: ServerConnection) -> None:
        """A worker connected (a hook for subclasses)."""

    # -- the bus -------------------------------------------------------------------

    def from_client(self, ws: ServerConnection, text: str, interleaver: Interleaver) -> None:
        """A frame from a submitter or a Metrics API client (a hook for subclasses:
        bench/replay.py answers its own ``bench-stats`` action here)."""
        try:
            # A large frame is routed by its envelope alone: relaying a 1 MiB request
            # must not cost the stand-in a full parse (csvgen's own latency is measured).
            head = envelope_head(text.encode()) if len(text) > 64 * 1024 else None
            relayed = head is not None and head.get("action") == "external-service"
            doc: Any = head if relayed else orjson.loads(text)
            action, data = doc["action"], doc["data"]
            rid = data["id"]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            logger.warning("stand-in: dropped a frame it cannot read")
            return
        if action == "external-service":
            self.submitters[rid] = (ws, None)
            self.waiting.append((rid, text))
            self._flush_waiting()
        else:
            interleaver.computing += 1  # counted from receipt, so the next request overlaps
            task = asyncio.create_task(self._answer(interleaver, rid, action, data))
            task.add_done_callback(_log_failure)

    def _flush_waiting(self) -> None:
        while self.waiting and self.workers:
            rid, text = self.waiting.popleft()
            if rid not in self.submitters:
                continue
            turn = next(self._turn)
            n = len(self.workers)
            worker = min(
                (self.workers[(turn + i) % n] for i in range(n)), key=lambda w: self.outstanding[w]
            )
            self.outstanding[worker] += 1
            self.submitters[rid] = (self.submitters[rid][0], worker)
            task = asyncio.create_task(worker.send(text))
            task.add_done_callback(_log_failure)

    async def _from_worker(self, ws: ServerConnection, text: str) -> None:
        try:
            rid, _, total, _ = parse_part(text)
        except ValueError:
            logger.warning("stand-in: a worker sent a frame that is not a reply")
            return
        client, worker = self.submitters.get(rid, (None, None))
        if client is None:
            logger.warning("stand-in: reply for unknown request %s", rid)
            return
        self.parts_seen[rid] += 1
        if total <= 1 or self.parts_seen[rid] == total:
            del self.submitters[rid]
            del self.parts_seen[rid]
            if worker is not None and worker in self.outstanding:
                self.outstanding[worker] -= 1
        with contextlib.suppress(ConnectionClosed):
            await client.send(text)

    # -- the Metrics API -------------------------------------------------------------

    async def _answer(self, out: Interleaver, rid: str, action: str, data: dict[str, Any]) -> None:
        route, body = data.get("route"), data.get("body")
        try:
            # Computing a large answer takes a while: keep the other connections served.
            frames = await asyncio.to_thread(self.frames, rid, action, route, body)
        finally:
            out.computing -= 1
            out.wake.set()
        if self.latency_s:
            await asyncio.sleep(self.latency_s)
        out.add(rid, frames)

    def frames(self, rid: str, action: str, route: Any, body: Any) -> Iterable[str | bytes]:
        """The frames that answer one request (runs in a thread)."""
        answer = self.api.answer(action, str(route), body)
        return encode_reply(rid, answer, max_part_chars=self.part_chars)


def _log_failure(task: asyncio.Task[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        logger.warning("stand-in: %s", task.exception())


class S3Standin:
    """moto's S3 server on 127.0.0.1 with one bucket."""

    def __init__(self, bucket: str, port: int = 0) -> None:
        from moto.server import ThreadedMotoServer

        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
        self.server.start()
        host, bound = self.server.get_host_and_port()
        self.endpoint = f"http://{host}:{bound}"
        import boto3

        s3 = boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name=AWS_STANDIN_ENV["AWS_REGION"],
            aws_access_key_id=AWS_STANDIN_ENV["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=AWS_STANDIN_ENV["AWS_SECRET_ACCESS_KEY"],
        )
        s3.create_bucket(Bucket=bucket)

    def stop(self) -> None:
        self.server.stop()


def worker_env(standin: Standin, s3_endpoint: str, bucket: str) -> dict[str, str]:
    """The environment a worker needs to run against this stand-in."""
    return {
        "CSVGEN_BUS_URL": standin.bus_url,
        "CSVGEN_METRICS_URL": standin.metrics_url,
        "CSVGEN_BUCKET": bucket,
        "AWS_ENDPOINT_URL_S3": s3_endpoint,
        **AWS_STANDIN_ENV,
    }


async def serve_standin(args: argparse.Namespace) -> None:
    logging.basicConfig(level="INFO", format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("werkzeug", "websockets"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    data = DataSet(locations=args.locations)
    s3 = await asyncio.to_thread(S3Standin, args.bucket, args.s3_port)
    standin = Standin(data, part_chars=args.part_chars, latency_s=args.latency_ms / 1000)
    await standin.start(args.port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    env = worker_env(standin, s3.endpoint, args.bucket)
    print("csvgen stand-in: the Aura bus, the Aura Metrics API and S3 on 127.0.0.1")
    print(f"  submit requests to  {standin.submit_url}")
    print(
        f"  {len(data.locations)} locations, e.g. {data.locations[0].id} ({data.locations[0].name})"
    )
    print("  run a worker with:")
    for key, value in env.items():
        print(f"    export {key}={value}")
    print("    csvgen run")
    print("  then send a request frame (a JSON file) with:")
    print(f"    csvgen submit FRAME.json --url {standin.submit_url} --download")
    print("standin-ready " + orjson.dumps({"submit": standin.submit_url, "env": env}).decode())
    sys.stdout.flush()
    try:
        await stop.wait()
    finally:
        await standin.stop()
        await asyncio.to_thread(s3.stop)
        print("csvgen stand-in: stopped")


def main(args: argparse.Namespace) -> int:
    asyncio.run(serve_standin(args))
    return 0
