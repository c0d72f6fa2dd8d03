"""The ``external-service/csv-generator`` route: the orchestration of an export's stages.

On receipt (:meth:`CsvExport.prepare`, on the event loop, linear in the body): validate
and plan (plan.py) and refuse an export whose row estimate is over the limit. Then
(:meth:`CsvExport.run`): the receipt in the bucket (leases.py), and under its lease, in
an export slot, the stages, each in a module with one job:

    fetch (fetch.py)  →  combine (table.py)  →  write (files.py)  →  upload (store.py)

reporting into one :class:`~csvgen.csvexport.progress.Progress`. CPU-heavy steps run in
worker threads (polars and DuckDB release the GIL), so the event loop keeps serving the
bus meanwhile. Every stage can be cancelled (the lease lost, the deadline, a drain): it
stops at its next await or batch and leaves nothing behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from .. import telemetry
from ..config import Settings
from ..errors import InternalError, ReplyError, StorageFailed, TooLarge
from ..frames import Action
from ..routes import Job, Slot
from ..stores import ObjectStore
from .answers import RecordSpill
from .fetch import Fetcher, MetricsSource
from .files import spill_file, write
from .leases import BucketReceipts, Lease
from .link import read_export
from .plan import ExportPlan, Limits, estimate_rows, make_plan
from .progress import Progress
from .references import ReferenceCache
from .settle import whole
from .store import Claim, store
from .table import rows_of

__all__ = ["ROUTE", "CsvExport", "MetricsSource"]

logger = logging.getLogger(__name__)

ROUTE = "external-service/csv-generator"


class CsvExport:
    def __init__(
        self,
        settings: Settings,
        metrics: MetricsSource,
        storage: ObjectStore,
        *,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
        references: ReferenceCache | None = None,
        receipts: BucketReceipts | None = None,
    ) -> None:
        self.settings = settings
        self.receipts = receipts
        self.storage = storage
        self.now = now
        self.fetcher = Fetcher(settings, metrics, references or ReferenceCache())

    def prepare(self, action: Action) -> Job:
        """Validate and plan on receipt; the job holds the plan, not the body.

        Raises:
            InvalidRequest: the body breaks a rule.
            TooLarge: the plan's row estimate is over ``CSVGEN_MAX_ROWS``.
        """
        limits = Limits(self.settings.max_metric_requests, self.settings.max_columns)
        plan = make_plan(action.body, limits)
        bound = estimate_rows(plan)
        if bound is not None and bound > self.settings.max_rows:
            raise TooLarge(
                f"the export could have up to {bound} rows; the limit is {self.settings.max_rows}"
                " (ask for fewer days, entities or breakdowns, or split the export)"
            )
        return functools.partial(self.run, action.id, plan)

    async def run(self, rid: str, plan: ExportPlan, fp: bytes, slot: Slot) -> dict[str, Any]:
        """The export, once across replicas when receipts live in the bucket (leases.py).

        Waiting for another replica's export holds no slot; a lease is renewed from the
        moment it is held, while this export waits for its slot too."""
        if self.receipts is None:
            async with slot():
                return await self._export(rid, plan, fp)
        got = await self.receipts.acquire(rid, fp, self._checked)
        if not isinstance(got, Lease):
            return await self.replay({"body": [got]})  # done by a replica, or before a restart
        claim = functools.partial(self.receipts.claim, got)
        try:
            payload = await self.receipts.run(got, lambda: self._in(slot, rid, plan, fp, claim))
        except BaseException as exc:
            await whole(self.receipts.release(got, _terminal(exc)))
            raise
        await whole(self._keep(got, payload["body"][0]))
        return payload

    async def _in(
        self, slot: Slot, rid: str, plan: ExportPlan, fp: bytes, claim: Claim
    ) -> dict[str, Any]:
        async with slot():
            return await self._export(rid, plan, fp, claim)

    async def _checked(self, item: dict[str, Any]) -> dict[str, Any] | None:
        """A finished receipt's export, rebuilt from its manifest as the link route does."""
        return await read_export(self.storage, self.settings.key_prefix, item.get("key"))

    async def _keep(self, lease: Lease, item: dict[str, Any]) -> None:
        """The receipt records the export; if it cannot, the export and its manifest go
        before the error is answered: no reply or receipt names an object not kept."""
        assert self.receipts is not None
        try:
            await self.receipts.finish(lease, item)
        except BaseException:
            for key in (item["manifestKey"], item["key"]):  # never a manifest without its export
                with contextlib.suppress(StorageFailed):
                    await self.storage.delete(key)
            raise

    async def _export(
        self, rid: str, plan: ExportPlan, fp: bytes, claim: Claim | None = None
    ) -> dict[str, Any]:
        """The stages. The records past half the budget go to disk (answers.py), removed
        once the rows are written, or when the export ends, whatever the outcome."""
        started, progress = self.now(), Progress(rid)
        settings = self.settings
        spill = RecordSpill(settings.memory_budget_mb * 1024 * 1024 // 2, settings.spill_dir)
        try:
            progress.enter("fetch")
            fetched = await self.fetcher.fetch(plan, spill, progress)
            rows = await rows_of(rid, plan, fetched, settings, progress)
            with spill_file(settings.spill_dir) as f:
                progress.enter("write")
                written = await write(plan, rows, f, fetched.mixed, settings.max_bytes, progress)
                del rows  # the table is not needed during the upload
                await _remove_spilled(spill)
                progress.enter("upload")
                export = (rid, fp, plan)
                item = await store(
                    self.storage, settings, export, fetched.owner, started, f, written, claim,
                    progress,
                )  # fmt: skip
        finally:
            await _remove_spilled(spill)
        progress.enter("done")
        logger.info("stages id=%s %s", rid, progress, extra={"fields": progress.fields(rid)})
        for stage, seconds in progress.laps:
            telemetry.STAGE_SECONDS.labels(stage).observe(seconds)
        telemetry.ROWS_WRITTEN.inc(written.rows)
        telemetry.BYTES_WRITTEN.inc(written.result.size)
        return {"body": [item]}

    async def replay(self, payload: dict[str, Any]) -> dict[str, Any]:
        """A repeated request: the same object, with a freshly signed URL."""
        item = dict(payload["body"][0])
        item["signedUrl"], item["expiresAt"] = self.storage.presign(
            item["key"], self.settings.url_expires_s
        )
        return {"body": [item]}

    @staticmethod
    def summarize(payload: dict[str, Any]) -> dict[str, Any]:
        item = payload["body"][0]
        return {"rows": item["rowCount"], "bytes": item["sizeBytes"], "key": item["key"]}


def _terminal(exc: BaseException) -> dict[str, Any]:
    """The error a failed export's terminal receipt keeps (SPEC §11): its reply's, or for a
    cancellation (the deadline, a drain: the dispatcher answers it) ``interrupted``."""
    if isinstance(exc, asyncio.CancelledError):
        return {"code": "interrupted", "message": "the export was stopped before it ended"}
    error = exc if isinstance(exc, ReplyError) else InternalError()
    return {k: v for k, v in error.as_json()["error"].items() if k in ("code", "message")}


async def _remove_spilled(spill: RecordSpill) -> None:
    """Remove an export's spilled records: off the event loop when there are any (files
    of hundreds of MB), and to the end even if the export is cancelled meanwhile."""
    if spill.wrote:
        await asyncio.shield(asyncio.to_thread(spill.close))
    else:
        spill.close()  # nothing to remove; no reader's thread writes after this
