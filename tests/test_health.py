"""Operating a real worker process: /healthz, /readyz and /metrics over HTTP (SPEC §10)."""

from __future__ import annotations

import asyncio
import contextlib
import re
import signal
import socket
from pathlib import Path

import orjson
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import S3Server
from tests.fakes import FakeBus, FakeMetrics, RawFrames
from tests.processes import Child, child_env
from tests.test_export_errors import entries_answer, request
from tests.test_outofcore import LOCATIONS
from tests.test_workdirs import killed_holder

ROUTE = "external-service/csv-generator"


async def get(port: int, path: str) -> tuple[int, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    await writer.drain()
    answer = await reader.read()
    writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


async def start(env: dict[str, str]) -> tuple[Child, int]:
    worker = await Child("run", env=child_env(CSVGEN_HTTP_PORT="0", **env)).start()
    line = await worker.wait_for_line("serving /healthz, /readyz and /metrics on http://")
    match = re.search(r"http://127\.0\.0\.1:(\d+)", line)
    assert match is not None
    return worker, int(match.group(1))


def samples(text: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text.decode())
        for s in family.samples
    }


async def test_probes_and_metrics_of_a_serving_worker(
    bus: FakeBus, metrics: FakeMetrics, s3: S3Server
) -> None:
    metrics.answers.append(({"route": "entries"}, entries_answer()))
    worker, port = await start(
        {
            "CSVGEN_BUS_URL": bus.uri,
            "CSVGEN_METRICS_URL": metrics.uri,
            "AWS_ENDPOINT_URL_S3": s3.endpoint,
        }
    )
    try:
        assert await get(port, "/healthz") == (200, b'{"status":"ok"}\n')
        await worker.wait_for_line("connected to the bus")
        assert await get(port, "/readyz") == (200, b'{"status":"ready"}\n')
        await bus.send(request("ok-1"))
        await bus.send(request("bad-1", {"csvFormat": {}}))
        codes = {(await bus.reply())[0], (await bus.reply())[0]}
        assert codes == {"ok-1", "bad-1"}
        status, text = await get(port, "/metrics")
        assert status == 200
        got = samples(text)
        assert got[("csvgen_exports_total", (("outcome", "ok"), ("route", ROUTE)))] == 1
        invalid = (("outcome", "invalid_request"), ("route", ROUTE))
        assert got[("csvgen_exports_total", invalid)] == 1
        assert got[("csvgen_rows_written_total", ())] == 3
        assert got[("csvgen_metric_requests_total", (("outcome", "ok"),))] == 2  # entries, detail
        assert got[("csvgen_upstream_received_bytes_total", ())] > 0
        assert got[("csvgen_exports_running", ())] == 0
        # The store check at start: two creates, a replace and a delete of the probe; then
        # the export: its receipt, its claim of a key stem, the CSV, the manifest and the
        # receipt's final update.
        assert got[("csvgen_store_requests_total", (("operation", "PutObject"),))] == 3 + 5
        assert got[("csvgen_store_requests_total", (("operation", "DeleteObject"),))] == 1
        stages = {k[1] for k in got if k[0] == "csvgen_export_stage_duration_seconds_count"}
        assert {dict(labels)["stage"] for labels in stages} == {
            "fetch",
            "combine",
            "write",
            "upload",
        }
        assert await get(port, "/nope") == (404, b"not found\n")
        # Draining: not ready any more, while the held export finishes.
        metrics.hold.clear()
        await bus.send(request("held"))
        await metrics.received.get()
        worker.proc.send_signal(signal.SIGTERM)
        await worker.wait_for_line("received SIGTERM: draining")
        status, body = await get(port, "/readyz")
        assert (status, orjson.loads(body)) == (503, {"status": "not ready", "reason": "draining"})
        metrics.hold.set()
        assert (await bus.reply())[0] == "held"
        assert await worker.wait() == 0
    finally:
        await worker.kill()


async def test_metrics_count_exports_out_of_core_and_swept_spill_dirs(
    bus: FakeBus, metrics: FakeMetrics, s3: S3Server, tmp_path: Path
) -> None:
    """What sizes a worker's budget and disk: the exports that went out of core (by
    whether their records spilled), and the work directories of killed workers swept."""
    killed_holder(tmp_path)
    answer = entries_answer(days=60_000, entities=tuple(LOCATIONS))  # 180,000 records
    metrics.answers.append(({"route": "entries"}, RawFrames(answer, parts=8)))
    worker, port = await start(
        {
            "CSVGEN_BUS_URL": bus.uri,
            "CSVGEN_METRICS_URL": metrics.uri,
            "AWS_ENDPOINT_URL_S3": s3.endpoint,
            "CSVGEN_SPILL_DIR": str(tmp_path),
            "CSVGEN_MEMORY_BUDGET_MB": "16",
        }
    )
    try:
        await bus.send(request("past-the-budget"))
        _, payload = await bus.reply()
        got = samples((await get(port, "/metrics"))[1])
    finally:
        await worker.stop()
    assert payload["body"][0]["rowCount"] == 180_000
    assert got[("csvgen_spill_dirs_swept_total", ())] == 1
    assert got[("csvgen_exports_out_of_core_total", (("spilled", "false"),))] == 1
    assert ("csvgen_exports_out_of_core_total", (("spilled", "true"),)) not in got


async def test_not_ready_while_the_bus_refuses_connections() -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    worker, port = await start(
        {
            "CSVGEN_BUS_URL": f"ws://127.0.0.1:{closed}/bus",
            "CSVGEN_RECONNECT_MAX_DELAY_S": "0.05",
            "CSVGEN_UNSAFE_STORE": "1",  # no S3 here: nothing to check
        }
    )
    try:
        assert (await get(port, "/healthz"))[0] == 200
        status, body = await get(port, "/readyz")
        assert (status, orjson.loads(body)) == (
            503,
            {"status": "not ready", "reason": "bus disconnected"},
        )
        assert await worker.stop() == 0
    finally:
        await worker.kill()


async def test_idle_clients_of_the_health_port_cannot_use_up_the_workers_files(
    bus: FakeBus, metrics: FakeMetrics, s3: S3Server
) -> None:
    """With 256 files allowed, 300 clients that send one byte and wait: the extra ones are
    closed at once, so the worker still exports (it opens sockets) and answers /healthz."""
    metrics.answers.append(({"route": "entries"}, entries_answer()))
    env = child_env(
        CSVGEN_HTTP_PORT="0",
        CSVGEN_BUS_URL=bus.uri,
        CSVGEN_METRICS_URL=metrics.uri,
        AWS_ENDPOINT_URL_S3=s3.endpoint,
        TEST_OPEN_FILES_LIMIT="256",
    )
    worker = await Child("run", env=env, module="tests.limited").start()
    idle: list[asyncio.StreamWriter] = []
    try:
        line = await worker.wait_for_line("serving /healthz, /readyz and /metrics on http://")
        port = int(line.rsplit(":", 1)[1].split("/")[0])
        for _ in range(300):
            with contextlib.suppress(ConnectionError):  # an extra one is closed at once
                _, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.write(b"G")
                idle.append(writer)
        await bus.send(request("busy"))
        _, payload = await bus.reply()
        for writer in idle:  # the idle clients go; their slots free as the worker sees it
            writer.close()
        async with asyncio.timeout(10):
            while True:  # a probe that meets a full port is reset (or sees EOF): again
                with contextlib.suppress(ConnectionError, IndexError):
                    status, _ = await get(port, "/healthz")
                    break
    finally:
        for writer in idle:
            writer.close()
        await worker.stop()
    assert payload["body"][0]["rowCount"] == 3 and status == 200
    assert not any("accept" in line.lower() for line in worker.lines)
