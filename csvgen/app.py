"""Wiring: the routes csvgen serves and the clients they share."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from datetime import datetime

from . import telemetry
from .config import Settings
from .csvexport.leases import BucketReceipts
from .csvexport.link import LINK_ROUTE, ExportLinks
from .csvexport.route import ROUTE, CsvExport
from .csvexport.workdirs import sweep
from .errors import ConfigError
from .metrics import MetricsClient
from .routes import Router
from .stores.s3 import S3Store

logger = logging.getLogger(__name__)


@contextlib.asynccontextmanager
async def build_router(
    settings: Settings, now: Callable[[], datetime] | None = None
) -> AsyncIterator[Router]:
    """The router with ``external-service/csv-generator``; its clients close on exit.

    ``now`` pins the export time (tests); by default it is the UTC clock.
    """
    removed = await asyncio.to_thread(sweep, settings.spill_dir)
    telemetry.SWEPT_DIRS.inc(removed)
    if removed:
        logger.warning("work directories of killed workers removed from the spill dir: %d", removed)
    async with MetricsClient(settings) as metrics:
        storage = S3Store(settings.bucket)
        await check_store(settings, storage)
        # With an unsafe store there is no cross-replica promise: the memory of this
        # process is all there is.
        receipts = (
            None
            if settings.unsafe_store
            else BucketReceipts(
                storage,
                settings.key_prefix,
                lease_s=settings.lease_s,
                dedupe_ttl_s=settings.dedupe_ttl_s,
            )
        )
        export = CsvExport(settings, metrics, storage, receipts=receipts)
        if now is not None:
            export.now = now
        router = Router()
        router.add(ROUTE, prepare=export.prepare, replay=export.replay, summarize=export.summarize)
        links = ExportLinks(settings, storage)
        router.add(LINK_ROUTE, prepare=links.prepare)
        yield router


async def check_store(settings: Settings, storage: S3Store) -> None:
    """Refuse to start on a store that ignores conditional writes (SPEC §9): a second
    create with ``If-None-Match: *`` and a replace with a wrong ``If-Match`` must fail.

    Raises:
        ConfigError: it does, and ``CSVGEN_UNSAFE_STORE`` is not set.
    """
    if settings.unsafe_store:
        logger.warning(
            "CSVGEN_UNSAFE_STORE=1: the store is not checked; replicas may overwrite "
            "each other's files and repeat each other's exports"
        )
        return
    if not await storage.honours_conditions(settings.key_prefix):
        raise ConfigError(
            [
                f"the store at bucket {settings.bucket!r} does not refuse a second "
                "conditional create (If-None-Match: *) or a replace of a changed object "
                "(If-Match): replicas could overwrite each other's files and receipts; "
                "use a store that honours conditional writes, or set "
                "CSVGEN_UNSAFE_STORE=1 to run without that promise"
            ]
        )
