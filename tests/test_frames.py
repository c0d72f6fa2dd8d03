"""The sans-I/O codec: one table run both ways, plus exact rejections."""

from __future__ import annotations

import random
from typing import Any

import pytest

from csvgen.errors import BodyTooLarge, Detail, FrameError, InvalidEnvelope
from csvgen.frames import (
    Action,
    PartError,
    ReplyAssembler,
    encode_action,
    encode_reply,
    parse_action,
    parse_part,
)

# (wire text, action): parse(text) == action and parse(encode(action)) == action.
ACTIONS = [
    (
        '{"action":"external-service","data":{"id":"req-1","route":"external-service/x","body":{}}}',
        Action("req-1", "external-service/x", {}),
    ),
    (
        '{"action":"external-service","data":{"id":"é","route":"r","body":{"a":[1,2.5,null]}}}',
        Action("é", "r", {"a": [1, 2.5, None]}),
    ),
]


@pytest.mark.parametrize(("text", "action"), ACTIONS)
def test_actions_both_ways(text: str, action: Action) -> None:
    """Parsing the wire text and encoding the value agree in both directions."""
    assert parse_action(text) == action
    assert parse_action(encode_action(action)) == action


def test_missing_body_is_empty() -> None:
    """An action with no body has an empty one."""
    text = '{"action":"external-service","data":{"id":"a","route":"r"}}'
    assert parse_action(text) == Action("a", "r", {})


def test_other_actions_are_not_for_us() -> None:
    """A frame whose action is not external-service parses to None."""
    assert parse_action('{"action":"metric","data":{"id":"a","route":"entries"}}') is None
    assert parse_action('{"data":{"id":"a"}}') is None


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("nope", "not JSON: "),  # the rest is orjson's own wording
        ("[]", "not a JSON object: got list"),
        ('{"action":"external-service"}', "no data object"),
        ('{"action":"external-service","data":{}}', "no data.id"),
        ('{"action":"external-service","data":{"id":7}}', "unusable data.id: 7"),
        ('{"action":"external-service","data":{"id":""}}', "unusable data.id: ''"),
        ('{"action":"external-service","data":{"id":"a|b"}}', "unusable data.id: 'a|b'"),
        (
            '{"action":"external-service","data":{"id":"' + "x" * 257 + '"}}',
            "unusable data.id: 'xxx",
        ),
    ],
)
def test_reject_frames_without_usable_id(text: str, message: str) -> None:
    """No usable id: FrameError with an exact message, and nothing can be answered."""
    with pytest.raises(FrameError) as info:
        parse_action(text)
    assert info.value.reason.startswith(message)


def test_reject_bad_envelope_keeps_the_id() -> None:
    """A usable id with a bad route and body: InvalidEnvelope listing both paths."""
    with pytest.raises(InvalidEnvelope) as info:
        parse_action('{"action":"external-service","data":{"id":"a","route":"","body":3}}')
    assert info.value.request_id == "a"
    assert str(info.value) == (
        "invalid request envelope: route: must be a non-empty string; "
        "body: must be an object, got a number"
    )


# (payload, max_part_chars, wire parts)
REPLIES: list[tuple[Any, int, list[str]]] = [
    ({"body": []}, 100, ['r|0|0|{"body":[]}']),
    ([1, 2], 5, ["r|0|0|[1,2]"]),
    ("abcdefgh", 4, ['r|0|3|"abc', "r|1|3|defg", 'r|2|3|h"']),
    ({"a": "x|y"}, 3, ['r|0|4|{"a', 'r|1|4|":"', "r|2|4|x|y", 'r|3|4|"}']),
]


@pytest.mark.parametrize(("payload", "limit", "parts"), REPLIES)
def test_replies_both_ways(payload: Any, limit: int, parts: list[str]) -> None:
    """Encoding splits by characters of JSON; the assembler rebuilds the payload."""
    assert encode_reply("r", payload, max_part_chars=limit) == parts
    assembler = ReplyAssembler()
    results = [assembler.feed(p) for p in parts]
    assert results[:-1] == [None] * (len(parts) - 1)
    assert results[-1] == ("r", payload)


def test_single_part_forms() -> None:
    """0|0, 0|1 and 1|1 are all complete single-part answers."""
    for prefix in ("0|0", "0|1", "1|1"):
        assert ReplyAssembler().feed(f"a|{prefix}|[1]") == ("a", [1])


def test_parts_numbered_from_one_and_interleaved() -> None:
    """Parts may be numbered 1..n and interleave with another id's parts, in any order."""
    assembler = ReplyAssembler()
    frames = ["a|2|2|2]", 'b|0|2|["x', "a|1|2|[1,", 'b|1|2|"]']
    assert [assembler.feed(f) for f in frames] == [None, None, ("a", [1, 2]), ("b", ["x"])]


@pytest.mark.parametrize(
    ("frames", "message"),
    [
        (["a|0|2|[", "a|0|2|1]"], "duplicate part 0 of answer 'a'"),
        (["a|1|3|1", "a|1|3|1"], "duplicate part 1 of answer 'a'"),
        (["a|3|2|["], "part 3 out of range for 2 parts"),
        (["a|0|3|[", "a|1|2|1]"], "answer 'a' changed totalParts from 3 to 2"),
        (
            ["a|0|3|[", "a|1|3|1", "a|3|3|]"],
            "answer 'a' has part 3; its parts are numbered 0..2",
        ),
        (
            ["a|2|3|1", "a|3|3|]", "a|0|3|["],
            "answer 'a' has part 0; its parts are numbered 1..3",
        ),
        (["a|0|2|[", "a|0|0|[]"], "single-part frame for 'a' while its parts were arriving"),
        (["a|0|2|[", "a|1|2|1"], "answer 'a' is not JSON"),
        (["a|2|0|[]"], "part 2 of a single-part answer"),
        (
            ["a|x|0|[]"],
            "part numbers must be non-negative integers of at most 9 digits, got 'x'|'0'",
        ),
        (
            ["a|0|" + "9" * 5000 + "|{"],
            "part numbers must be non-negative integers of at most 9 digits, got '0'|'99999",
        ),
        (["a|0|[]"], "not a framed answer: expected id|part|total|json"),
        (["|0|0|[]"], "empty id in framed answer"),
    ],
)
def test_reject_broken_multipart(frames: list[str], message: str) -> None:
    """A broken multi-part answer is an error at once, never a hang."""
    assembler = ReplyAssembler()
    with pytest.raises(PartError) as info:
        for f in frames:
            assembler.feed(f)
    assert str(info.value).startswith(message)
    assert list(assembler.pending_ids()) == []


def test_parse_part_leaves_pipes_in_json() -> None:
    """Only the first three pipes separate fields."""
    assert parse_part('id|1|3|{"a":"|"}') == ("id", 1, 3, b'{"a":"|"}')


def test_replies_without_a_limit_are_one_frame() -> None:
    """csvgen's own replies are single-part however long (the spec's id|0|0|json)."""
    payload = {"error": {"details": ["x" * 100] * 30_000}}
    [text] = encode_reply("r", payload)
    assert text.startswith("r|0|0|{") and len(text) > 3_000_000


def test_reject_zero_part_limit() -> None:
    with pytest.raises(ValueError, match="max_part_chars must be at least 1"):
        encode_reply("r", {}, max_part_chars=0)


def test_random_text_never_crashes_the_parser() -> None:
    """Random bytes and cut-off envelopes: an action, None, or one of the two frame errors."""
    rng = random.Random(7)
    envelope = encode_action(Action("req-1", "external-service/x", {"a": [1, "|", None]}))
    samples = [envelope[: rng.randint(0, len(envelope))] for _ in range(300)]
    samples += [bytes(rng.randrange(256) for _ in range(rng.randint(0, 64))) for _ in range(300)]
    for sample in samples:
        try:
            result = parse_action(sample)
        except (FrameError, InvalidEnvelope):
            continue
        assert result is None or isinstance(result, Action)


def test_random_frames_never_crash_the_assembler() -> None:
    """Arbitrary id|n|total|json frames fail with PartError or complete, nothing else."""
    rng = random.Random(11)
    assembler = ReplyAssembler()
    completed = refused = 0
    for _ in range(2000):
        rid = rng.choice("ab")
        total = rng.randint(0, 4)
        part = rng.randint(0, 5)
        body = rng.choice(["[1,", "2]", "{}", '"x"', ""])
        try:
            completed += assembler.feed(f"{rid}|{part}|{total}|{body}") is not None
        except PartError:
            refused += 1
    assert completed > 50 and refused > 50


LIMIT = 2048


def big(body_text: str, *, first: str = '"id":"r1","route":"external-service/x",') -> str:
    return '{"action":"external-service","data":{' + first + '"body":' + body_text + "}}"


def test_oversized_frame_is_refused_from_its_envelope_alone() -> None:
    """A frame over the body limit + envelope room: too_large for the id written before the body."""
    text = big('{"x":"' + "y" * 50_000 + '"')  # not even valid JSON past the envelope
    with pytest.raises(BodyTooLarge) as info:
        parse_action(text, max_body_bytes=LIMIT)
    assert info.value.request_id == "r1"
    assert info.value.details == [
        Detail("body", f"must be at most {LIMIT} bytes of JSON, got {len(text)}")
    ]


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        (
            '{"action":"external-service","data":{"body":{"x":"' + "y" * 50_000 + '"},"id":"r1"}}',
            "oversized frame ({n} bytes) with no usable data.id",
        ),
        (
            '{"pad":"' + "y" * 50_000 + '"}',
            "oversized frame ({n} bytes) with no envelope before its body",
        ),
        (
            big('"' + "y" * 50_000 + '"', first='"id":7,'),
            "oversized frame ({n} bytes) with no usable data.id",
        ),
    ],
)
def test_reject_oversized_frame_without_a_leading_envelope(text: str, reason: str) -> None:
    with pytest.raises(FrameError) as info:
        parse_action(text, max_body_bytes=LIMIT)
    assert info.value.reason == reason.format(n=len(text))


def test_oversized_frame_of_another_action_is_ignored() -> None:
    text = '{"action":"metric","data":{"id":"m","body":"' + "y" * 50_000 + '"}}'
    assert parse_action(text, max_body_bytes=LIMIT) is None


def test_body_near_the_limit_is_measured_as_compact_json() -> None:
    """Between the limit and limit + envelope room the body itself is measured."""
    spaced = "{" + " " * (LIMIT + 100) + '"a":1}'  # 2 KiB of text, 7 bytes of JSON
    assert parse_action(big(spaced), max_body_bytes=LIMIT) is not None
    with pytest.raises(BodyTooLarge):
        parse_action(big('{"a":"' + "y" * LIMIT + '"}'), max_body_bytes=LIMIT)


@pytest.mark.parametrize(("depth", "ok"), [(4, True), (5, False)])
def test_nesting_limit_counts_from_the_body(depth: int, ok: bool) -> None:
    body = "[" * (depth - 1) + "]" * (depth - 1)
    text = big('{"x":' + body + "}")
    if ok:
        assert parse_action(text, max_depth=4) is not None
    else:
        with pytest.raises(InvalidEnvelope) as info:
            parse_action(text, max_depth=4)
        assert info.value.details == [Detail("body", "must be nested at most 4 levels")]


@pytest.mark.parametrize(
    ("frames", "handed_out"),
    [
        # In order from 0: each part as it arrives.
        (["a|0|3|[1", "a|1|3|,2", "a|2|3|]"], [["[1"], [",2"], ["]"]]),
        # Out of order: held until the gap is filled.
        (["a|1|3|,2", "a|0|3|[1", "a|2|3|]"], [[], ["[1", ",2"], ["]"]]),
        # From 1: the numbering is known only when part totalParts arrives.
        (["a|1|3|[1", "a|2|3|,2", "a|3|3|]"], [[], [], ["[1", ",2", "]"]]),
        (["a|3|3|]", "a|1|3|[1", "a|2|3|,2"], [[], ["[1"], [",2", "]"]]),
    ],
)
def test_stream_hands_out_parts_in_order(frames: list[str], handed_out: list[list[str]]) -> None:
    assembler = ReplyAssembler()
    got = [assembler.feed_stream(f) for f in frames]
    assert [[p.decode() for p in ready] for _, ready, _ in got] == handed_out
    assert [complete for _, _, complete in got] == [False] * (len(frames) - 1) + [True]
    assert list(assembler.pending_ids()) == []
