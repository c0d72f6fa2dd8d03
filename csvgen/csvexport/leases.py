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

from ..errors import Detail, InvalidRequest, echo
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
            etag = await self.store.create(key, self._lease(fp), JSON)
            if etag is not None:
                return Lease(key, etag, fp)
            found = await self.store.read(key)
            if found is None:
                continue  # deleted between the two calls: create again
            doc = _loads(found.data)
            if doc.get("fingerprint") != fp:
                raise InvalidRequest(
                    [
                        Detail(
                            "id", f"request id {echo(rid)} was already used with a different body"
                        )
                    ],
                    message="request id reused with a different body",
                )
            now = self.clock()
            if (
                doc.get("state") == "done"
                and now - float(doc.get("finishedAt", 0)) < self.dedupe_ttl_s
            ):
                item: dict[str, Any] = doc["item"]
                return item
            if doc.get("state") == "running" and float(doc.get("expires", 0)) > now:
                if not waiting:
                    logger.info(
                        "request %s: waiting for %s, which runs it", rid, doc.get("replica")
                    )
                    waiting = True
                await asyncio.sleep(self.poll_s)  # another replica runs it: wait for its end
                continue
            # An expired lease (its replica died) or an old finished receipt: take it over.
            etag = await self.store.replace(key, self._lease(fp), JSON, found.etag)
            if etag is not None:
                logger.warning("request %s: took over the receipt of %s", rid, doc.get("replica"))
                return Lease(key, etag, fp)

    @contextlib.asynccontextmanager
    async def held(self, lease: Lease) -> AsyncIterator[None]:
        """Renew ``lease`` every third of its life while the block runs."""
        renewing = asyncio.create_task(self._renew(lease))
        try:
            yield
        finally:
            renewing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renewing

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

    async def _renew(self, lease: Lease) -> None:
        while True:
            await asyncio.sleep(self.lease_s / 3)
            etag = await self.store.replace(
                lease.key, self._lease(lease.fingerprint), JSON, lease.etag
            )
            if etag is None:
                logger.warning("lost the lease %s to another replica", lease.key)
                return
            lease.etag = etag

    def _lease(self, fp: str) -> bytes:
        now = self.clock()
        doc = {
            "state": "running",
            "fingerprint": fp,
            "replica": REPLICA,
            "started": now,
            "expires": now + self.lease_s,
        }
        return orjson.dumps(doc)


def _loads(data: bytes) -> dict[str, Any]:
    try:
        doc = orjson.loads(data)
    except orjson.JSONDecodeError:
        return {}
    return doc if isinstance(doc, dict) else {}
