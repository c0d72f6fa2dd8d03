"""``external-service/csv-generator/link``: a fresh signed URL for an existing export (SPEC §9).

Body ``{"key": "<an export key>", "expiresIn": <seconds, optional>}``. The answer is the
export's success shape, read from its manifest, with a freshly signed URL; nothing is
recomputed. Only an export is ever signed: a key outside the prefix, not ending in
``.csv``/``.csv.gz``, or without a manifest that names it, is ``not_found`` (the route
never signs any other object of the bucket). The lifetime is clamped to 604800 s and to
the signing credentials' own expiry; ``expiresAt`` is always true and a warning says
when the lifetime was clamped. The bus decides who may ask for which export.
"""

from __future__ import annotations

import functools
from datetime import UTC, datetime
from typing import Any

import orjson

from ..config import MAX_URL_EXPIRES_S, Settings
from ..errors import MAX_DETAILS, MAX_TEXT_CHARS, Detail, InvalidRequest, NotFound, cut, echo
from ..frames import Action
from ..routes import Job, Slot
from ..stores import ObjectStore
from .manifest import FORMAT, MANIFEST_SUFFIX

__all__ = ["LINK_ROUTE", "ExportLinks", "read_export"]

LINK_ROUTE = "external-service/csv-generator/link"
MAX_KEY_CHARS = 1024
#: A manifest read back is at most this big (a 1 MiB body makes one of a few MiB).
MAX_MANIFEST_BYTES = 8 * 1024 * 1024
#: What an export's key ends with.
EXTENSIONS = (".csv", ".csv.gz")
#: The manifest's export fields a link reply carries, with their types.
_FIELDS: dict[str, type] = {
    "bucket": str,
    "rowCount": int,
    "sizeBytes": int,
    "sha256": str,
    "contentType": str,
}


class ExportLinks:
    def __init__(self, settings: Settings, storage: ObjectStore) -> None:
        self.settings = settings
        self.storage = storage

    def prepare(self, action: Action) -> Job:
        """Validate on receipt: a key and an optional lifetime in seconds."""
        key, expires = action.body.get("key"), action.body.get("expiresIn")
        problems = []
        if not isinstance(key, str) or not key or len(key) > MAX_KEY_CHARS:
            problems.append(
                Detail("key", f"must be an export key of 1 to {MAX_KEY_CHARS} characters")
            )
        if expires is not None and (
            not isinstance(expires, int) or isinstance(expires, bool) or expires < 1
        ):
            problems.append(Detail("expiresIn", "must be a positive integer of seconds"))
        if problems:
            raise InvalidRequest(problems)
        assert isinstance(key, str)
        return functools.partial(self.run, key, expires or self.settings.url_expires_s)

    async def run(
        self, key: str, asked: int, fingerprint: bytes = b"", slot: Slot | None = None
    ) -> dict[str, Any]:
        """A link: one manifest read and a signature, too quick to need an export slot."""
        export = await read_export(self.storage, self.settings.key_prefix, key)
        if export is None:
            raise _not_found(key)
        now = datetime.now(UTC)
        lifetime, warnings = asked, []
        if lifetime > MAX_URL_EXPIRES_S:
            lifetime = MAX_URL_EXPIRES_S
            warnings.append(
                f"expiresIn {asked} is over the {MAX_URL_EXPIRES_S} s a signed URL may live; "
                f"the link lives {MAX_URL_EXPIRES_S} s"
            )
        expiry = self.storage.credentials_expiry()
        if expiry is not None and (left := int((expiry - now).total_seconds())) < lifetime:
            lifetime = max(1, left)
            warnings.append(f"the signing credentials expire in {left} s; the link lives as long")
        url, expires_at = self.storage.presign(key, lifetime, now)
        return {
            "body": [
                {
                    "bucket": export["bucket"],
                    "key": key,
                    "signedUrl": url,
                    "expiresAt": expires_at,
                    "rowCount": export["rowCount"],
                    "sizeBytes": export["sizeBytes"],
                    "sha256": export["sha256"],
                    "contentType": export["contentType"],
                    "warnings": warnings,
                    "manifestKey": key + MANIFEST_SUFFIX,
                }
            ]
        }


async def read_export(storage: ObjectStore, prefix: str, key: Any) -> dict[str, Any] | None:
    """The object fields of the export at ``key`` from its manifest, typed, or None when
    ``key`` is not an export under ``prefix`` with a manifest that names it.

    The one check for every object csvgen signs again: the link route and a request
    answered from another replica's receipt (leases.py) both go through it, so nothing
    read from the bucket is signed unless it is an export.
    """
    if not isinstance(key, str) or not _looks_like_an_export(prefix, key):
        return None
    stored = await storage.read(key + MANIFEST_SUFFIX, MAX_MANIFEST_BYTES)
    if stored is None or len(stored.data) > MAX_MANIFEST_BYTES:
        return None
    try:
        manifest = orjson.loads(stored.data)
    except orjson.JSONDecodeError:
        return None
    export = manifest.get("export") if isinstance(manifest, dict) else None
    if (
        not isinstance(manifest, dict)
        or manifest.get("format") != FORMAT
        or not isinstance(export, dict)
        or export.get("key") != key
        or not all(isinstance(export.get(k), t) for k, t in _FIELDS.items())
        or isinstance(export["rowCount"], bool)
        or isinstance(export["sizeBytes"], bool)
    ):
        return None
    warnings = manifest.get("warnings")
    warnings = warnings[:MAX_DETAILS] if isinstance(warnings, list) else []
    return {
        **{k: export[k] for k in _FIELDS},
        "key": key,
        "warnings": [cut(w, MAX_TEXT_CHARS) for w in warnings if isinstance(w, str)],
        "manifestKey": key + MANIFEST_SUFFIX,
    }


def _looks_like_an_export(prefix: str, key: str) -> bool:
    parts = key.split("/")
    return (
        len(key) <= MAX_KEY_CHARS
        and key.startswith(prefix + "/")
        and key.endswith(EXTENSIONS)
        and not any(p in ("", ".", "..") for p in parts)
        and "/." not in key  # .receipts, .csvgen-probe: csvgen's own objects
    )


def _not_found(key: str) -> NotFound:
    return NotFound(f"no export with a manifest at {echo(key)}", [Detail("key", "not an export")])
