"""Where exports are kept: the :class:`ObjectStore` seam and its implementations.

``s3.S3Store`` is today's. A second store (GCS, Azure Blob, a local directory for
tests) implements the same protocol; nothing else in csvgen imports a storage SDK.
The conditional operations (``create``, ``replace``, ``read``, ``delete``) are what
replica receipts need (SPEC §9): a create that fails when the key exists and a
replace that fails when the object changed since it was read.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import IO, Protocol

__all__ = ["ObjectStore", "StoredObject", "Versioned", "content_disposition"]


@dataclass(frozen=True, slots=True)
class StoredObject:
    bucket: str
    key: str


@dataclass(frozen=True, slots=True)
class Versioned:
    """A small object's bytes and the tag its next conditional replace must name."""

    data: bytes
    etag: str


class ObjectStore(Protocol):
    bucket: str

    async def put_new(
        self,
        stem: str,
        extension: str,
        fileobj: IO[bytes],
        size: int,
        *,
        content_type: str,
        disposition: str,
        metadata: dict[str, str],
    ) -> StoredObject:
        """Store ``fileobj`` under ``stem + extension`` or the first free ``stem-N``; never
        overwrite. Cancelled, it leaves nothing behind."""
        ...

    def presign(self, key: str, expires_s: int, now: datetime | None = None) -> tuple[str, str]:
        """A signed GET URL for ``key`` and when it expires (ISO 8601, UTC)."""
        ...

    def credentials_expiry(self) -> datetime | None:
        """When the signing credentials expire, for temporary ones; else None."""
        ...

    async def create(self, key: str, data: bytes, content_type: str) -> str | None:
        """Create a small object; its etag, or None when ``key`` already exists."""
        ...

    async def replace(self, key: str, data: bytes, content_type: str, etag: str) -> str | None:
        """Replace a small object if it is still ``etag``; the new etag, or None."""
        ...

    async def read(self, key: str, limit: int = ...) -> Versioned | None:
        """A small object's first ``limit + 1`` bytes and its etag, or None when there is
        none (more than ``limit`` bytes: the caller treats the object as junk)."""
        ...

    async def delete(self, key: str) -> None: ...

    async def uploads_of(self, stem: str, request_id: str) -> list[str]:
        """Keys under ``stem`` of objects stored for ``request_id`` (its metadata)."""
        ...


def content_disposition(name: str, extension: str) -> str:
    """``attachment; filename="…"`` from a metric request's name, made safe for any client."""
    stem = re.sub(r"[^A-Za-z0-9._ -]+", "", name).strip(" .")
    stem = re.sub(r"\s+", " ", stem)[:100] or "export"
    return f'attachment; filename="{stem}{extension}"'
