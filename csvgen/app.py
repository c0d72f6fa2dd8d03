"""Wiring: the routes csvgen serves and the clients they share."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from datetime import datetime

from .config import Settings
from .csvexport.route import ROUTE, CsvExport
from .metrics import MetricsClient
from .routes import Router
from .stores.s3 import S3Store


@contextlib.asynccontextmanager
async def build_router(
    settings: Settings, now: Callable[[], datetime] | None = None
) -> AsyncIterator[Router]:
    """The router with ``external-service/csv-generator``; its clients close on exit.

    ``now`` pins the export time (tests); by default it is the UTC clock.
    """
    async with MetricsClient(settings) as metrics:
        storage = S3Store(settings.bucket)
        export = (
            CsvExport(settings, metrics, storage, now=now)
            if now
            else CsvExport(settings, metrics, storage)
        )
        router = Router()
        router.add(ROUTE, prepare=export.prepare, replay=export.replay, summarize=export.summarize)
        yield router
