"""The worker as a real process: `python -m csvgen run`, real signals, exit statuses."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest
from websockets.asyncio.server import serve
from websockets.http11 import Response

from csvgen.csvexport.workdirs import WorkDir
from tests.conftest import S3Server
from tests.fakes import FakeBus, FakeMetrics, Fault, FaultProxy, RawFrames
from tests.processes import Child, child_env
from tests.test_export_errors import entries_answer, request
from tests.test_plan import L1
from tests.test_workdirs import killed_holder

TOKEN = "tok-do-not-log-4711"


def worker_env(bus: FakeBus, metrics: FakeMetrics, s3: S3Server, **extra: str) -> dict[str, Any]:
    """A worker's environment against the fakes and moto's S3, plus ``extra``."""
    return child_env(
        **{
            "CSVGEN_BUS_URL": bus.uri,
            "CSVGEN_BUS_TOKEN": TOKEN,
            "CSVGEN_METRICS_URL": metrics.uri,
            "AWS_ENDPOINT_URL_S3": s3.endpoint,
            **extra,
        }
    )


async def test_sigterm_drains_then_exits_zero(
    bus: FakeBus, metrics: FakeMetrics, s3: S3Server
) -> None:
    """SIGTERM mid-export: the export is answered, a new request is refused, close 1001, exit 0."""
    metrics.answers.append(({"route": "entries"}, entries_answer()))
    metrics.hold.clear()
    env = worker_env(bus, metrics, s3, CSVGEN_LOG_LEVEL="DEBUG")
    worker = await Child("run", env=env).start()
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
        await worker.kill()
    await bus.wait_closed(1)
    assert bus.close_codes == [1001]
    assert bus.tokens == [TOKEN] and metrics.tokens == [TOKEN]
    log = "\n".join(worker.lines)
    assert "request id=slow route=external-service/csv-generator outcome=ok" in log
    assert TOKEN not in log
    assert "X-Amz-Signature" not in log


@pytest.mark.parametrize(
    ("budget", "days", "what"),
    [("1024", 4_000, "the CSV"), ("16", 200_000, "the answers' records")],
    ids=["csv", "records"],
)
async def test_a_full_spill_directory_is_storage_failed_and_leaves_nothing(
    bus: FakeBus,
    metrics: FakeMetrics,
    s3: S3Server,
    tmp_path: Path,
    budget: str,
    days: int,
    what: str,
) -> None:
    """The disk fills up under an export (each file the worker writes limited to 16 KiB):
    storage_failed, no object and no file left; the worker goes on with the next export.
    Past half a budget of 16 MB (600,000 records) the answers' records fill it first."""
    answer = entries_answer(days=days, entities=(L1, f"{L1[:-1]}1", f"{L1[:-1]}2"))
    metrics.answers.append(({"route": "entries"}, RawFrames(answer, parts=16)))
    env = worker_env(
        bus,
        metrics,
        s3,
        CSVGEN_SPILL_DIR=str(tmp_path),
        CSVGEN_MEMORY_BUDGET_MB=budget,
        TEST_FILE_SIZE_LIMIT=str(16 * 1024),
        PYTHONDONTWRITEBYTECODE="1",
    )
    worker = await Child("run", env=env, module="tests.limited").start()
    try:
        await bus.send(request("large"))
        _, failed = await bus.reply()
        assert os.listdir(tmp_path) == []
        metrics.answers.insert(0, ({"route": "entries"}, entries_answer(days=5)))
        await bus.send(request("small"))
        _, done = await bus.reply()
    finally:
        await worker.stop()
    assert (failed["error"]["code"], failed["error"]["message"]) == (
        "storage_failed",
        f"{what} could not be written to the spill directory: File too large",
    )
    [item] = done["body"]
    assert item["rowCount"] == 5
    stored = s3.client().list_objects_v2(Bucket="aura-exports")["Contents"]
    exports = {o["Key"] for o in stored if "/.receipts/" not in o["Key"]}
    assert exports == {item["key"], item["manifestKey"]}
    assert os.listdir(tmp_path) == []


async def test_a_worker_starting_removes_what_a_killed_worker_left_in_the_spill_dir(
    bus: FakeBus, metrics: FakeMetrics, s3: S3Server, tmp_path: Path
) -> None:
    """A worker killed outright (SIGKILL, as the OOM killer does) leaves its work
    directories behind; the next worker to start removes them, not those of a replica
    still at work."""
    dead = killed_holder(tmp_path)
    live = WorkDir("csvgen-duckdb-", str(tmp_path))
    env = worker_env(bus, metrics, s3, CSVGEN_SPILL_DIR=str(tmp_path))
    worker = await Child("run", env=env).start()
    try:
        await worker.wait_for_line("connected to the bus")
    finally:
        await worker.stop()
    assert any(
        line.endswith("work directories of killed workers removed from the spill dir: 1")
        for line in worker.lines
    )
    assert not dead.exists()
    assert os.listdir(tmp_path) == [Path(live.path).name]
    live.remove()


async def test_second_signal_forces_exit(bus: FakeBus, metrics: FakeMetrics) -> None:
    """A second SIGINT while draining ends the process at once with status 1."""
    metrics.answers.append(({"route": "entries"}, entries_answer()))
    metrics.hold.clear()
    env = child_env(CSVGEN_BUS_URL=bus.uri, CSVGEN_METRICS_URL=metrics.uri, CSVGEN_UNSAFE_STORE="1")
    worker = await Child("run", env=env).start()
    try:
        await bus.send(request("stuck"))
        await metrics.received.get()
        worker.proc.send_signal(signal.SIGINT)
        await worker.wait_for_line("received SIGINT: draining")
        worker.proc.send_signal(signal.SIGINT)
        assert await worker.wait() == 1
    finally:
        await worker.kill()
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
        (
            {"CSVGEN_BUS_URL": "ws://127.0.0.1:99999/bus", "CSVGEN_BUCKET": "bad/bucket name"},
            "csvgen: invalid configuration: CSVGEN_BUS_URL: must be a ws:// or wss:// URL with a port in 1-65535; "
            "CSVGEN_BUCKET: must be 3-63 characters of lowercase letters, digits, dots and hyphens, "
            "starting and ending with a letter or digit, got 'bad/bucket name'",
        ),
    ],
)
async def test_bad_configuration_exits_2_with_one_line(env: dict[str, str], message: str) -> None:
    """Bad configuration: exit status 2 and one clear line on stderr."""
    worker = await Child("run", env=child_env(**env)).start()
    try:
        assert await worker.wait() == 2
    finally:
        await worker.kill()
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
        env=child_env(CSVGEN_BUS_URL="ws://127.0.0.1:9", CSVGEN_MAX_ROWS="5"),
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await proc.communicate()
    assert proc.returncode == 2
    assert (
        err.decode().strip()
        == "csvgen: invalid configuration: CSVGEN_MAX_ROWS: must be at least 0, got -1"
    )


async def test_log_carries_no_token_and_no_forged_line(bus: FakeBus) -> None:
    """Issue 8 #6, #7: a Metrics API answering 302 `#x` is retried and logged, token scrubbed;
    an id holding a newline and a fake log record stays inside its own line."""

    def redirect(connection: Any, request: Any) -> Response:
        response = connection.respond(302, "")
        response.headers["Location"] = "#x"
        return response

    async with serve(
        lambda ws: ws.wait_closed(), "127.0.0.1", 0, process_request=redirect
    ) as server:
        port = server.sockets[0].getsockname()[1]
        env = child_env(
            CSVGEN_BUS_URL=bus.uri,
            CSVGEN_BUS_TOKEN=TOKEN,
            CSVGEN_METRICS_URL=f"ws://user:pa55@127.0.0.1:{port}/metrics",
            CSVGEN_METRIC_TIMEOUT_S="0.5",
            CSVGEN_RECONNECT_MAX_DELAY_S="0.05",
            CSVGEN_MAX_ROW="5",
            CSVGEN_UNSAFE_STORE="1",  # no S3 here: nothing to check
        )
        worker = await Child("run", env=env).start()
        try:
            forged = "r1\n2026-01-01 00:00:00,000 INFO csvgen: forged"
            await bus.send(request(forged))
            rid, payload = await bus.reply()
            assert (rid, payload["error"]["code"]) == (forged, "metric_timeout")
            await worker.wait_for_line("outcome=metric_timeout")
            await worker.wait_for_line("token=***")
            assert await worker.stop() == 0
        finally:
            await worker.kill()
    log = "\n".join(worker.lines)
    assert TOKEN not in log and "pa55" not in log
    assert not any(line.startswith("2026-01-01") for line in worker.lines)
    assert "id=r1\\n2026-01-01 00:00:00,000 INFO csvgen: forged" in log
    assert "unknown variable CSVGEN_MAX_ROW is ignored; did you mean CSVGEN_MAX_ROWS?" in log


async def test_json_log_lines_all_parse_and_carry_the_export(
    bus: FakeBus, metrics: FakeMetrics, s3: S3Server
) -> None:
    """CSVGEN_LOG_FORMAT=json: every line is one JSON object; the export line has its fields."""
    metrics.answers.append(({"route": "entries"}, entries_answer()))
    env = worker_env(bus, metrics, s3, CSVGEN_LOG_FORMAT="json")
    worker = await Child("run", env=env).start()
    try:
        await bus.send(request("j1"))
        rid, payload = await bus.reply()
        assert rid == "j1" and "body" in payload
        await worker.wait_for_line('"outcome":"ok"')
        assert await worker.stop() == 0
    finally:
        await worker.kill()
    docs = [orjson.loads(line) for line in worker.lines]  # every line parses
    assert all({"ts", "level", "logger", "msg"} <= doc.keys() for doc in docs)
    [export] = [d for d in docs if d.get("outcome") == "ok"]
    item = payload["body"][0]
    assert (export["id"], export["route"], export["rows"], export["bytes"], export["key"]) == (
        "j1",
        "external-service/csv-generator",
        item["rowCount"],
        item["sizeBytes"],
        item["key"],
    )
    assert export["duration_s"] > 0
    [stages] = [d for d in docs if "stages" in d]
    assert set(stages["stages"]) == {"fetch", "combine", "write", "upload"}
    assert TOKEN not in "\n".join(worker.lines)


@pytest.mark.parametrize("ignored", ["if-none-match", "if-match"])
async def test_a_store_that_overwrites_is_refused_at_start(
    bus: FakeBus, metrics: FakeMetrics, s3: S3Server, ignored: str
) -> None:
    """SPEC §9: in front of a store that ignores If-None-Match, or If-Match, the worker
    exits 2 with one line; with CSVGEN_UNSAFE_STORE=1 it warns and serves."""
    metrics.answers.append(({"route": "entries"}, entries_answer()))
    proxy = await FaultProxy(s3.endpoint, Fault(strip=(ignored,))).start()
    try:
        env = child_env(
            CSVGEN_BUS_URL=bus.uri,
            CSVGEN_METRICS_URL=metrics.uri,
            AWS_ENDPOINT_URL_S3=proxy.endpoint,
        )
        refused = await Child("run", env=env).start()
        try:
            assert await refused.wait() == 2
        finally:
            await refused.kill()
        assert proxy.count("PUT", "/.csvgen-probe/", ignored) >= 1  # sent, then stripped
        assert refused.lines[-1] == (
            "csvgen: invalid configuration: the store at bucket 'aura-exports' does not refuse a "
            "second conditional create (If-None-Match: *) or a replace of a changed object "
            "(If-Match): replicas could overwrite each other's files and receipts; use a store "
            "that honours conditional writes, or set CSVGEN_UNSAFE_STORE=1 to run without that "
            "promise"
        )
        unsafe = await Child("run", env={**env, "CSVGEN_UNSAFE_STORE": "1"}).start()
        try:
            await bus.send(request("unsafe"))
            rid, payload = await bus.reply()
            assert rid == "unsafe" and payload["body"][0]["rowCount"] == 3
            assert await unsafe.stop() == 0
        finally:
            await unsafe.kill()
        assert any(
            "CSVGEN_UNSAFE_STORE=1: the store is not checked" in line for line in unsafe.lines
        )
    finally:
        await proxy.stop()
