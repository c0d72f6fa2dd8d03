"""The reference cache with a clock the test moves: a TTL and least-recently-used eviction."""

from __future__ import annotations

from csvgen.csvexport.references import ReferenceCache


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def record(eid: str) -> dict[str, str]:
    return {"id": eid, "name": f"name of {eid}"}


def test_fresh_records_are_served_and_stale_ones_asked_again() -> None:
    clock = Clock()
    cache = ReferenceCache(ttl_s=60, clock=clock)
    cache.put("location", [record("a"), record("b")])
    clock.now = 59.0
    assert cache.get("location", ["a", "c"]) == ({"a": record("a")}, ["c"])
    clock.now = 60.0
    assert cache.get("location", ["a", "b"]) == ({}, ["a", "b"])


def test_entity_types_do_not_share_ids() -> None:
    cache = ReferenceCache(clock=Clock())
    cache.put("organisation", [record("x")])
    assert cache.get("location", ["x"]) == ({}, ["x"])


def test_the_least_recently_used_go_first() -> None:
    """Bounded: past max_entities the entity not read for longest is dropped, not all of them."""
    cache = ReferenceCache(max_entities=2, clock=Clock())
    cache.put("location", [record("a"), record("b")])
    cache.get("location", ["a"])  # a is now more recent than b
    cache.put("location", [record("c")])
    assert len(cache) == 2
    assert cache.get("location", ["a", "b", "c"]) == (
        {"a": record("a"), "c": record("c")},
        ["b"],
    )
