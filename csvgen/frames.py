"""The wire codec, with no I/O (protocol.md, "Frames").

Inbound, the bus sends JSON text frames::

    {"action": "external-service", "data": {"id": "...", "route": "...", "body": {...}}}

Outbound, and on the Metrics API side in both directions, answers are framed::

    {id}|{partNum}|{totalParts}|{json}

Decisions this module encodes (each has a ``test_reject_*`` case):

* ``totalParts`` 0 or 1 means the frame is complete (``0|0``, ``0|1``, ``1|1``).
* A split answer has ``totalParts`` parts numbered from 0; numbering from 1 is
  accepted too. Their JSON texts concatenate, in part order, into one document.
* The part size limit counts characters of the JSON text, not the prefix.
* A request id is 1 to 256 characters and never contains ``|``: such an id could
  not be echoed unambiguously, so the frame is treated as having no usable id.
* Part numbers have at most 9 digits; a longer one is a broken frame, not a number.

Requests are bounded before they cost anything (SPEC §8, protocol.md §1):

* A frame longer than ``max_body_bytes`` plus ``ENVELOPE_ALLOWANCE`` is refused
  (:class:`~csvgen.errors.BodyTooLarge`) without parsing its body: only the
  envelope written before ``"body"`` is read, for the id. A shorter frame is parsed
  and its body measured exactly, as compact JSON.
* Nesting is counted on the raw text at C speed (:func:`nesting`); a body nested
  deeper than ``max_depth`` levels is ``invalid_request`` before anything walks it.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson

from .errors import (
    BodyTooLarge,
    Detail,
    FrameError,
    InvalidEnvelope,
    PartError,
    UpstreamError,
    echo,
)

__all__ = [
    "ENVELOPE_ALLOWANCE",
    "EXTERNAL_SERVICE",
    "MAX_BODY_BYTES",
    "MAX_DEPTH",
    "MAX_ID_CHARS",
    "Action",
    "PartError",
    "ReplyAssembler",
    "encode_action",
    "encode_reply",
    "envelope_head",
    "error_message",
    "fingerprint",
    "json_type",
    "nesting",
    "parse_action",
    "parse_answer",
    "parse_part",
]

EXTERNAL_SERVICE = "external-service"
MAX_ID_CHARS = 256
#: Defaults of CSVGEN_MAX_BODY_BYTES and CSVGEN_MAX_BODY_DEPTH.
MAX_BODY_BYTES = 1024 * 1024
MAX_DEPTH = 32
#: Room for the envelope (action, id, route) around a body at the size limit.
ENVELOPE_ALLOWANCE = 16 * 1024
#: The envelope of an oversized frame is looked for in its first bytes only.
_HEAD_BYTES = 64 * 1024
#: Levels the envelope adds above the body: the frame object and ``data``.
_ENVELOPE_LEVELS = 2
_MAX_PART_DIGITS = 9

#: Bytes that matter for nesting: brackets, and what delimits strings.
_NOT_STRUCTURE = bytes(b for b in range(256) if b not in b'[]{}",:')
_STRING = re.compile(rb'"[^"]*"')
_BODY_KEY = re.compile(rb'"body"\s*:')


@dataclass(frozen=True, slots=True)
class Action:
    """One inbound request, validated as far as the envelope goes."""

    id: str
    route: str
    body: dict[str, Any]
    action: str = EXTERNAL_SERVICE


def _usable_id(value: object) -> str | None:
    if isinstance(value, str) and 0 < len(value) <= MAX_ID_CHARS and "|" not in value:
        return value
    return None


def nesting(data: bytes, limit: int) -> int:
    """The nesting depth of valid JSON text, counted up to ``limit + 1`` at most.

    Escaped backslashes and quotes go first, then everything but brackets, quotes
    and separators; then the strings left empty, then any string still holding a bracket;
    then each pass replaces the innermost ``[]``/``{}`` pairs: the number of passes
    is the depth. Every step is a C loop over the text (a megabyte costs a few
    milliseconds, however deep or string-heavy it is).
    """
    unescaped = data.replace(b"\\\\", b"").replace(b'\\"', b"")  # no \\ or \" is left
    kept = unescaped.translate(None, _NOT_STRUCTURE).replace(b'""', b"")
    if b'"' in kept:
        kept = _STRING.sub(b"", kept)
    brackets = kept.translate(None, b",:")
    depth = 0
    while brackets and depth <= limit:
        brackets = brackets.replace(b"[]", b".").replace(b"{}", b".").translate(None, b".")
        depth += 1
    return depth


def parse_action(
    text: str | bytes, *, max_body_bytes: int = MAX_BODY_BYTES, max_depth: int = MAX_DEPTH
) -> Action | None:
    """Parse one inbound bus frame.

    Returns:
        The action, or ``None`` when the frame is not for csvgen (its ``action``
        is not ``external-service``).

    Raises:
        FrameError: the text is not JSON or has no usable ``data.id``; nothing
            can be answered.
        InvalidEnvelope: the id is usable but the envelope is wrong, or the body is
            nested too deep; the caller replies with it.
        BodyTooLarge: the id is usable but the body is over ``max_body_bytes``.
    """
    raw = text.encode() if isinstance(text, str) else text
    if len(raw) > max_body_bytes + ENVELOPE_ALLOWANCE:
        _refuse_oversized(raw, max_body_bytes)  # raises, unless the frame is not for csvgen
        return None
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise FrameError(f"not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise FrameError(f"not a JSON object: got {type(doc).__name__}")
    data = doc.get("data")
    raw_id = data.get("id") if isinstance(data, dict) else None
    action = doc.get("action")
    if action != EXTERNAL_SERVICE:
        return None
    if not isinstance(data, dict):
        raise FrameError("no data object")
    rid = _usable_id(raw_id)
    if rid is None:
        if raw_id is None:
            raise FrameError("no data.id")
        raise FrameError(f"unusable data.id: {echo(raw_id)}")
    problems: list[Detail] = []
    route = data.get("route")
    if not isinstance(route, str) or not route:
        problems.append(Detail("route", "must be a non-empty string"))
    body = data.get("body", {})
    if not isinstance(body, dict):
        problems.append(Detail("body", f"must be an object, got {json_type(body)}"))
    if problems:
        raise InvalidEnvelope(rid, problems)
    assert isinstance(route, str) and isinstance(body, dict)
    if nesting(raw, max_depth + _ENVELOPE_LEVELS) > max_depth + _ENVELOPE_LEVELS:
        raise InvalidEnvelope(rid, [Detail("body", f"must be nested at most {max_depth} levels")])
    if len(raw) > max_body_bytes and (size := len(orjson.dumps(body))) > max_body_bytes:
        raise BodyTooLarge(rid, size, max_body_bytes)
    return Action(rid, route, body)


def envelope_head(data: bytes) -> dict[str, Any] | None:
    """The frame's JSON written before ``"body"`` (in its first 64 KiB), completed and
    read; None when there is no such envelope. It costs nothing for a large body."""
    found = _BODY_KEY.search(data, 0, _HEAD_BYTES)
    if found is None:
        return None
    with_comma = data[: found.start()].rstrip()
    prefix = with_comma[:-1] if with_comma.endswith(b",") else with_comma
    try:
        head = orjson.loads(prefix + b"}}")
    except orjson.JSONDecodeError:
        return None
    return head if isinstance(head, dict) else None


def _refuse_oversized(data: bytes, max_body_bytes: int) -> None:
    """An oversized frame: answer ``too_large`` if the envelope before its body names an id.

    Any encoder that keeps key order writes ``{"action":…,"data":{"id":…,"route":…,
    "body":…}}``; the text before ``"body"`` is completed into JSON and read. A frame
    written in another order cannot be answered without reading it whole, which is
    what this refuses to do: it is dropped like a frame without an id.
    """
    head = envelope_head(data)
    envelope = head.get("data") if head is not None else None
    if head is None or not isinstance(envelope, dict):
        raise FrameError(f"oversized frame ({len(data)} bytes) with no envelope before its body")
    if head.get("action") != EXTERNAL_SERVICE:
        return None
    rid = _usable_id(envelope.get("id"))
    if rid is None:
        raise FrameError(f"oversized frame ({len(data)} bytes) with no usable data.id")
    raise BodyTooLarge(rid, len(data), max_body_bytes)


def fingerprint(route: str, body: dict[str, Any]) -> bytes:
    """The identity of a request's content: its route and body, key order ignored."""
    return hashlib.sha256(orjson.dumps([route, body], option=orjson.OPT_SORT_KEYS)).digest()


def encode_action(action: Action) -> str:
    """The inverse of :func:`parse_action` (used by tests, the stand-in and the client)."""
    doc = {
        "action": action.action,
        "data": {"id": action.id, "route": action.route, "body": action.body},
    }
    return orjson.dumps(doc).decode()


def encode_reply(rid: str, payload: object, *, max_part_chars: int | None = None) -> list[str]:
    """Frame ``payload`` as one or more ``id|n|total|json`` parts.

    Without ``max_part_chars`` (csvgen's own replies) it is always one ``id|0|0|``
    frame. Otherwise a payload whose JSON fits in ``max_part_chars`` is one frame
    and a longer one is cut into ``total`` parts numbered from 0 (the stand-in's answers).
    """
    if max_part_chars is not None and max_part_chars < 1:
        raise ValueError("max_part_chars must be at least 1")
    text = orjson.dumps(payload).decode()
    if max_part_chars is None or len(text) <= max_part_chars:
        return [f"{rid}|0|0|{text}"]
    chunks = [text[i : i + max_part_chars] for i in range(0, len(text), max_part_chars)]
    total = len(chunks)
    return [f"{rid}|{n}|{total}|{chunk}" for n, chunk in enumerate(chunks)]


def parse_part(frame: str | bytes) -> tuple[str, int, int, bytes]:
    """Split one framed answer into ``(id, partNum, totalParts, json_bytes)``.

    Only the first three ``|`` separate fields, so a ``|`` in the JSON is left alone.
    """
    data = frame.encode() if isinstance(frame, str) else frame
    fields = data.split(b"|", 3)
    if len(fields) != 4:
        raise PartError("not a framed answer: expected id|part|total|json")
    raw_id, part, total, body = fields
    rid = raw_id.decode(errors="replace")
    if not rid:
        raise PartError("empty id in framed answer")
    if not all(n.isdigit() and len(n) <= _MAX_PART_DIGITS for n in (part, total)):
        raise PartError(
            "part numbers must be non-negative integers of at most "
            f"{_MAX_PART_DIGITS} digits, got {echo(part.decode(errors='replace'))}|"
            f"{echo(total.decode(errors='replace'))}",
            rid,
        )
    return rid, int(part), int(total), body


@dataclass(slots=True)
class _Pending:
    total: int
    parts: dict[int, bytes] = field(default_factory=dict)  # received, not yet handed out
    received: int = 0
    next: int | None = None  # the next part to hand out; None until the numbering is known
    base: int = 0


class ReplyAssembler:
    """Reassembles framed answers, h11 style: feed a frame, get a document when complete.

    Parts of different ids may interleave. A duplicate part, a part number out of
    range or a change of ``totalParts`` raises :class:`PartError` and forgets the id,
    so a broken answer fails at once instead of hanging.

    :meth:`feed_stream` hands out each answer's parts in order as soon as they are
    contiguous, so a reader can start before the answer is complete. The numbering
    (from 0 or from 1, SPEC §3) is known when part 0 or part ``totalParts`` arrives;
    until then parts are held.
    """

    def __init__(self) -> None:
        self._pending: dict[str, _Pending] = {}
        self._whole: dict[str, list[bytes]] = {}  # feed_parts: what was handed out so far

    def feed(self, frame: str | bytes) -> tuple[str, Any] | None:
        """Take one frame; return ``(id, parsed JSON)`` when its answer is complete."""
        done = self.feed_raw(frame)
        return None if done is None else (done[0], _loads(done[0], done[1]))

    def feed_raw(self, frame: str | bytes) -> tuple[str, bytes] | None:
        """Take one frame; return ``(id, JSON bytes)`` when its answer is complete."""
        done = self.feed_parts(frame)
        return None if done is None else (done[0], b"".join(done[1]))

    def feed_parts(self, frame: str | bytes) -> tuple[str, list[bytes]] | None:
        """Take one frame; return ``(id, its parts' JSON bytes in order)`` when complete.

        The parts are not joined here: joining a 200 MB answer takes 0.1 s, which a
        caller on an event loop does better in a worker thread.
        """
        rid, ready, complete = self.feed_stream(frame)
        if complete:
            return rid, [*self._whole.pop(rid, ()), *ready]
        if ready:
            self._whole.setdefault(rid, []).extend(ready)
        return None

    def feed_stream(self, frame: str | bytes) -> tuple[str, list[bytes], bool]:
        """Take one frame; return its id, the parts now ready in order, and whether the
        answer is complete (every part handed out)."""
        rid, part, total, body = parse_part(frame)
        if total <= 1:
            if rid in self._pending:
                self.forget(rid)
                raise PartError(f"single-part frame for {rid!r} while its parts were arriving", rid)
            if part > 1:
                raise PartError(f"part {part} of a single-part answer", rid)
            return rid, [body], True
        pending = self._pending.setdefault(rid, _Pending(total))
        try:
            _check_part(rid, pending, part, total)
        except PartError:
            self.forget(rid)
            raise
        pending.parts[part] = body
        pending.received += 1
        if pending.next is None and (0 in pending.parts or total in pending.parts):
            pending.base = pending.next = 0 if 0 in pending.parts else 1
        ready = []
        while pending.next is not None and pending.next in pending.parts:
            ready.append(pending.parts.pop(pending.next))
            pending.next += 1
        if pending.received < total:
            return rid, ready, False
        del self._pending[rid]
        return rid, ready, True

    def forget(self, rid: str) -> None:
        """Drop the parts received so far for ``rid`` (its request timed out)."""
        self._pending.pop(rid, None)
        self._whole.pop(rid, None)

    def pending_ids(self) -> Iterator[str]:
        return iter(list(self._pending))


def _check_part(rid: str, pending: _Pending, part: int, total: int) -> None:
    """A part that can belong to the answer: same total, in range, not seen before."""
    if pending.total != total:
        raise PartError(f"answer {rid!r} changed totalParts from {pending.total} to {total}", rid)
    if part > total:
        raise PartError(f"part {part} out of range for {total} parts", rid)
    handed_out = pending.next is not None and pending.base <= part < pending.next
    if part in pending.parts or handed_out:
        raise PartError(f"duplicate part {part} of answer {rid!r}", rid)
    if pending.next is not None and part in (total, 0) and part != pending.base:
        first = f"0..{total - 1}" if pending.base == 0 else f"1..{total}"
        raise PartError(f"answer {rid!r} has part {part}; its parts are numbered {first}", rid)


def _loads(rid: str, text: bytes) -> Any:
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        raise PartError(f"answer {echo(rid)} is not JSON", rid) from None


def json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def parse_answer(data: bytes) -> Any:
    """A Metrics API answer's JSON, parsed.

    Raises:
        UpstreamError: it is not JSON, or it is an error answer (an object with ``error``).
    """
    try:
        answer = orjson.loads(data)
    except orjson.JSONDecodeError:
        raise UpstreamError("the answer is not JSON") from None
    message = error_message(answer)
    if message is not None:
        raise UpstreamError(message)
    return answer


def error_message(answer: Any) -> str | None:
    """The upstream error text when ``answer`` is an error answer, else None."""
    if not isinstance(answer, dict) or "error" not in answer:
        return None
    error = answer["error"]
    if isinstance(error, dict):
        parts = [str(error[k]) for k in ("code", "message") if error.get(k) is not None]
        return ": ".join(parts) or "an error answer"
    return str(error)
