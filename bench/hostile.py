"""The `hostile` case of `make bench` (SPEC §8): invalid 1 MiB bodies beside the big export.

Four kinds of invalid body, each just under ``CSVGEN_MAX_BODY_BYTES`` so that it is
read and validated rather than refused by size:

* ``array``: ``metricRequests`` of 500,000 numbers (issue 8's first reproduction);
* ``entities``: one metric request with 70,000 entity ids and a date without a zone;
* ``columns``: 500 columns whose headings hold control characters;
* ``deep``: a body nested 33 levels, padded with a long string.

:func:`validation_times` measures, in this process, what csvgen spends on one
such body on receipt (parse, nesting, size, validation and planning).
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import orjson

from csvgen.config import Settings
from csvgen.csvexport.route import CsvExport
from csvgen.errors import ReplyError
from csvgen.frames import parse_action

TARGET_BYTES = 1024 * 1024 - 2048  # just under the default body limit


def _frame(rid: str, body_text: str) -> bytes:
    head = b'{"action":"external-service","data":{"id":"' + rid.encode()
    return head + b'","route":"external-service/csv-generator","body":' + body_text.encode() + b"}}"


def body_texts(seed: dict[str, Any]) -> dict[str, str]:
    """The four hostile bodies as JSON text, each about 1 MiB."""
    array = '{"metricRequests":[' + ",".join(["1"] * ((TARGET_BYTES - 22) // 2)) + "]}"
    metric = dict(seed["metricRequests"][0])
    metric["start"] = "2024-04-01"
    metric["entities"] = [f"{n:012x}" for n in range((TARGET_BYTES - 600) // 15)]
    entities = orjson.dumps({**seed, "metricRequests": [metric]}).decode()
    heading = "Entries\n" + "x" * ((TARGET_BYTES - 500) // 500 - 60)
    columns = [{"heading": heading, "metricId": "m", "fetchValue": "entries"}] * 500
    wide = orjson.dumps({**seed, "csvFormat": {**seed["csvFormat"], "columns": columns}}).decode()
    pad = "y" * (TARGET_BYTES - 200)
    deep = '{"pad":"' + pad + '","x":' + "[" * 32 + "]" * 32 + "}"
    return {"array": array, "entities": entities, "columns": wide, "deep": deep}


def frames(seed: dict[str, Any], count: int) -> list[tuple[str, bytes]]:
    """``count`` hostile request frames, the four kinds in turn: (id, frame bytes)."""
    texts = list(body_texts(seed).items())
    out = []
    for n in range(count):
        kind, text = texts[n % len(texts)]
        rid = f"hostile-{kind}-{n}"
        out.append((rid, _frame(rid, text)))
    return out


def validation_times(seed: dict[str, Any], repeats: int = 5) -> dict[str, dict[str, Any]]:
    """Per kind: body size and seconds from frame text to the typed refusal (median, max)."""
    export = CsvExport(Settings(bus_url="ws://127.0.0.1:1/bus"), None, None)  # type: ignore[arg-type]
    results = {}
    for kind, text in body_texts(seed).items():
        frame = _frame("v", text)
        seconds, code = [], ""
        for _ in range(repeats):
            started = time.perf_counter()
            try:
                action = parse_action(frame)
                assert action is not None
                export.prepare(action)
            except ReplyError as exc:
                code = exc.code
            seconds.append(time.perf_counter() - started)
        results[kind] = {
            "bytes": len(text),
            "code": code,
            "median": statistics.median(seconds),
            "max": max(seconds),
        }
    return results
