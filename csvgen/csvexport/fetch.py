"""The fetch stage: an export's metric requests and reference data, read into records.

Each metric request runs against the Metrics API (metrics.py), bounded in number at once
and in time; its answer is read into records as its parts arrive, in worker threads
(answers.py), spilled to disk past half the memory budget. Identical upstream requests
are sent once. The stage reports requests, bytes and records into the export's
:class:`~csvgen.csvexport.progress.Progress`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import polars as pl

from ..config import Settings
from ..errors import MetricFailed, MetricTimeout, ReplyError, UpstreamError, echo
from ..frames import fingerprint
from ..metrics import AnswerBudget, AnswerSink
from .answers import BATCH_BYTES, AnswerReader, ReadAgain, Records, RecordSpill, Schema, schema
from .plan import ExportPlan, MetricPlan, value_field
from .progress import Progress
from .references import ReferenceCache

__all__ = ["Fetched", "Fetcher", "MetricsSource"]

logger = logging.getLogger(__name__)


@dataclass(slots=True)
class Fetched:
    """What the fetch stage hands on: each metric request's records, entity names, the
    export's owner and the columns whose upstream values mix numbers and text."""

    records: list[Records]
    names: dict[str, str]
    owner: str
    mixed: set[int]


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


class Fetcher:
    def __init__(
        self, settings: Settings, metrics: MetricsSource, references: ReferenceCache
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.references = references

    async def fetch(
        self, plan: ExportPlan, spill: RecordSpill | None = None, progress: Progress | None = None
    ) -> Fetched:
        """Run the metric requests (bounded) and the reference lookup at once.

        Metric requests with the same route and upstream body are sent once.
        """
        progress = progress or Progress()
        limit = asyncio.Semaphore(self.settings.max_metric_concurrency)
        facet = "segments" if plan.dated else "summary"
        budget = AnswerBudget(self.settings.max_answer_bytes)

        async def one(metric: MetricPlan, fields: Schema | None, mixed: set[str]) -> Records:
            async with limit:
                records = await self._metric(metric, budget, facet, fields, mixed, spill, progress)
            progress.metric_requests_done += 1
            if isinstance(records, pl.DataFrame):  # a spilled answer's count is not read
                progress.records_received += records.height
            return records

        same: dict[bytes, list[int]] = {}  # one upstream request → the metric requests it serves
        mixed_of: dict[int, set[str]] = {}
        for n, m in enumerate(plan.metrics):
            same.setdefault(fingerprint(m.route, m.body), []).append(n)
        progress.metric_requests = len(same)
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
        return Fetched(frames, names, _owner(plan.metrics[0], found), mixed_columns)

    async def _metric(
        self,
        metric: MetricPlan,
        budget: AnswerBudget,
        facet: str,
        fields: Schema | None,
        mixed: set[str],
        spill: RecordSpill | None,
        progress: Progress,
    ) -> Records:
        """One metric request's records, read as its answer arrives (answers.py).

        An answer the streaming reader cannot trust is asked for again and read whole
        (its first reading's bytes do not count against the budget twice).
        """
        timeout = self.settings.metric_timeout_s
        try:
            async with asyncio.timeout(timeout):
                inbox = _Inbox(progress)
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
                        _Inbox(progress),
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

    def __init__(self, progress: Progress) -> None:
        self.progress = progress
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
        self.progress.bytes_received += len(part)
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


def _finish(reader: AnswerReader, parts: list[bytes]) -> Records:
    reader.feed(parts)
    return reader.finish()


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


def _first(errors: Sequence[BaseException]) -> BaseException:
    for exc in errors:
        if isinstance(exc, ReplyError):
            return exc
    return errors[0]
