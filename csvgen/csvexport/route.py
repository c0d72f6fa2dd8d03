"""The ``external-service/csv-generator`` route: orchestration only.

On receipt (:meth:`CsvExport.prepare`, on the event loop, linear in the body):
validate and plan (plan.py) and refuse an export whose row estimate is over the
limit. When a slot frees (:meth:`CsvExport.run`): run the metric requests
concurrently (metrics.py),
reading each answer into a frame as soon as it is complete (answers.py) →
combine and sort (combine.py) → write the CSV to a temporary file
(csvwrite.py) → upload under a fresh key and sign a URL (storage.py) → reply.
CPU-heavy steps run in worker threads (polars releases the GIL), so the event
loop keeps serving the bus (pings, other requests) meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import functools
import logging
import re
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable, Generator, Iterator, Sequence
from datetime import UTC, datetime
from typing import IO, Any, Protocol
from urllib.parse import quote

import orjson
import polars as pl

from .. import telemetry
from ..config import Settings
from ..errors import (
    MAX_TEXT_CHARS,
    InternalError,
    MetricFailed,
    MetricTimeout,
    ReplyError,
    StorageFailed,
    TooLarge,
    UpstreamError,
    bounded,
    cut,
    echo,
)
from ..frames import Action, fingerprint
from ..metrics import AnswerBudget, AnswerSink
from ..routes import Job, Slot
from ..stores import ObjectStore, content_disposition
from . import outofcore
from .answers import (
    BATCH_BYTES,
    AnswerReader,
    ReadAgain,
    Records,
    RecordSpill,
    Schema,
    schema,
)
from .combine import combine, in_memory_cost
from .csvwrite import CsvWriter, WriteResult, spreadsheet_warnings
from .dialects import DIALECTS
from .leases import BucketReceipts, Lease
from .link import read_export
from .manifest import MANIFEST_SUFFIX, column_types, manifest, merge_types
from .plan import ExportPlan, Limits, MetricPlan, estimate_rows, make_plan, value_field
from .references import ReferenceCache

__all__ = ["ROUTE", "CsvExport", "MetricsSource"]

logger = logging.getLogger(__name__)

ROUTE = "external-service/csv-generator"
CSV_CONTENT_TYPE = "text/csv; charset=utf-8; header=present"
GZIP_CONTENT_TYPE = "application/gzip"


#: Records in the export's receipt the key stem its file is stored under (leases.py).
Claim = Callable[[str], Awaitable[None]]


class MetricsSource(Protocol):
    async def request(
        self, action: str, route: str, body: dict[str, Any], budget: AnswerBudget | None = None
    ) -> Any: ...

    async def request_into(
        self,
        action: str,
        route: str,
        body: dict[str, Any],
        sink: AnswerSink,
        budget: AnswerBudget | None = None,
    ) -> None: ...


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
        self.metrics = metrics
        self.storage = storage
        self.now = now
        self.references = references or ReferenceCache()

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
            error = exc if isinstance(exc, ReplyError) else InternalError()
            await _whole(self.receipts.release(got, error.as_json()["error"]))
            raise
        await _whole(self._keep(got, payload["body"][0]))
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
        # The records past half the budget go to disk (answers.py), removed once the rows
        # are written, or when the export ends, whatever the outcome.
        limit = self.settings.memory_budget_mb * 1024 * 1024 // 2
        spill = RecordSpill(limit, self.settings.spill_dir)
        try:
            return await self._export_spilling(rid, plan, fp, spill, claim)
        finally:
            await _remove_spilled(spill)

    async def _export_spilling(
        self, rid: str, plan: ExportPlan, fp: bytes, spill: RecordSpill, claim: Claim | None
    ) -> dict[str, Any]:
        started = self.now()
        clock = _Stages()
        answers, names, owner, mixed = await self._gather(plan, spill)
        held = [f for f in answers if isinstance(f, pl.DataFrame)]
        cost = in_memory_cost(held) if len(held) == len(answers) else None  # None: spilled
        del held  # combine drops each answer from ``answers`` once read
        if cost is None or cost > TRIM_AFTER_BYTES:  # a small export skips the 2-3 ms
            await asyncio.to_thread(_give_back_memory)
        clock.lap("fetch")
        rows: Callable[[], Generator[pl.DataFrame]]
        budget = self.settings.memory_budget_mb
        if cost is not None and cost < budget * 1024 * 1024:
            table = await asyncio.to_thread(
                functools.partial(combine, max_rows=self.settings.max_rows, consume=True),
                plan,
                answers,
                names,
            )
            rows = functools.partial(_single, table)
            del table  # held by rows until written
            clock.lap("combine")
        else:  # out of core: combined and sorted while written (outofcore.py)
            logger.info(
                "out of core id=%s: the answers' records cost more than %d MB%s",
                rid,
                budget,
                "" if cost is not None else "; spilled as read",
            )
            telemetry.OUT_OF_CORE.labels("false" if cost is not None else "true").inc()
            rows = functools.partial(
                outofcore.batches,
                plan,
                answers,
                names,
                memory_mb=budget,
                spill_dir=self.settings.spill_dir,
                max_rows=self.settings.max_rows,
            )
        del answers
        stem = f"{self.settings.key_prefix}/{_safe(owner)}/{started:%Y-%m-%dT%H-%M-%S}"
        extension = ".csv.gz" if plan.gzip else ".csv"
        content_type = GZIP_CONTENT_TYPE if plan.gzip else CSV_CONTENT_TYPE
        name = plan.metrics[0].name if plan.metrics else ""
        with _spill_file(self.settings.spill_dir) as f:
            with _disk_errors("the CSV"):
                written, count, types = await _write(plan, rows, f, mixed, self.settings.max_bytes)
            del rows  # the table is not needed during the upload
            await _remove_spilled(spill)
            clock.lap("write")
            if claim is not None:
                await claim(stem)  # the receipt names where the file goes, before it goes
            stored = await self.storage.put_new(
                stem,
                extension,
                f,
                written.size,
                content_type=content_type,
                disposition=content_disposition(name, extension),
                metadata={
                    "request-id": quote(rid, safe=""),  # any text, as ASCII a header can carry
                    "row-count": str(count),
                    "sha256": written.sha256,
                },
            )
        url, expires_at = self.storage.presign(stored.key, self.settings.url_expires_s)
        item = {
            "bucket": stored.bucket,
            "key": stored.key,
            "signedUrl": url,
            "expiresAt": expires_at,
            "rowCount": count,
            "sizeBytes": written.size,
            "sha256": written.sha256,
            "contentType": content_type,
            "warnings": bounded_warnings(
                [
                    *plan.warnings,
                    *(_mixed_warning(plan.columns[n].heading) for n in written.mixed),
                    *spreadsheet_warnings(plan.dialect, count),
                ]
            ),
            "manifestKey": stored.key + MANIFEST_SUFFIX,
        }
        document = manifest(
            rid=rid,
            request_fingerprint=fp,
            plan=plan,
            item=item,
            types=types,
            escaped=written.escaped,
            generated_at=started,
        )
        await self._store_manifest(stored.key, document)
        clock.lap("upload")
        logger.info("stages id=%s %s", rid, clock, extra={"fields": clock.fields(rid)})
        for stage, seconds in clock.laps:
            telemetry.STAGE_SECONDS.labels(stage).observe(seconds)
        telemetry.ROWS_WRITTEN.inc(count)
        telemetry.BYTES_WRITTEN.inc(written.size)
        return {"body": [item]}

    async def _store_manifest(self, key: str, document: dict[str, Any]) -> None:
        """Write ``{key}.manifest.json``; cancelled or failed, the export goes too: a reply
        never names an object without its manifest, or an object it did not keep."""
        data = orjson.dumps(document, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS)
        creating = asyncio.ensure_future(
            self.storage.create(key + MANIFEST_SUFFIX, data, "application/json")
        )
        try:
            if await asyncio.shield(creating) is None:
                raise StorageFailed(f"the manifest of {key!r} already exists")
        except BaseException:
            await _whole(self._undo_manifest(key, creating))
            raise

    async def _undo_manifest(self, key: str, creating: asyncio.Future[str | None]) -> None:
        """Once the manifest's write has settled (a cancelled wait does not stop it), remove
        what it and the upload stored."""
        with contextlib.suppress(Exception):
            await asyncio.wait({creating})
        landed = creating.done() and not creating.cancelled() and creating.exception() is None
        for gone in [key + MANIFEST_SUFFIX] * (landed and creating.result() is not None) + [key]:
            with contextlib.suppress(StorageFailed):
                await self.storage.delete(gone)

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

    # -- upstream ----------------------------------------------------------------

    async def _gather(
        self, plan: ExportPlan, spill: RecordSpill | None = None
    ) -> tuple[list[Records], dict[str, str], str, set[int]]:
        """Run the metric requests (bounded) and the reference lookup at once.

        Returns the records of each metric request, entity names, the export's owner and
        the CSV columns whose values mix numbers and text.

        Metric requests with the same route and upstream body are sent once.
        """
        limit = asyncio.Semaphore(self.settings.max_metric_concurrency)
        facet = "segments" if plan.dated else "summary"
        budget = AnswerBudget(self.settings.max_answer_bytes)

        async def one(metric: MetricPlan, fields: Schema | None, mixed: set[str]) -> Records:
            async with limit:
                return await self._metric(metric, budget, facet, fields, mixed, spill)

        same: dict[bytes, list[int]] = {}  # one upstream request → the metric requests it serves
        mixed_of: dict[int, set[str]] = {}
        for n, m in enumerate(plan.metrics):
            same.setdefault(fingerprint(m.route, m.body), []).append(n)
        try:
            async with asyncio.TaskGroup() as tg:
                task_of: dict[int, asyncio.Task[Records]] = {}
                for served in same.values():
                    mixed: set[str] = set()  # the reader adds the fields that mix types
                    first = plan.metrics[served[0]]
                    task = tg.create_task(one(first, _union(plan, served), mixed))
                    task_of.update(dict.fromkeys(served, task))
                    mixed_of.update(dict.fromkeys(served, mixed))
                refs = tg.create_task(self._reference_data(plan, budget))
        except ExceptionGroup as group:
            raise _first(group.exceptions) from None
        found = refs.result()
        names = {eid: str(r["name"]) for eid, r in found.items() if "name" in r}
        frames = [task_of[n].result() for n in range(len(plan.metrics))]
        mixed_columns = {
            n
            for n, c in enumerate(plan.columns)
            if c.metric is not None
            and not c.path
            and value_field(plan.metrics[c.metric], c) in mixed_of[c.metric]
        }
        return frames, names, _owner(plan.metrics[0], found), mixed_columns

    async def _metric(
        self,
        metric: MetricPlan,
        budget: AnswerBudget,
        facet: str,
        fields: Schema | None,
        mixed: set[str],
        spill: RecordSpill | None = None,
    ) -> Records:
        """One metric request's records, read as its answer arrives (answers.py).

        An answer the streaming reader cannot trust is asked for again and read whole
        (its first reading's bytes do not count against the budget twice).
        """
        timeout = self.settings.metric_timeout_s
        try:
            async with asyncio.timeout(timeout):
                inbox = _Inbox()
                try:
                    return await self._fetch(
                        metric,
                        budget,
                        inbox,
                        lambda: AnswerReader(facet, fields, mixed, spill=spill),
                    )
                except ReadAgain:
                    logger.info("the answer of %s is read again, whole", echo(metric.metric_id))
                    budget.give_back(inbox.fed)
                    return await self._fetch(
                        metric,
                        budget,
                        _Inbox(),
                        lambda: AnswerReader(facet, fields, mixed, whole=True, spill=spill),
                    )
        except TimeoutError:
            raise MetricTimeout(metric.metric_id, timeout) from None
        except UpstreamError as exc:
            raise MetricFailed(metric.metric_id, exc.message) from None

    async def _fetch(
        self,
        metric: MetricPlan,
        budget: AnswerBudget,
        inbox: _Inbox,
        new_reader: Callable[[], AnswerReader],
    ) -> Records:
        async def fetch() -> None:
            await self.metrics.request_into("metric", metric.route, metric.body, inbox, budget)
            inbox.close()

        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(fetch())
                reading = tg.create_task(_read(inbox, new_reader))
        except ExceptionGroup as group:
            raise group.exceptions[0] from None
        return reading.result()

    async def _reference_data(
        self, plan: ExportPlan, budget: AnswerBudget
    ) -> dict[str, dict[str, Any]]:
        """detail/list records: every entity when the CSV names entities, else the owner's.

        A failed lookup fails the export only when names are needed; the owner
        then falls back to the entity id (SPEC §5).
        """
        wanted: dict[str, set[str]] = {}
        if plan.needs_names:
            for m in plan.metrics:
                wanted.setdefault(m.entity_type, set()).update(m.entities)
        first = plan.metrics[0]
        if first.entity_type != "organisation":
            wanted.setdefault(first.entity_type, set()).add(first.entities[0])
        found: dict[str, dict[str, Any]] = {}
        for entity_type, ids in sorted(wanted.items()):
            try:
                found.update(await self._lookup(entity_type, sorted(ids), budget))
            except (UpstreamError, TimeoutError) as exc:
                if plan.needs_names:
                    raise MetricFailed("detail/list", str(exc) or "timed out") from None
                logger.warning(
                    "reference lookup failed (%s); the key uses the entity id", exc or "timed out"
                )
        return found

    async def _lookup(
        self, entity_type: str, ids: Sequence[str], budget: AnswerBudget
    ) -> dict[str, dict[str, Any]]:
        """Reference data (detail/list) for ``ids``: from the cache, else asked for."""
        found, missing = self.references.get(entity_type, ids)
        if missing:
            body = {"returnEntityType": entity_type, "entities": missing, "entityType": entity_type}
            async with asyncio.timeout(self.settings.metric_timeout_s):
                # Counted like metric answers: an endless detail answer is too_large too.
                answer = await self.metrics.request("detail", "detail/list", body, budget)
            records = [
                item
                for item in (answer if isinstance(answer, list) else ())
                if isinstance(item, dict) and isinstance(item.get("id"), str)
            ]
            self.references.put(entity_type, records)
            found.update((item["id"], item) for item in records)
        return found


class _Inbox:
    """An answer's parts on their way from the link (fed on the event loop) to its reader
    (in worker threads), a batch at a time."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []
        self.size = 0
        self.fed = 0  # bytes, every attempt
        self.generation = 0  # counts restarts: parts of an earlier attempt are dropped
        self.done = False
        self._wake = asyncio.Event()  # a batch is there (or the end)
        self._room = asyncio.Event()  # the reader has taken what was there
        self._room.set()

    def feed(self, part: bytes) -> None:
        self.parts.append(part)
        self.size += len(part)
        self.fed += len(part)
        if self.size >= BATCH_BYTES:
            self._wake.set()
            self._room.clear()

    def room(self) -> Awaitable[object] | None:
        """Backpressure: at most a batch and a part wait for the reader."""
        return None if self._room.is_set() else self._room.wait()

    def restart(self) -> None:
        self.parts, self.size = [], 0
        self.generation += 1
        self._wake.set()
        self._room.set()

    def close(self) -> None:
        self.done = True
        self._wake.set()

    async def take(self) -> tuple[list[bytes], int, bool]:
        """The parts fed since the last take (once a batch is there, or at the end)."""
        await self._wake.wait()
        self._wake.clear()
        parts, self.parts, self.size = self.parts, [], 0
        self._room.set()
        return parts, self.generation, self.done


async def _read(inbox: _Inbox, new_reader: Callable[[], AnswerReader]) -> Records:
    """Feed an answer's parts to a reader as they come, in worker threads; its frame."""
    reader, generation = new_reader(), 0
    try:
        while True:
            parts, now, done = await inbox.take()
            if now != generation:
                reader.close()
                reader, generation = new_reader(), now
            if done:
                return await asyncio.to_thread(_finish, reader, parts)
            if parts:
                await asyncio.to_thread(reader.feed, parts)
    finally:
        reader.close()


@contextlib.contextmanager
def _spill_file(directory: str | None) -> Iterator[IO[bytes]]:
    """An unnamed temporary file for the CSV: gone when closed, or when the process dies."""
    with _disk_errors("the CSV"):
        f = tempfile.TemporaryFile(prefix="csvgen-", dir=directory)  # noqa: SIM115 (closed below)
    with f:
        yield f


@contextlib.contextmanager
def _disk_errors(what: str) -> Iterator[None]:
    try:
        yield
    except OSError as exc:
        raise StorageFailed.spill(what, exc) from None


async def _remove_spilled(spill: RecordSpill) -> None:
    """Remove an export's spilled records: off the event loop when there are any (files
    of hundreds of MB), and to the end even if the export is cancelled meanwhile."""
    if spill.wrote:
        await asyncio.shield(asyncio.to_thread(spill.close))
    else:
        spill.close()  # nothing to remove; no reader's thread writes after this


def _finish(reader: AnswerReader, parts: list[bytes]) -> Records:
    reader.feed(parts)
    return reader.finish()


def _mixed_warning(heading: str) -> str:
    return (
        f"column {echo(heading)}: the Metrics API answered numbers and text in one field; "
        "numbers are written as numbers, text cells as text"
    )


def bounded_warnings(warnings: list[str]) -> list[str]:
    """At most MAX_DETAILS warnings (then ``… and N more warnings``), all small (SPEC §8)."""
    kept, more = bounded([cut(w, MAX_TEXT_CHARS) for w in warnings], "warnings")
    return [*kept, more] if more else kept


def _union(plan: ExportPlan, served: list[int]) -> Schema | None:
    """The fields the metric requests ``served`` read from their one shared answer (None: infer)."""
    reads: list[tuple[str, str]] = []
    for m in served:
        own = plan.metrics[m].reads
        if own is None:
            return None
        reads += own
    return schema(reads)


def _owner(metric: MetricPlan, found: dict[str, dict[str, Any]]) -> str:
    """The organisation of the first entity, else that entity's id (SPEC §5)."""
    first = metric.entities[0]
    if metric.entity_type == "organisation":
        return first
    org = found.get(first, {}).get("organisation_id")
    return org if isinstance(org, str) and org else first


class _Stages:
    """Wall time per stage of one export, for the log (and `make bench`)."""

    def __init__(self) -> None:
        self.laps: list[tuple[str, float]] = []
        self.last = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.laps.append((name, now - self.last))
        self.last = now

    def __str__(self) -> str:
        return " ".join(f"{name}={seconds:.3f}s" for name, seconds in self.laps)

    def fields(self, rid: str) -> dict[str, Any]:
        """For a JSON log line: the id and each stage's seconds."""
        return {"id": rid, "stages": {name: round(s, 6) for name, s in self.laps}}


#: Exports whose answers cost more than this in memory hand freed heap back after the fetch.
TRIM_AFTER_BYTES = 64 * 1024 * 1024


def _give_back_memory() -> None:
    """Hand the heap pages of freed answer parts back to the system (glibc keeps them:
    the huge benchmark export held 0.5 GB of them into its join; with this its peak
    went from 1.58-1.61 GB to 1.42-1.45 GB). Elsewhere than glibc, nothing to do."""
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


def _libc() -> Any:
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return None
    return libc if hasattr(libc, "malloc_trim") else None


_LIBC = _libc()


def _single(table: pl.DataFrame) -> Generator[pl.DataFrame]:
    yield table


async def _write(
    plan: ExportPlan,
    rows: Callable[[], Generator[pl.DataFrame]],
    f: IO[bytes],
    mixed: set[int],
    max_bytes: int,
) -> tuple[WriteResult, int, list[tuple[str, int]]]:
    """Write the CSV in a worker thread, a batch of rows at a time; with the row count and
    the columns' types for the manifest. Cancelled, or past ``max_bytes``
    (``CSVGEN_MAX_BYTES``: too_large), the thread stops at its next batch."""
    stop = threading.Event()
    work = asyncio.ensure_future(
        asyncio.to_thread(_write_rows, plan, rows, f, mixed, max_bytes, stop)
    )
    try:
        return await asyncio.shield(work)
    except asyncio.CancelledError:
        stop.set()
        with contextlib.suppress(BaseException):
            await work  # its spill files are gone before the export ends
        raise


def _write_rows(
    plan: ExportPlan,
    rows: Callable[[], Generator[pl.DataFrame]],
    f: IO[bytes],
    mixed: set[int],
    max_bytes: int,
    stop: threading.Event,
) -> tuple[WriteResult, int, list[tuple[str, int]]]:
    headings = [c.heading for c in plan.columns]
    dialect = DIALECTS[plan.dialect]
    writer = CsvWriter(headings, f, dialect=dialect, compress=plan.gzip, mixed=mixed)
    types: list[tuple[str, int]] | None = None
    with contextlib.closing(rows()) as batches:
        for batch in batches:
            if stop.is_set():
                raise asyncio.CancelledError
            writer.write(batch)
            if writer.size > max_bytes:
                raise TooLarge(
                    f"the export is at least {writer.size} bytes; the limit is {max_bytes}"
                )
            kinds = column_types(plan, batch)
            types = kinds if types is None else merge_types(types, kinds)
    result = writer.close()
    if result.size > max_bytes:  # the gzip trailer
        raise TooLarge(f"the export is {result.size} bytes; the limit is {max_bytes}")
    f.flush()
    assert types is not None  # every source yields a batch, maybe empty
    return result, writer.rows, types


def _safe(part: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", part).strip(".") or "_"


async def _whole(aw: Awaitable[None]) -> None:
    """Await ``aw`` to its end even if this task is cancelled meanwhile (the bucket's
    state is settled first); then the cancellation goes on."""
    task = asyncio.ensure_future(aw)
    try:
        await asyncio.shield(task)
    except asyncio.CancelledError:
        while not task.done():
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait({task})
        raise


def _first(errors: Sequence[BaseException]) -> BaseException:
    for exc in errors:
        if isinstance(exc, ReplyError):
            return exc
    return errors[0]
