"""Route registry: a route string → the handler that serves it."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from .errors import UnknownRoute
from .frames import Action

__all__ = ["Handler", "Replay", "Route", "Router"]

#: Serves one action; returns the reply payload or raises a ReplyError.
Handler = Callable[[Action], Awaitable[Any]]
#: Turns a stored payload into the payload of a repeated answer (e.g. re-signs a URL).
Replay = Callable[[Any], Awaitable[Any]]
#: One short ``key=value`` summary of a payload for the per-request log line.
Summary = Callable[[Any], str]


async def _same(payload: Any) -> Any:
    return payload


def _no_summary(payload: Any) -> str:
    return ""


@dataclass(frozen=True, slots=True)
class Route:
    handle: Handler
    replay: Replay = _same
    summarize: Summary = _no_summary


class Router:
    """Dispatch table for ``external-service/<name>`` routes."""

    def __init__(self) -> None:
        self._routes: dict[str, Route] = {}

    def add(
        self,
        route: str,
        handle: Handler,
        *,
        replay: Replay = _same,
        summarize: Summary = _no_summary,
    ) -> None:
        if route in self._routes:
            raise ValueError(f"route already registered: {route!r}")
        self._routes[route] = Route(handle, replay, summarize)

    def resolve(self, route: str) -> Route:
        """Raises UnknownRoute for a route nobody registered."""
        try:
            return self._routes[route]
        except KeyError:
            raise UnknownRoute(route) from None
