"""What the bus link and the Metrics API link share: the token in the URL, the
retry-or-give-up classifier and websockets' ``connect`` options (backoff, keepalive,
frame limit, compression, a logger kept away from handshake lines)."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Generator
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from websockets.client import backoff
from websockets.exceptions import InvalidStatus

from .config import Settings, is_loopback_url

__all__ = ["classify", "connect_options", "with_token"]


def with_token(url: str, token: str | None) -> str:
    """``url`` with ``?token=`` added (Aura binds the token at connect time)."""
    if not token:
        return url
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query) if k != "token"] + [("token", token)]
    return urlunsplit(parts._replace(query=urlencode(query)))


def classify(exc: Exception) -> Exception | None:
    """websockets' ``process_exception``: ``None`` to retry, an exception to give up."""
    if isinstance(exc, InvalidStatus) and exc.response.status_code in (401, 403):
        return exc
    return None


def connect_options(settings: Settings, url: str) -> dict[str, Any]:
    """Keyword arguments for websockets' ``connect`` shared by the bus and metrics links."""
    delays: Callable[[], Generator[float]] = functools.partial(
        backoff,
        initial_delay=min(1.0, settings.reconnect_max_delay_s),
        min_delay=min(1.0, settings.reconnect_max_delay_s),
        max_delay=settings.reconnect_max_delay_s,
    )
    return {
        "process_exception": classify,
        "reconnect_delays": delays,
        "ping_interval": settings.ping_interval_s,
        "ping_timeout": settings.ping_interval_s,
        # Frames from the bus can be large; a frame over the limit closes the link (1009).
        "max_size": settings.max_frame_bytes,
        # Deflate costs more CPU than it saves bytes on this machine's own links.
        "compression": None if is_loopback_url(url) else "deflate",
        # The token is in the URL: keep websockets' DEBUG handshake lines out of the log.
        "logger": logging.getLogger("csvgen.websockets"),
        "proxy": None,
    }
