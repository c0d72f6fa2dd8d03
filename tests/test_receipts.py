"""Idempotency memory on its own: receipts counted and bounded, repeats, reuse, expiry."""

from __future__ import annotations

import pytest

from csvgen.errors import InvalidRequest
from csvgen.receipts import Done, MemoryReceipts, Seen

FP, OTHER = b"fp", b"other"


class Clock:
    now = 0.0

    def __call__(self) -> float:
        return self.now


def test_receipts_of_one_id_in_flight_are_counted_up_to_the_bound() -> None:
    receipts = MemoryReceipts(ttl_s=600, max_receipts=3)
    assert receipts.receive("r", FP) == (Seen.NEW, None)
    receipts.admit("r", FP)
    assert [receipts.receive("r", FP)[0] for _ in range(4)] == [
        Seen.DUPLICATE,
        Seen.DUPLICATE,
        Seen.OVERFLOW,
        Seen.DROPPED,
    ]
    assert receipts.finish("r", None) == 3  # one reply per receipt kept
    assert receipts.receive("r", FP) == (Seen.NEW, None)  # a failure is not remembered


def test_a_finished_id_is_answered_again_until_it_expires() -> None:
    clock = Clock()
    receipts = MemoryReceipts(ttl_s=600, clock=clock)
    receipts.admit("r", FP)
    done = Done(FP, {"body": []}, None, at=clock())
    assert receipts.finish("r", done) == 1
    clock.now = 599.0
    assert receipts.receive("r", FP) == (Seen.DONE, done)
    clock.now = 600.0
    assert receipts.receive("r", FP) == (Seen.NEW, None)


@pytest.mark.parametrize("finished", [False, True])
def test_an_id_reused_with_another_body_is_invalid(finished: bool) -> None:
    receipts = MemoryReceipts(ttl_s=600, clock=Clock())
    receipts.admit("r", FP)
    if finished:
        receipts.finish("r", Done(FP, {}, None, at=0.0))
    with pytest.raises(InvalidRequest) as info:
        receipts.receive("r", OTHER)
    assert [(d.path, d.message) for d in info.value.details] == [
        ("id", "request id 'r' was already used with a different body")
    ]


def test_the_oldest_finished_ids_are_forgotten_first() -> None:
    receipts = MemoryReceipts(ttl_s=600, max_remembered=2, clock=Clock())
    for rid in ("a", "b", "c"):
        receipts.admit(rid, FP)
        receipts.finish(rid, Done(FP, {}, None, at=0.0))
    assert [receipts.receive(rid, FP)[0] for rid in ("a", "b", "c")] == [
        Seen.NEW,
        Seen.DONE,
        Seen.DONE,
    ]


def test_known_ids_are_those_in_flight_or_remembered() -> None:
    """The dispatcher asks this before fingerprinting: a new id is validated first."""
    clock = Clock()
    receipts = MemoryReceipts(ttl_s=600, clock=clock)
    assert not receipts.known("r")
    receipts.admit("r", FP)
    assert receipts.known("r")
    receipts.finish("r", Done(FP, {}, None, at=0.0))
    assert receipts.known("r")
    clock.now = 600.0
    assert not receipts.known("r")
