"""Receipts in the bucket: one export per request id across replicas and restarts (SPEC §9).

The only shared state is the store, through conditional writes. When an export is
admitted, :meth:`BucketReceipts.acquire` creates ``{prefix}/.receipts/{sha256(id)}.json``
with ``If-None-Match: *``, holding a lease (the fingerprint, this replica, the start).
What it finds instead decides:

* a **finished** receipt younger than the dedupe window: with the same fingerprint, the
  export it names, checked by the caller against the export's manifest (a receipt that
  fails the check is junk); another fingerprint: ``invalid_request`` at path ``id``;
* a **running** receipt: while its ETag keeps changing (its replica renews it), this
  replica waits and answers with that export's result; once the ETag has stood still
  for a whole lease **on this replica's monotonic clock**, its replica is gone and the
  receipt is taken over. Wall clocks of two machines are never compared;
* a **terminal** receipt (failed, cancelled), an old finished one or junk: taken over.

Every write of a receipt after its creation is conditional on the ETag this replica
holds (``If-Match``): a renewal, the finished receipt, the terminal one. While the
export runs, :meth:`BucketReceipts.run` renews the lease every third of it, each
renewal under a timeout well under that. A renewal refused (another replica took the
receipt over), timed out, or unable to land before the lease ends on this replica's
clock stops the export at once (cancelled at its next cancellation point, leaving
nothing) and its requesters get :class:`~csvgen.errors.LeaseLost`, a retryable error.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import socket
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import quote

import orjson

from ..errors import LeaseLost, StorageFailed
from ..receipts import reused
from ..stores import ObjectStore
from .manifest import MANIFEST_SUFFIX
from .settle import whole

__all__ = ["MAX_RECEIPT_BYTES", "BucketReceipts", "Lease"]

logger = logging.getLogger(__name__)

REPLICA = f"{socket.gethostname()}-{os.getpid()}"
JSON = "application/json"
#: A receipt read back is at most this big (its item's warnings are bounded to 64 KiB).
MAX_RECEIPT_BYTES = 256 * 1024
#: Key stems a receipt keeps at most (its own, and those of holders that died).
MAX_STEMS = 8
#: Attempts at the final (finished or terminal) write of a receipt.
FINAL_ATTEMPTS = 5

T = TypeVar("T")
#: Checks a finished receipt's item: the export's fields, or None when it is no export.
Check = Callable[[dict[str, Any]], Awaitable[dict[str, Any] | None]]


@dataclass(slots=True)
class Lease:
    """This replica's hold on a receipt: ``etag`` follows each renewal, ``deadline`` (this
    process's monotonic clock) is when the lease ends unless renewed before."""

    key: str
    etag: str
    fingerprint: str
    started: float
    deadline: float
    lost: bool = field(default=False)
    stems: list[str] = field(default_factory=list)  # claimed key stems (claim), inherited too
    leftovers: tuple[str, list[str]] | None = None  # (id, stems) of a dead holder to clean
    writing: asyncio.Lock = field(default_factory=asyncio.Lock)  # one write at a time


class BucketReceipts:
    def __init__(
        self,
        store: ObjectStore,
        prefix: str,
        *,
        lease_s: float,
        dedupe_ttl_s: float,
        poll_s: float | None = None,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        replica: str = REPLICA,
    ) -> None:
        self.store = store
        self.replica = replica
        self.prefix = prefix
        self.lease_s = lease_s
        self.dedupe_ttl_s = dedupe_ttl_s
        self.poll_s = poll_s if poll_s is not None else min(1.0, lease_s / 3)
        self.clock = clock
        self.monotonic = monotonic
        #: Each renewal must land within this, well under the renewal interval (a third).
        self.renewal_timeout_s = lease_s / 4

    def key(self, rid: str) -> str:
        return f"{self.prefix}/.receipts/{hashlib.sha256(rid.encode()).hexdigest()}.json"

    async def acquire(
        self, rid: str, fingerprint: bytes, check: Check | None = None
    ) -> Lease | dict[str, Any]:
        """A lease to run the export, or the (checked) object fields of the export done."""
        key, fp = self.key(rid), fingerprint.hex()
        seen: tuple[str, float] | None = None  # a running receipt's etag, and since when
        waiting, create = False, True
        while True:
            if create:
                sent = self.monotonic()
                etag = await self.store.create(key, self._lease(fp), JSON)
                if etag is not None:
                    return Lease(key, etag, fp, self.clock(), sent + self.lease_s)
            create = True
            found = await self.store.read(key, MAX_RECEIPT_BYTES)
            if found is None:
                continue  # gone between the two calls: create again
            doc = _receipt(found.data)
            # Fingerprints are compared within the dedupe window only (by the writer's
            # clock: the window is minutes, a skew of seconds does not matter there).
            recent = doc is not None and abs(self.clock() - doc["at"]) < self.dedupe_ttl_s
            live = doc is not None and doc["state"] in ("running", "done")
            if doc is not None and recent and live and doc["fingerprint"] != fp:
                raise reused(rid)
            if doc is not None and recent and doc["state"] == "done":
                item = doc["item"] if check is None else await check(doc["item"])
                if item is not None:
                    return item
                logger.warning("request %s: its finished receipt names no export", rid)
            elif doc is not None and doc["state"] == "running" and doc["replica"] != self.replica:
                now = self.monotonic()
                if seen is None or seen[0] != found.etag:
                    seen = (found.etag, now)
                if now - seen[1] < self.lease_s:
                    if not waiting:
                        logger.info(
                            "request %s: waiting for %s, which runs it", rid, doc["replica"]
                        )
                        waiting = True
                    await asyncio.sleep(self.poll_s)
                    create = False  # it is there: read it again, no create to refuse
                    continue
            # A lease that stood still for a whole lease (its replica died), one of this very
            # process that none of its exports holds (its final write failed: the dispatcher
            # admits an id once), a terminal or old receipt, or an object that is no
            # receipt of csvgen's: take it over.
            # A dead holder's claimed stems (or those a failed holder could not clean up) are
            # kept in the new lease until their leftovers are gone, so that a replica that
            # dies or fails cleaning them up passes them on.
            stems = self._stems(doc["stems"]) if doc is not None and doc["state"] != "done" else []
            sent = self.monotonic()
            etag = await self.store.replace(key, self._lease(fp, None, stems), JSON, found.etag)
            if etag is not None:
                holder = doc["replica"] if doc is not None else "nobody"
                logger.warning("request %s: took over the receipt of %s", rid, holder)
                lease = Lease(key, etag, fp, self.clock(), sent + self.lease_s, stems=stems)
                lease.leftovers = (rid, list(stems))  # removed under the lease (run)
                return lease
            seen = None

    async def run(self, lease: Lease, work: Callable[[], Awaitable[T]]) -> T:
        """``work()`` while the lease is renewed; stopped at once if the lease is lost.

        Renewals are stopped between two writes, never cancelled during one: a write cut
        short would still land, and the etag :meth:`finish` needs would be lost.

        Raises:
            LeaseLost: a renewal failed or could not land in time; ``work`` was cancelled
                and has cleaned up.
        """
        job = asyncio.ensure_future(self._after_leftovers(lease, work))
        stop = asyncio.Event()
        renewing = asyncio.create_task(self._renew(lease, stop))
        try:
            await asyncio.wait({job, renewing}, return_when=asyncio.FIRST_COMPLETED)
            if not job.done():  # the lease is lost
                job.cancel(msg="the lease was lost")
                await asyncio.wait({job})
                raise LeaseLost(self.store.bucket)
            return job.result()
        finally:
            stop.set()
            if not job.done():  # this task was cancelled: so is the work, to its end
                job.cancel()
                await asyncio.wait({job})
            await asyncio.shield(renewing)

    async def claim(self, lease: Lease, stem: str) -> None:
        """Record in the receipt, before the upload, where the export's file goes: a
        replica that takes over a lease whose replica was killed removes what it left.

        Raises:
            LeaseLost: the lease is lost.
        """
        if stem not in lease.stems:
            lease.stems = [*lease.stems, stem][-MAX_STEMS:]
        if not await self._renewed(lease):
            raise LeaseLost(self.store.bucket)

    async def _renewed(self, lease: Lease) -> bool:
        """One write of the running receipt (a renewal, a claim), one at a time; a write
        under way ends first even if this task is cancelled, so its etag stays known.
        False (and ``lease.lost``) when the lease is lost."""
        async with lease.writing:
            lost = "lost before" if lease.lost else await whole(self._renew_once(lease))
        if lost is not None:
            lease.lost = True
            logger.warning("lost the lease %s (%s): the export stops", lease.key, lost)
        return lost is None

    def _stems(self, claimed: Any) -> list[str]:
        """The key stems a receipt claims that are export stems under the prefix."""
        if not isinstance(claimed, list):
            return []
        return [
            s
            for s in claimed[-MAX_STEMS:]
            if isinstance(s, str) and s.startswith(self.prefix + "/") and ".." not in s
        ]

    async def _remove_leftovers(self, rid: str, stem: str) -> None:
        """Delete the files (and manifests) a dead holder of ``rid``'s lease stored under
        a stem its receipt claimed: the export runs anew, and one object results."""
        for key in await self.store.uploads_of(stem, quote(rid, safe="")):
            if key.endswith(MANIFEST_SUFFIX):
                continue  # removed with its export
            logger.warning("request %s: removed %s, left by a replica that died", rid, key)
            for gone in (key + MANIFEST_SUFFIX, key):  # the object last: a next cleanup finds it
                await self.store.delete(gone)

    async def _after_leftovers(self, lease: Lease, work: Callable[[], Awaitable[T]]) -> T:
        """``work()``, once what a dead holder of the lease left is removed."""
        if lease.leftovers is not None:
            rid, stems = lease.leftovers
            for stem in stems:
                await self._remove_leftovers(rid, stem)
            lease.leftovers = None
        return await work()

    async def finish(self, lease: Lease, item: dict[str, Any]) -> None:
        """The export succeeded: the receipt keeps its object fields (no URL).

        Retried while the store fails (a write that failed may still have landed: a
        refused retry reads the receipt back to tell).

        Raises:
            LeaseLost: another replica holds the receipt now.
            StorageFailed: the store kept failing.
        """
        kept = {k: v for k, v in item.items() if k not in ("signedUrl", "expiresAt")}
        await self._final(lease, {"state": "done", "item": kept})

    async def release(self, lease: Lease, error: dict[str, Any]) -> None:
        """The export failed: a terminal receipt with its error, so the same id may be
        retried (it is taken over). Nothing is written on a lease this replica lost."""
        if lease.lost:
            return
        fields: dict[str, Any] = {"state": "failed", "error": error}
        if lease.leftovers is not None:  # not removed yet: the next holder removes them
            fields["stems"] = lease.leftovers[1]
        try:
            await self._final(lease, fields)
        except (LeaseLost, StorageFailed) as exc:
            logger.warning("the receipt %s was left as it was: %s", lease.key, exc)

    async def _final(self, lease: Lease, fields: dict[str, Any]) -> None:
        now = self.clock()
        doc = {
            **fields,
            "fingerprint": lease.fingerprint,
            "replica": self.replica,
            "startedAt": lease.started,
            "updatedAt": now,
            "finishedAt": now,
            "write": uuid.uuid4().hex,  # tells this write from any other
        }
        data = orjson.dumps(doc)
        for attempt in range(FINAL_ATTEMPTS):
            try:
                etag = await self.store.replace(lease.key, data, JSON, lease.etag)
            except StorageFailed:
                if attempt == FINAL_ATTEMPTS - 1:
                    raise
                await asyncio.sleep(0.05 * 2**attempt)
                continue
            if etag is None:
                found = await _read_quietly(self.store, lease.key)
                if found is not None and found.data == data:
                    etag = found.etag  # an earlier attempt landed after all
                else:
                    lease.lost = True
                    raise LeaseLost(self.store.bucket)
            lease.etag = etag
            return

    async def _renew(self, lease: Lease, stop: asyncio.Event) -> None:
        """Renew until ``stop``; returns early (``lease.lost``) when the lease is lost."""
        while True:
            # Every third of the lease, counted from when the last write was sent (not
            # from when its answer came), so a slow answer does not eat into the next.
            due = lease.deadline - self.lease_s * 2 / 3 - self.monotonic()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.0, due)):
                    await stop.wait()
            if stop.is_set() or not await self._renewed(lease):
                return

    async def _renew_once(self, lease: Lease) -> str | None:
        """One renewal, retried while the store blinks and the lease still has time; None
        when it landed, else why the lease is lost."""
        data = self._lease(lease.fingerprint, lease.started, lease.stems)
        while (left := lease.deadline - self.monotonic()) > 0:
            sent = self.monotonic()
            try:
                async with asyncio.timeout(min(self.renewal_timeout_s, left)):
                    etag = await self.store.replace(lease.key, data, JSON, lease.etag)
            except TimeoutError:
                return "a renewal timed out"  # it may land later: its etag would be unknown
            except StorageFailed:
                await asyncio.sleep(min(0.1, self.renewal_timeout_s))
                continue
            if etag is None:
                return "another replica took the receipt over"
            lease.etag, lease.deadline = etag, sent + self.lease_s
            return None
        return "the store failed until the lease ended"

    def _lease(
        self, fp: str, started: float | None = None, stems: list[str] | None = None
    ) -> bytes:
        now = self.clock()
        doc: dict[str, Any] = {
            "state": "running",
            "fingerprint": fp,
            "replica": self.replica,
            "startedAt": now if started is None else started,
            "updatedAt": now,
            "leaseS": self.lease_s,
            "write": uuid.uuid4().hex,  # every renewal changes the etag
        }
        if stems:
            doc["stems"] = stems
        return orjson.dumps(doc)


async def _read_quietly(store: ObjectStore, key: str) -> Any:
    try:
        return await store.read(key, MAX_RECEIPT_BYTES)
    except StorageFailed:
        return None


def _receipt(data: bytes) -> dict[str, Any] | None:
    """A receipt's fields (``at``: when it was last written, by its writer's clock), or
    None when the object is no receipt csvgen wrote: then it is taken over, never trusted."""
    if len(data) > MAX_RECEIPT_BYTES:
        return None
    try:
        doc = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(doc, dict) or not isinstance(doc.get("fingerprint"), str):
        return None
    if doc.get("state") not in ("running", "done", "failed", "cancelled"):
        return None
    at = doc.get("updatedAt")
    if not isinstance(at, int | float) or isinstance(at, bool):
        return None
    if doc["state"] == "done" and not isinstance(doc.get("item"), dict):
        return None
    return {
        **doc,
        "at": float(at),
        "replica": str(doc.get("replica"))[:200],
        "stems": doc.get("stems"),
    }
