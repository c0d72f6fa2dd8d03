"""Settings, read once from the environment (protocol.md, "Configuration").

:meth:`Settings.from_env` is a pure function of a mapping, so it is tested
without touching ``os.environ``. Every invalid variable is reported in one
:class:`~csvgen.errors.ConfigError`, checked in full before anything connects
(SPEC §8): URLs (scheme, host, port 1–65535), the bucket name (S3's rules), the
key prefix, ``AWS_ENDPOINT_URL_S3``. Tokens and URL user-info or queries never
appear in ``repr``; :func:`unknown_variables` names misspelt ``CSVGEN_*`` ones.
"""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from .errors import ConfigError

__all__ = [
    "ENV",
    "SECRET_ENV",
    "Settings",
    "is_loopback_url",
    "redact_url",
    "unknown_variables",
    "ws_url",
]

MAX_URL_EXPIRES_S = 604800  # SigV4's limit: 7 days


@dataclass(frozen=True, slots=True, repr=False)
class Settings:
    bus_url: str
    bus_token: str | None = field(default=None, repr=False)
    metrics_url: str = ""
    metrics_token: str | None = field(default=None, repr=False)
    bucket: str = "aura-exports"
    key_prefix: str = "exports"
    url_expires_s: int = 900
    max_concurrent_exports: int = 4
    max_queued_exports: int = 100
    dedupe_ttl_s: float = 600.0
    metric_timeout_s: float = 300.0
    shutdown_grace_s: float = 60.0
    max_rows: int = 10_000_000
    max_bytes: int = 5 * 1024**3
    max_body_bytes: int = 1024 * 1024
    max_body_depth: int = 32
    max_metric_requests: int = 50
    max_columns: int = 500
    max_answer_bytes: int = 4 * 1024**3
    export_timeout_s: float = 1800.0
    max_frame_bytes: int = 64 * 1024**2
    max_metric_concurrency: int = 4
    reconnect_max_delay_s: float = 60.0
    ping_interval_s: float = 20.0
    log_level: str = "INFO"
    log_format: str = "text"
    http_port: int | None = None  # None: no HTTP server; 0: a free port
    http_host: str = "127.0.0.1"
    unsafe_store: bool = False  # skip the start check of conditional writes (SPEC §9)
    lease_s: float = 30.0
    spill_dir: str | None = None  # None: the system's temporary directory
    memory_budget_mb: int = 1024  # per export: past it, combined out of core

    def __post_init__(self) -> None:
        if not self.metrics_url:
            object.__setattr__(self, "metrics_url", self.bus_url)
        if self.metrics_token is None:
            object.__setattr__(self, "metrics_token", self.bus_token)

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str], overrides: Mapping[str, str] | None = None
    ) -> Settings:
        """Build settings from ``CSVGEN_*`` variables; ``overrides`` (from flags) win.

        ``overrides`` is keyed by variable name, like ``environ``.

        Raises:
            ConfigError: listing every missing or invalid setting.
        """
        merged = {**environ, **(overrides or {})}
        values: dict[str, Any] = {}
        problems: list[str] = []
        for name, (attr, parse) in ENV.items():
            raw = merged.get(name)
            if raw is None or raw == "":
                continue
            try:
                values[attr] = parse(raw)
            except ValueError as exc:
                problems.append(f"{name}: {exc}")
        if "bus_url" not in values and not any(p.startswith("CSVGEN_BUS_URL") for p in problems):
            problems.append("CSVGEN_BUS_URL: required (the bus WebSocket URL, ws:// or wss://)")
        endpoint = merged.get("AWS_ENDPOINT_URL_S3")
        if endpoint:
            try:
                _url(endpoint, ("http", "https"))
            except ValueError as exc:
                problems.append(f"AWS_ENDPOINT_URL_S3: {exc}")
        if problems:
            raise ConfigError(problems)
        return cls(**values)

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)

    def __repr__(self) -> str:
        """Every field but the tokens; URLs without user-info or query (safe to log)."""
        shown = []
        for f in dataclasses.fields(self):
            if not f.repr:
                continue
            value = getattr(self, f.name)
            if f.name.endswith("_url"):
                value = redact_url(value)
            shown.append(f"{f.name}={value!r}")
        return f"Settings({', '.join(shown)})"


def _url(raw: str, schemes: tuple[str, ...]) -> str:
    """``raw`` if it is a URL of one of ``schemes`` with a host and a port in 1–65535."""
    shown = " or ".join(f"{s}://" for s in schemes)
    try:
        parts = urlsplit(raw)
        port = parts.port
    except ValueError:
        raise ValueError(f"must be a {shown} URL with a port in 1-65535") from None
    if parts.scheme not in schemes or not parts.hostname:
        raise ValueError(f"must be a {shown} URL, got {redact_url(raw)!r}")
    if port == 0:
        raise ValueError("the port must be in 1-65535, got 0")
    if any(ord(c) < 0x21 or ord(c) == 0x7F for c in raw):
        raise ValueError("must not contain spaces or control characters")
    return raw


def ws_url(raw: str) -> str:
    """``raw`` if it is a ws:// or wss:// URL with a host and a valid port.

    Raises:
        ValueError: it is not, with a message that never holds its query (a token).
    """
    return _url(raw, ("ws", "wss"))


def redact_url(raw: str) -> str:
    """A URL safe to print: no query string (it may hold a token) and no user info."""
    try:
        parts = urlsplit(raw)
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "<a malformed URL>"
    host = parts.hostname or ""
    return f"{parts.scheme}://{host}{port}{parts.path}" if parts.scheme else raw.split("?")[0]


def _int_range(low: int, high: int | None = None) -> Callable[[str], int]:
    def parse(raw: str) -> int:
        try:
            value = int(raw)
        except ValueError:
            raise ValueError(f"must be an integer, got {raw!r}") from None
        if value < low or (high is not None and value > high):
            bound = f"between {low} and {high}" if high is not None else f"at least {low}"
            raise ValueError(f"must be {bound}, got {value}")
        return value

    return parse


def _seconds(raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"must be a number of seconds, got {raw!r}") from None
    if not value > 0 or value == float("inf"):
        raise ValueError(f"must be a positive number of seconds, got {raw!r}")
    return value


_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


def _bucket(raw: str) -> str:
    """S3's bucket naming rules (general purpose buckets)."""
    if not _BUCKET.match(raw):
        raise ValueError(
            "must be 3-63 characters of lowercase letters, digits, dots and hyphens, "
            f"starting and ending with a letter or digit, got {raw[:80]!r}"
        )
    if ".." in raw or ".-" in raw or "-." in raw:
        raise ValueError(f"must not hold '..', '.-' or '-.', got {raw!r}")
    if re.fullmatch(r"\d+\.\d+\.\d+\.\d+", raw):
        raise ValueError(f"must not be formatted as an IP address, got {raw!r}")
    return raw


def _key_prefix(raw: str) -> str:
    if raw.startswith("/"):
        raise ValueError(f"must not start with '/', got {raw[:80]!r}")
    prefix = raw.rstrip("/")
    if not prefix:
        raise ValueError("must not be empty")
    segments = prefix.split("/")
    if any(seg in ("", ".", "..") for seg in segments):
        raise ValueError(f"must not hold empty, '.' or '..' segments, got {raw[:80]!r}")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in prefix):
        raise ValueError("must not hold control characters")
    return prefix


def _log_level(raw: str) -> str:
    level = raw.upper()
    if level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise ValueError(f"must be DEBUG, INFO, WARNING or ERROR, got {raw!r}")
    return level


def _flag(raw: str) -> bool:
    if raw.lower() in ("1", "true", "yes"):
        return True
    if raw.lower() in ("0", "false", "no"):
        return False
    raise ValueError(f"must be 1 or 0, got {raw[:80]!r}")


def _host(raw: str) -> str:
    if not raw or any(ord(c) < 0x21 or c in "/?#@" for c in raw):
        raise ValueError(f"must be a host name or address, got {raw[:80]!r}")
    return raw


def _directory(raw: str) -> str:
    """An existing directory this process can write in (checked once, at start)."""
    if not os.path.isdir(raw):
        raise ValueError(f"must be an existing directory, got {raw[:200]!r}")
    if not os.access(raw, os.W_OK | os.X_OK):
        raise ValueError(f"must be a directory csvgen can write in, got {raw[:200]!r}")
    return raw


def _log_format(raw: str) -> str:
    if raw not in ("text", "json"):
        raise ValueError(f"must be text or json, got {raw[:80]!r}")
    return raw


#: Environment variable → (Settings attribute, parser). Also drives `csvgen run`'s flags.
ENV: dict[str, tuple[str, Callable[[str], Any]]] = {
    "CSVGEN_BUS_URL": ("bus_url", ws_url),
    "CSVGEN_BUS_TOKEN": ("bus_token", str),
    "CSVGEN_METRICS_URL": ("metrics_url", ws_url),
    "CSVGEN_METRICS_TOKEN": ("metrics_token", str),
    "CSVGEN_BUCKET": ("bucket", _bucket),
    "CSVGEN_KEY_PREFIX": ("key_prefix", _key_prefix),
    "CSVGEN_URL_EXPIRES_S": ("url_expires_s", _int_range(1, MAX_URL_EXPIRES_S)),
    "CSVGEN_MAX_CONCURRENT_EXPORTS": ("max_concurrent_exports", _int_range(1)),
    "CSVGEN_MAX_QUEUED_EXPORTS": ("max_queued_exports", _int_range(0)),
    "CSVGEN_DEDUPE_TTL_S": ("dedupe_ttl_s", _seconds),
    "CSVGEN_METRIC_TIMEOUT_S": ("metric_timeout_s", _seconds),
    "CSVGEN_SHUTDOWN_GRACE_S": ("shutdown_grace_s", _seconds),
    "CSVGEN_MAX_ROWS": ("max_rows", _int_range(0)),
    "CSVGEN_MAX_BYTES": ("max_bytes", _int_range(1)),
    "CSVGEN_MAX_BODY_BYTES": ("max_body_bytes", _int_range(1024)),
    "CSVGEN_MAX_BODY_DEPTH": ("max_body_depth", _int_range(4, 200)),
    "CSVGEN_MAX_METRIC_REQUESTS": ("max_metric_requests", _int_range(1)),
    "CSVGEN_MAX_COLUMNS": ("max_columns", _int_range(1)),
    "CSVGEN_MAX_ANSWER_BYTES": ("max_answer_bytes", _int_range(1)),
    "CSVGEN_EXPORT_TIMEOUT_S": ("export_timeout_s", _seconds),
    "CSVGEN_SPILL_DIR": ("spill_dir", _directory),
    "CSVGEN_MEMORY_BUDGET_MB": ("memory_budget_mb", _int_range(16)),
    "CSVGEN_MAX_FRAME_BYTES": ("max_frame_bytes", _int_range(1024)),
    "CSVGEN_MAX_METRIC_CONCURRENCY": ("max_metric_concurrency", _int_range(1)),
    "CSVGEN_RECONNECT_MAX_DELAY_S": ("reconnect_max_delay_s", _seconds),
    "CSVGEN_PING_INTERVAL_S": ("ping_interval_s", _seconds),
    "CSVGEN_LOG_LEVEL": ("log_level", _log_level),
    "CSVGEN_LOG_FORMAT": ("log_format", _log_format),
    "CSVGEN_HTTP_PORT": ("http_port", _int_range(0, 65535)),
    "CSVGEN_HTTP_HOST": ("http_host", _host),
    "CSVGEN_UNSAFE_STORE": ("unsafe_store", _flag),
    "CSVGEN_LEASE_S": ("lease_s", _seconds),
}

#: Variables that are never accepted as command-line flags: argv is visible in `ps`.
SECRET_ENV = frozenset({"CSVGEN_BUS_TOKEN", "CSVGEN_METRICS_TOKEN"})


def unknown_variables(environ: Mapping[str, str]) -> list[str]:
    """One warning per ``CSVGEN_*`` variable csvgen does not know, naming the closest one."""
    warnings = []
    for name in sorted(environ):
        if name.startswith("CSVGEN_") and name not in ENV:
            known = [k.removeprefix("CSVGEN_") for k in ENV]  # the shared prefix is no hint
            close = difflib.get_close_matches(name.removeprefix("CSVGEN_"), known, n=1, cutoff=0.6)
            hint = f"; did you mean CSVGEN_{close[0]}?" if close else ""
            warnings.append(f"unknown variable {name[:80]} is ignored{hint}")
    return warnings


def is_loopback_url(url: str) -> bool:
    """Whether ``url`` points at this machine (permessage-deflate only costs CPU there)."""
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
