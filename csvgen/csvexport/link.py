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
from ..errors import Detail, InvalidRequest, NotFound, echo
from ..frames import Action
from ..routes import Job
from ..stores import ObjectStore
from .manifest import FORMAT, MANIFEST_SUFFIX

__all__ = ["LINK_ROUTE", "ExportLinks"]

LINK_ROUTE = "external-service/csv-generator/link"
MAX_KEY_CHARS = 1024
#: The manifest's export fields a link reply carries.
_FIELDS = ("bucket", "rowCount", "sizeBytes", "sha256", "contentType")


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

    async def run(self, key: str, asked: int, fingerprint: bytes = b"") -> dict[str, Any]:
        if not self._looks_like_an_export(key):
            raise _not_found(key)
        stored = await self.storage.read(key + MANIFEST_SUFFIX)
        try:
            manifest = orjson.loads(stored.data) if stored is not None else None
        except orjson.JSONDecodeError:
            manifest = None
        export = manifest.get("export") if isinstance(manifest, dict) else None
        if (
            not isinstance(manifest, dict)
            or manifest.get("format") != FORMAT
            or not isinstance(export, dict)
            or export.get("key") != key
            or not all(k in export for k in _FIELDS)
        ):
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

    def _looks_like_an_export(self, key: str) -> bool:
        prefix = self.settings.key_prefix + "/"
        parts = key.split("/")
        return (
            key.startswith(prefix)
            and key.endswith((".csv", ".csv.gz"))
            and not any(p in ("", ".", "..") for p in parts)
            and "/." not in key  # .receipts, .csvgen-probe: csvgen's own objects
        )


def _not_found(key: str) -> NotFound:
    return NotFound(f"no export with a manifest at {echo(key)}", [Detail("key", "not an export")])
