"""Reference data (``detail/list`` records) cached per entity: a TTL and LRU eviction.

Pure: the clock is injected, so tests move time instead of waiting for it.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable, Iterable
from typing import Any

__all__ = ["MAX_ENTITIES", "TTL_S", "ReferenceCache"]

#: How long a record is trusted, and how many entities are kept at most.
TTL_S = 3600.0
MAX_ENTITIES = 100_000

Key = tuple[str, str]  # (entity type, entity id)


class ReferenceCache:
    def __init__(
        self,
        *,
        ttl_s: float = TTL_S,
        max_entities: int = MAX_ENTITIES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ttl_s = ttl_s
        self.max_entities = max_entities
        self.clock = clock
        self._records: collections.OrderedDict[Key, tuple[float, dict[str, Any]]] = (
            collections.OrderedDict()
        )

    def get(
        self, entity_type: str, ids: Iterable[str]
    ) -> tuple[dict[str, dict[str, Any]], list[str]]:
        """The fresh records of ``ids`` and the ids that must be looked up."""
        now = self.clock()
        found: dict[str, dict[str, Any]] = {}
        missing = []
        for eid in ids:
            key = (entity_type, eid)
            hit = self._records.get(key)
            if hit is not None and now - hit[0] < self.ttl_s:
                self._records.move_to_end(key)
                found[eid] = hit[1]
            else:
                missing.append(eid)
        return found, missing

    def put(self, entity_type: str, records: Iterable[dict[str, Any]]) -> None:
        """Remember records (each with a string ``id``); the least recently used go first."""
        now = self.clock()
        for record in records:
            key = (entity_type, record["id"])
            self._records[key] = (now, record)
            self._records.move_to_end(key)
        while len(self._records) > self.max_entities:
            self._records.popitem(last=False)

    def __len__(self) -> int:
        return len(self._records)
