"""The upload stage: the written file → an object under a fresh key, its manifest, and a
signed URL; the reply's item.

The key is ``{prefix}/{owner}/{UTC time}{extension}`` (the next free ``-N`` on a clash);
before the upload, the export's receipt claims the key stem (leases.py), so that a
replica taking over from one killed meanwhile removes what it left. A reply never names
an object without its manifest: a manifest that cannot be written, or whose write is
cancelled, takes the object with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import IO, Any
from urllib.parse import quote

import orjson

from ..config import Settings
from ..errors import MAX_TEXT_CHARS, StorageFailed, bounded, cut, echo
from ..stores import ObjectStore, content_disposition
from .files import Written, file_format
from .manifest import MANIFEST_SUFFIX, manifest
from .plan import ExportPlan
from .progress import Progress
from .settle import whole

__all__ = ["Claim", "bounded_warnings", "store"]

#: Records in the export's receipt the key stem its file is stored under (leases.py).
Claim = Callable[[str], Awaitable[None]]


async def store(
    storage: ObjectStore,
    settings: Settings,
    export: tuple[str, bytes, ExportPlan],
    owner: str,
    started: datetime,
    f: IO[bytes],
    written: Written,
    claim: Claim | None,
    progress: Progress,
) -> dict[str, Any]:
    """Upload ``f`` and its manifest; the reply's item. ``export``: id, fingerprint, plan."""
    rid, fp, plan = export
    fmt = file_format(plan)
    stem = f"{settings.key_prefix}/{_safe(owner)}/{started:%Y-%m-%dT%H-%M-%S}"
    extension, content_type = fmt.extension(plan), fmt.content_type(plan)
    name = plan.metrics[0].name if plan.metrics else ""
    result = written.result
    if claim is not None:
        await claim(stem)  # the receipt names where the file goes, before it goes
    stored = await storage.put_new(
        stem,
        extension,
        f,
        result.size,
        content_type=content_type,
        disposition=content_disposition(name, extension),
        metadata={
            "request-id": quote(rid, safe=""),  # any text, as ASCII a header can carry
            "row-count": str(written.rows),
            "sha256": result.sha256,
        },
    )
    progress.bytes_uploaded = result.size
    url, expires_at = storage.presign(stored.key, settings.url_expires_s)
    item = {
        "bucket": stored.bucket,
        "key": stored.key,
        "signedUrl": url,
        "expiresAt": expires_at,
        "rowCount": written.rows,
        "sizeBytes": result.size,
        "sha256": result.sha256,
        "contentType": content_type,
        "warnings": bounded_warnings(
            [
                *plan.warnings,
                *(_mixed_warning(plan.columns[n].heading) for n in result.mixed),
                *fmt.warnings(plan, written.rows),
            ]
        ),
        "manifestKey": stored.key + MANIFEST_SUFFIX,
    }
    document = manifest(
        rid=rid,
        request_fingerprint=fp,
        plan=plan,
        item=item,
        types=written.types,
        escaped=result.escaped,
        generated_at=started,
    )
    await _store_manifest(storage, stored.key, document)
    return item


async def _store_manifest(storage: ObjectStore, key: str, document: dict[str, Any]) -> None:
    """Write ``{key}.manifest.json``; cancelled or failed, the export goes too: a reply
    never names an object without its manifest, or an object it did not keep."""
    data = orjson.dumps(document, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS)
    creating = asyncio.ensure_future(
        storage.create(key + MANIFEST_SUFFIX, data, "application/json")
    )
    try:
        if await asyncio.shield(creating) is None:
            raise StorageFailed(f"the manifest of {key!r} already exists")
    except BaseException:
        await whole(_undo_manifest(storage, key, creating))
        raise


async def _undo_manifest(
    storage: ObjectStore, key: str, creating: asyncio.Future[str | None]
) -> None:
    """Once the manifest's write has settled (a cancelled wait does not stop it), remove
    what it and the upload stored."""
    with contextlib.suppress(Exception):
        await asyncio.wait({creating})
    landed = creating.done() and not creating.cancelled() and creating.exception() is None
    for gone in [key + MANIFEST_SUFFIX] * (landed and creating.result() is not None) + [key]:
        with contextlib.suppress(StorageFailed):
            await storage.delete(gone)


def _mixed_warning(heading: str) -> str:
    return (
        f"column {echo(heading)}: the Metrics API answered numbers and text in one field; "
        "numbers are written as numbers, text cells as text"
    )


def bounded_warnings(warnings: list[str]) -> list[str]:
    """At most MAX_DETAILS warnings (then ``… and N more warnings``), all small (SPEC §8)."""
    kept, more = bounded([cut(w, MAX_TEXT_CHARS) for w in warnings], "warnings")
    return [*kept, more] if more else kept


def _safe(part: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", part).strip(".") or "_"
