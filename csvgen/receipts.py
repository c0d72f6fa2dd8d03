"""Idempotency memory (protocol.md §3): which request ids are in flight or done.

Pure and synchronous; the dispatcher asks it about every receipt. The
:class:`Receipts` protocol is the seam for a store shared by replicas (SPEC §9:
receipts in the bucket); :class:`MemoryReceipts` is this process's own memory,
and stays the fast path in front of any shared store.
"""

from __future__ import annotations

import collections
import enum
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from .errors import Detail, InvalidRequest, echo

__all__ = [
    "MAX_RECEIPTS",
    "MAX_REMEMBERED",
    "Done",
    "MemoryReceipts",
    "Receipts",
    "Seen",
    "reused",
]

#: Finished requests remembered at most (the oldest go first).
MAX_REMEMBERED = 100_000
#: Receipts of one in-flight id answered at most (SPEC §8).
MAX_RECEIPTS = 16


class Seen(enum.Enum):
    """What a receipt of an id is."""

    NEW = "new"  # never seen, or forgotten: admit it
    DUPLICATE = "duplicate"  # in flight: one more reply when it ends
    OVERFLOW = "overflow"  # in flight with MAX_RECEIPTS receipts: no reply (the first such)
    DROPPED = "dropped"  # the same, after the first
    DONE = "done"  # finished within the dedupe window: answer it again


@dataclass(slots=True)
class Done:
    """A finished request: its fingerprint, its reply payload and what can replay it."""

    fingerprint: bytes
    payload: Any
    replay: Any  # the route's replay hook
    at: float


@dataclass(slots=True)
class _InFlight:
    fingerprint: bytes
    receipts: int = 1
    dropped: int = 0


class Receipts(Protocol):
    def known(self, rid: str) -> bool:
        """Whether ``rid`` is in flight or finished within the window (cheap: no fingerprint)."""
        ...

    def receive(self, rid: str, fingerprint: bytes) -> tuple[Seen, Done | None]:
        """Count one receipt of ``rid``.

        Raises:
            InvalidRequest: ``rid`` is in flight or done with another fingerprint.
        """
        ...

    def admit(self, rid: str, fingerprint: bytes) -> None: ...

    def finish(self, rid: str, done: Done | None) -> int:
        """``rid`` ended (``done`` when it succeeded); returns its receipts to answer."""
        ...


class MemoryReceipts:
    def __init__(
        self,
        *,
        ttl_s: float,
        max_remembered: int = MAX_REMEMBERED,
        max_receipts: int = MAX_RECEIPTS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ttl_s = ttl_s
        self.max_remembered = max_remembered
        self.max_receipts = max_receipts
        self.clock = clock
        self._in_flight: dict[str, _InFlight] = {}
        self._done: collections.OrderedDict[str, Done] = collections.OrderedDict()

    def known(self, rid: str) -> bool:
        self._expire()
        return rid in self._in_flight or rid in self._done

    def receive(self, rid: str, fingerprint: bytes) -> tuple[Seen, Done | None]:
        self._expire()
        if (flight := self._in_flight.get(rid)) is not None:
            _check_same(rid, flight.fingerprint, fingerprint)
            if flight.receipts < self.max_receipts:
                flight.receipts += 1
                return Seen.DUPLICATE, None
            flight.dropped += 1
            return (Seen.OVERFLOW if flight.dropped == 1 else Seen.DROPPED), None
        if (done := self._done.get(rid)) is not None:
            _check_same(rid, done.fingerprint, fingerprint)
            return Seen.DONE, done
        return Seen.NEW, None

    def admit(self, rid: str, fingerprint: bytes) -> None:
        self._in_flight[rid] = _InFlight(fingerprint)

    def finish(self, rid: str, done: Done | None) -> int:
        flight = self._in_flight.pop(rid)
        if done is not None:
            self._done[rid] = done
            if len(self._done) > self.max_remembered:
                self._done.popitem(last=False)
        return flight.receipts

    def _expire(self) -> None:
        horizon = self.clock() - self.ttl_s
        while self._done:
            rid, done = next(iter(self._done.items()))
            if done.at > horizon:
                break
            del self._done[rid]


def _check_same(rid: str, seen: bytes, now: bytes) -> None:
    if seen != now:
        raise reused(rid)


def reused(rid: str) -> InvalidRequest:
    """The error for an id already used with another body (this process or the bucket)."""
    return InvalidRequest(
        [Detail("id", f"request id {echo(rid)} was already used with a different body")],
        message="request id reused with a different body",
    )
