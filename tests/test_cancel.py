"""A real export cancelled in each of its stages leaves nothing behind: a worker process
is drained with no grace to speak of (SIGTERM, ``CSVGEN_SHUTDOWN_GRACE_S=0.01``) while its export is in
the stage its DEBUG log names; the requester gets ``shutting_down``, the bucket holds no
export and no open multipart upload, the spill directory is empty."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import S3Server
from tests.fakes import FakeBus, FakeMetrics, Fault, FaultProxy, RawFrames
from tests.processes import Child
from tests.test_export_errors import entries_answer, request
from tests.test_plan import L1
from tests.test_process import worker_env
from tests.test_replicas import objects

#: Three locations, 200,000 days: 600,000 records, a join and a write of a second or two.
BIG = {"days": 200_000, "entities": (L1, f"{L1[:-1]}1", f"{L1[:-1]}2")}


@pytest.mark.parametrize(
    ("stage", "budget"),
    [("fetch", "1024"), ("combine", "1024"), ("write", "16"), ("upload", "1024")],
)
async def test_an_export_cancelled_in_each_stage_leaves_nothing(
    bus: FakeBus, metrics: FakeMetrics, s3: S3Server, tmp_path: Path, stage: str, budget: str
) -> None:
    big = stage in ("combine", "write")
    answer: Any = entries_answer(**BIG) if big else entries_answer()  # type: ignore[arg-type]
    metrics.answers.append(({"route": "entries"}, RawFrames(answer, parts=16)))
    if stage == "fetch":
        metrics.hold.clear()  # the answer never comes
    # The upload is held 3 s: a PUT under way when the cancel comes is waited for, then undone.
    slow = Fault("PUT", "/exports/64a1b2c3d4e5f6a7b8c9d0e3/", delay=3, times=1)
    proxy = await FaultProxy(s3.endpoint, slow).start()
    env = worker_env(
        bus,
        metrics,
        s3,
        AWS_ENDPOINT_URL_S3=proxy.endpoint,
        CSVGEN_LOG_LEVEL="DEBUG",
        CSVGEN_SPILL_DIR=str(tmp_path),
        CSVGEN_MEMORY_BUDGET_MB=budget,
        CSVGEN_SHUTDOWN_GRACE_S="0.01",
    )
    worker = await Child("run", env=env).start()
    try:  # the proxy is stopped last: an upload held there is cut when the test ends
        async with asyncio.timeout(5):
            await bus.send(request("cut"))
        await worker.wait_for_line(f"export id=cut: stage {stage}")
        worker.proc.send_signal(signal.SIGTERM)
        assert await worker.wait(within=10) == 0
        _, payload = await bus.reply()
    finally:
        metrics.hold.set()
        await worker.kill()
        await proxy.stop()
    assert payload["error"]["code"] == "shutting_down"
    assert objects(s3) == []
    assert s3.client().list_multipart_uploads(Bucket="aura-exports").get("Uploads", []) == []
    assert os.listdir(tmp_path) == []
    assert not any("was left as it was" in line for line in worker.lines)  # receipt: failed
