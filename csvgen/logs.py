"""Logging setup: one format, scrubbed of secrets, safe from forged lines (SPEC §8).

Every record goes through :class:`SafeFormatter`, whichever library wrote it
(websockets' reconnect messages carry the URL it connects to, botocore's
exceptions carry endpoints and headers):

* a URL's ``token=`` value, S3's signature and credential query fields, URL
  user-info and the configured secrets themselves become ``***``;
* control characters of the message (a request id holding ``\\n2026-… INFO``)
  are escaped, so no request text can start a line of its own; a traceback
  keeps its lines, each indented under the record that owns it.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

import orjson

__all__ = ["JsonFormatter", "SafeFormatter", "escape", "scrub", "setup"]

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

#: Query fields whose values are secrets: Aura's token, SigV4's signature and credentials.
_SECRET_FIELDS = re.compile(
    r"((?:token|X-Amz-Signature|X-Amz-Credential|X-Amz-Security-Token|Signature"
    r"|AWSAccessKeyId)=)[^&\s'\"<>]+",
    re.IGNORECASE,
)
_USER_INFO = re.compile(r"(\b[a-z][a-z0-9+.-]*://)[^/@\s'\"]+@", re.IGNORECASE)
_CONTROL = re.compile(r"[\x00-\x1f\x7f\u2028\u2029]")


def scrub(text: str, secrets: Iterable[str] = ()) -> str:
    """``text`` with secret query values, URL user-info and ``secrets`` replaced by ``***``."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    text = _SECRET_FIELDS.sub(r"\1***", text)
    return _USER_INFO.sub(r"\1***@", text)


def escape(text: str) -> str:
    """Control characters as ``\\n``, ``\\x1b``…: one record is always one line."""
    return _CONTROL.sub(lambda m: repr(m.group())[1:-1], text)


class SafeFormatter(logging.Formatter):
    def __init__(self, fmt: str = FORMAT, secrets: Iterable[str | None] = ()) -> None:
        super().__init__(fmt)
        self.secrets = tuple(s for s in secrets if s)

    def formatMessage(self, record: logging.LogRecord) -> str:
        return scrub(escape(super().formatMessage(record)), self.secrets)

    def formatException(self, ei: logging._SysExcInfoType) -> str:
        return self._indent(super().formatException(ei))

    def formatStack(self, stack_info: str) -> str:
        return self._indent(super().formatStack(stack_info))

    def _indent(self, text: str) -> str:
        lines = scrub(text, self.secrets).splitlines()
        return "\n".join("    | " + escape(line) for line in lines)


class JsonFormatter(SafeFormatter):
    """One JSON object per line (``CSVGEN_LOG_FORMAT=json``), scrubbed like the text.

    Keys: ``ts`` (UTC, milliseconds), ``level``, ``logger``, ``msg``, ``exc`` when there
    is a traceback, and the record's ``fields`` (``extra={"fields": {...}}``) as keys of
    their own: the per-request line carries ``id``, ``route``, ``outcome``,
    ``duration_s`` and, for an export, ``rows``, ``bytes``, ``key``; the stages line
    carries ``id`` and ``stages``.
    """

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "msg": scrub(record.getMessage(), self.secrets),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            for key, value in fields.items():
                line.setdefault(
                    key, scrub(value, self.secrets) if isinstance(value, str) else value
                )
        if record.exc_info:
            # The plain traceback: JSON keeps it on one line whatever it holds.
            text = logging.Formatter.formatException(self, record.exc_info)
            line["exc"] = scrub(text, self.secrets)
        return orjson.dumps(line, default=str).decode()


def setup(level: str, secrets: Iterable[str | None] = (), fmt: str = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        JsonFormatter(secrets=secrets) if fmt == "json" else SafeFormatter(secrets=secrets)
    )
    logging.basicConfig(level=level, handlers=[handler], force=True)
    # At DEBUG, websockets logs handshake request lines, which carry ?token=.
    for name in ("websockets", "csvgen.websockets"):
        logging.getLogger(name).setLevel(max(logging.INFO, logging.getLevelName(level)))
    # botocore at DEBUG logs signed URLs and headers.
    for name in ("botocore", "boto3", "s3transfer", "urllib3"):
        logging.getLogger(name).setLevel(logging.WARNING)
