"""Route registry: a route string → the handler that serves it.

A route may split its work in two (SPEC §8, "validate on receipt"): ``prepare``
runs when the frame arrives, synchronously, and either raises a ReplyError
(answered at once) or returns the :data:`Job` that waits for an export slot. The
job holds what ``prepare`` made of the body (a plan), not the body itself.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any

from .errors import UnknownRoute
from .frames import Action

__all__ = ["Handler", "Job", "Prepare", "Replay", "Route", "Router", "Slot"]

#: Serves one action; returns the reply payload or raises a ReplyError.
Handler = Callable[[Action], Awaitable[Any]]
#: Holds one of the dispatcher's export slots while entered (``async with slot():``).
Slot = Callable[[], AbstractAsyncContextManager[None]]
#: The work of one admitted request; it is given the request's fingerprint
#: (frames.fingerprint, computed once by the dispatcher) and the slot it runs in: a job
#: enters the slot itself, so that it may wait for something else first (csv-generator
#: waits for another replica's export without holding a slot).
Job = Callable[[bytes, Slot], Awaitable[Any]]
#: Validates an action on receipt (raising a ReplyError) and returns its job.
Prepare = Callable[[Action], Job]
#: Turns a stored payload into the payload of a repeated answer (e.g. re-signs a URL).
Replay = Callable[[Any], Awaitable[Any]]
#: The fields of a payload worth a place in the per-request log line (``rows``, ``key``…).
Summary = Callable[[Any], dict[str, Any]]


def _later(handle: Handler, action: Action) -> Job:
    async def job(fingerprint: bytes, slot: Slot) -> Any:
        async with slot():
            return await handle(action)

    return job


async def _same(payload: Any) -> Any:
    return payload


def _no_summary(payload: Any) -> dict[str, Any]:
    return {}


@dataclass(frozen=True, slots=True)
class Route:
    prepare: Prepare
    replay: Replay = _same
    summarize: Summary = _no_summary


class Router:
    """Dispatch table for ``external-service/<name>`` routes."""

    def __init__(self) -> None:
        self._routes: dict[str, Route] = {}

    def add(
        self,
        route: str,
        handle: Handler | None = None,
        *,
        prepare: Prepare | None = None,
        replay: Replay = _same,
        summarize: Summary = _no_summary,
    ) -> None:
        """Register ``route``: give ``handle`` (validates when it runs) or ``prepare``."""
        if route in self._routes:
            raise ValueError(f"route already registered: {route!r}")
        if (handle is None) == (prepare is None):
            raise ValueError("give exactly one of handle and prepare")
        if prepare is None:
            assert handle is not None
            prepare = functools.partial(_later, handle)
        self._routes[route] = Route(prepare, replay, summarize)

    def __contains__(self, route: object) -> bool:
        return route in self._routes

    def resolve(self, route: str) -> Route:
        """Raises UnknownRoute for a route nobody registered."""
        try:
            return self._routes[route]
        except KeyError:
            raise UnknownRoute(route) from None
