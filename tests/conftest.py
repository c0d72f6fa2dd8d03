from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import HealthCheck, settings as hypothesis_settings

from csvgen.app import build_router
from csvgen.config import Settings
from csvgen.routes import Router
from csvgen.worker import serve
from tests.fakes import FakeBus, FakeMetrics, running_bus

# Property tests: a short run in CI, a long one in `make fuzz` (HYPOTHESIS_PROFILE=fuzz).
# 100 examples: the properties' share of `make test` is a third of what 300 cost (the
# 100,000 of `make fuzz` are where they search hard).
hypothesis_settings.register_profile("ci", max_examples=100, deadline=None)
hypothesis_settings.register_profile(
    "fuzz",
    max_examples=100_000,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
hypothesis_settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

#: Reconnect delays in tests: milliseconds, not seconds (websockets' MS idea).
FAST = {"reconnect_max_delay_s": 0.02, "shutdown_grace_s": 5.0, "unsafe_store": True}


def make_settings(bus: FakeBus, **changes: Any) -> Settings:
    return Settings(bus_url=bus.uri, **{**FAST, **changes})


@contextlib.asynccontextmanager
async def running_worker(settings: Settings, router: Router) -> AsyncIterator[asyncio.Event]:
    """Run the worker in this event loop; yields its stop event and stops it after."""
    stop = asyncio.Event()
    task = asyncio.create_task(serve(settings, router, stop))
    try:
        yield stop
    finally:
        stop.set()
        async with asyncio.timeout(15):
            await task


@pytest.fixture
async def bus() -> AsyncIterator[FakeBus]:
    async with running_bus() as fake:
        yield fake


class S3Server:
    """moto's S3 in server mode on a free loopback port, with the bucket created."""

    def __init__(self, bucket: str = "aura-exports") -> None:
        from moto.server import ThreadedMotoServer

        self.bucket = bucket
        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self.server.start()
        host, port = self.server.get_host_and_port()
        self.endpoint = f"http://{host}:{port}"
        self.running = True
        self.reset()

    def reset(self) -> None:
        """moto keeps its state per process, not per server: each test starts from nothing
        but the bucket."""
        reset = urllib.request.Request(f"{self.endpoint}/moto-api/reset", method="POST")
        urllib.request.urlopen(reset, timeout=10).close()
        self.client().create_bucket(Bucket=self.bucket)

    def client(self) -> Any:
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name="us-east-1",
            aws_access_key_id=AWS_ENV["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=AWS_ENV["AWS_SECRET_ACCESS_KEY"],
        )

    def get(self, key: str) -> bytes:
        body: bytes = self.client().get_object(Bucket=self.bucket, Key=key)["Body"].read()
        return body

    def stop(self) -> None:
        if self.running:
            self.server.stop()
            self.running = False


#: moto's server without a log line per request (werkzeug's): under the chaos run's load
#: that formatting is moto's own time, and moto's one core is the run's bottleneck.
MOTO_QUIET = """
import logging, sys, threading
from moto.server import ThreadedMotoServer
logging.getLogger("werkzeug").setLevel(logging.ERROR)
ThreadedMotoServer(ip_address="127.0.0.1", port=int(sys.argv[1]), verbose=False).start()
threading.Event().wait()  # until the test kills it
"""


class S3Process(S3Server):
    """moto's S3 server in a process of its own (``MOTO_QUIET``): for tests
    whose load would otherwise share this process's one core with everything else."""

    def __init__(self, bucket: str = "aura-exports") -> None:
        self.bucket = bucket
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        self.endpoint = f"http://127.0.0.1:{port}"
        self.process = subprocess.Popen(
            [sys.executable, "-c", MOTO_QUIET, str(port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.running = True
        deadline = time.monotonic() + 30
        while True:  # until it accepts connections
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or self.process.poll() is not None:
                    self.stop()
                    raise
                time.sleep(0.05)
        self.client().create_bucket(Bucket=bucket)

    def stop(self) -> None:
        if self.running:
            self.process.kill()
            self.process.wait()
            self.running = False


class SharedS3(S3Server):
    """The S3 server of one test, shared by all the tests of this process (starting and
    stopping moto's server cost 0.6 s a test): its state is reset for each; it cannot be
    stopped (a test that stops S3 asks for ``own_s3``)."""

    def __init__(self, server: S3Server) -> None:
        self.__dict__.update(server.__dict__)

    def stop(self) -> None:
        raise AssertionError("the shared S3 server is not stopped by a test: use own_s3")


@pytest.fixture(scope="session")
def shared_s3() -> Iterator[S3Server]:
    server = S3Server()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def s3(shared_s3: S3Server, monkeypatch: pytest.MonkeyPatch) -> S3Server:
    for name, value in AWS_ENV.items():
        monkeypatch.setenv(name, value)
    shared_s3.reset()
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", shared_s3.endpoint)
    return SharedS3(shared_s3)


@pytest.fixture
def own_s3(monkeypatch: pytest.MonkeyPatch) -> Iterator[S3Server]:
    """An S3 server of this test's own, which it may stop."""
    for name, value in AWS_ENV.items():
        monkeypatch.setenv(name, value)
    server = S3Server()
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", server.endpoint)
    try:
        yield server
    finally:
        server.stop()


AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_REGION": "us-east-1",
    "AWS_DEFAULT_REGION": "us-east-1",
}

#: The export time tests pin, so keys are known: the seed page's example time.
EXPORT_TIME = datetime(2024, 4, 15, 10, 15, 0, tzinfo=UTC)


@pytest.fixture
async def metrics() -> AsyncIterator[FakeMetrics]:
    fake = await FakeMetrics().start()
    try:
        yield fake
    finally:
        await fake.stop()


@contextlib.asynccontextmanager
async def running_exporter(
    bus: FakeBus, metrics: FakeMetrics, now: datetime | None = EXPORT_TIME, **changes: Any
) -> AsyncIterator[asyncio.Event]:
    """The real worker with the csv-generator route, against the fakes and moto's S3."""
    settings = make_settings(bus, metrics_url=metrics.uri, **changes)
    clock = (lambda: now) if now else None
    async with build_router(settings, clock) as router, running_worker(settings, router) as stop:
        yield stop
