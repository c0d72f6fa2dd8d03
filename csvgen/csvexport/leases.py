"""Receipts in the bucket: one export per request id across replicas and restarts (SPEC §9).

The only shared state is the store, through conditional writes. When an export is
admitted, :meth:`BucketReceipts.acquire` creates ``{prefix}/.receipts/{sha256(id)}.json``
with ``If-None-Match: *``, holding a lease (the fingerprint, this replica, the start
and the lease's expiry). What it finds instead decides:

* a **finished** receipt with the same fingerprint, younger than the dedupe window:
  the export's object fields, answered again with a fresh URL (nothing recomputed);
* another fingerprint: ``invalid_request`` at path ``id``;
* a **live lease** of another replica: wait (polling; the export deadline bounds it)
  and answer with that export's result;
* an **expired** lease (its replica died) or an old finished receipt: taken over with
  ``If-Match``.

While the export runs, the lease is renewed every third of ``CSVGEN_LEASE_S``. On
success the receipt is replaced (``If-Match``) by the reply's object fields, never a
URL; on failure it is deleted, so the same id may be retried.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import socket
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import orjson

from ..errors import StorageFailed
from ..receipts import reused
from ..stores import ObjectStore

__all__ = ["BucketReceipts", "Lease"]

logger = logging.getLogger(__name__)

REPLICA = f"{socket.gethostname()}-{os.getpid()}"
JSON = "application/json"


@dataclass(slots=True)
class Lease:
    """This replica's hold on a receipt; ``etag`` follows each renewal."""

    key: str
    etag: str
    fingerprint: str
    started: float


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
    ) -> None:
        self.store = store
        self.prefix = prefix
        self.lease_s = lease_s
        self.dedupe_ttl_s = dedupe_ttl_s
        self.poll_s = poll_s if poll_s is not None else min(1.0, lease_s / 3)
        self.clock = clock

    def key(self, rid: str) -> str:
        return f"{self.prefix}/.receipts/{hashlib.sha256(rid.encode()).hexdigest()}.json"

    async def acquire(self, rid: str, fingerprint: bytes) -> Lease | dict[str, Any]:
        """A lease to run the export, or the object fields of the export already done."""
        key, fp = self.key(rid), fingerprint.hex()
        waiting = False
        while True:
            started = self.clock()
            etag = await self.store.create(key, self._lease(fp, started), JSON)
            if etag is not None:
                return Lease(key, etag, fp, started)
            found = await self.store.read(key)
            if found is None:
                continue  # deleted between the two calls: create again
            doc = _receipt(found.data)
            if doc is not None and doc["fingerprint"] != fp:
                raise reused(rid)
            now = self.clock()
            if doc is not None and doc["state"] == "done" and now - doc["at"] < self.dedupe_ttl_s:
                item: dict[str, Any] = doc["item"]
                return item
            if doc is not None and doc["state"] == "running" and doc["at"] > now:
                if not waiting:
                    logger.info("request %s: waiting for %s, which runs it", rid, doc["replica"])
                    waiting = True
                await asyncio.sleep(self.poll_s)  # another replica runs it: wait for its end
                continue
            # An expired lease (its replica died), an old finished receipt, or an object
            # that is no receipt of csvgen's: take it over.
            etag = await self.store.replace(key, self._lease(fp, started), JSON, found.etag)
            if etag is not None:
                holder = doc.get("replica") if doc is not None else "nobody"
                logger.warning("request %s: took over the receipt of %s", rid, holder)
                return Lease(key, etag, fp, started)

    @contextlib.asynccontextmanager
    async def held(self, lease: Lease) -> AsyncIterator[None]:
        """Renew ``lease`` every third of its life while the block runs.

        The renewal is stopped between two writes, never cancelled during one: a write
        cut short would still land, and the etag ``finish`` needs would be lost.
        """
        stop = asyncio.Event()
        renewing = asyncio.create_task(self._renew(lease, stop))
        try:
            yield
        finally:
            stop.set()
            await asyncio.shield(renewing)

    async def finish(self, lease: Lease, item: dict[str, Any]) -> None:
        """The export succeeded: the receipt keeps its object fields (no URL)."""
        kept = {k: v for k, v in item.items() if k not in ("signedUrl", "expiresAt")}
        doc = {
            "state": "done",
            "fingerprint": lease.fingerprint,
            "replica": REPLICA,
            "finishedAt": self.clock(),
            "item": kept,
        }
        if await self.store.replace(lease.key, orjson.dumps(doc), JSON, lease.etag) is None:
            logger.warning("the receipt %s changed under this replica's lease", lease.key)

    async def release(self, lease: Lease) -> None:
        """The export failed: the receipt goes, so the same id may be retried."""
        with contextlib.suppress(Exception):
            await self.store.delete(lease.key)

    async def _renew(self, lease: Lease, stop: asyncio.Event) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.lease_s / 3):
                    await stop.wait()
            if stop.is_set():
                return
            data = self._lease(lease.fingerprint, lease.started)
            try:
                etag = await self.store.replace(lease.key, data, JSON, lease.etag)
            except StorageFailed:
                continue  # the store blinked: the next renewal may still be in time
            if etag is None:
                logger.warning("lost the lease %s to another replica", lease.key)
                return
            lease.etag = etag

    def _lease(self, fp: str, started: float) -> bytes:
        doc = {
            "state": "running",
            "fingerprint": fp,
            "replica": REPLICA,
            "started": started,
            "expires": self.clock() + self.lease_s,
        }
        return orjson.dumps(doc)


def _receipt(data: bytes) -> dict[str, Any] | None:
    """A receipt's fields (``at``: the lease's expiry, or when it finished), or None when
    the object is no receipt csvgen wrote: then it is taken over, never trusted."""
    try:
        doc = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(doc, dict) or not isinstance(doc.get("fingerprint"), str):
        return None
    if doc.get("state") not in ("running", "done"):
        return None
    at = doc.get("expires" if doc["state"] == "running" else "finishedAt")
    if not isinstance(at, int | float) or isinstance(at, bool):
        return None
    if doc["state"] == "done" and not isinstance(doc.get("item"), dict):
        return None
    return {**doc, "at": float(at), "replica": str(doc.get("replica"))}
