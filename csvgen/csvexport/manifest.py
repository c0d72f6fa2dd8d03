"""The manifest written beside every export, ``{key}.manifest.json`` (SPEC §9), with no I/O.

A reader can tell from it alone what every column means and verify the file: the
export's object fields, the request's id and fingerprint, each column's binding (a
dimension, or a metric request's value), its type and empty-cell count as written,
each metric request as sent upstream, the sort, the cells escaped for formula safety
and the warnings. Types and counts are read from the table that was written, never
guessed from the request.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import polars as pl

from .. import __version__
from ..frames import fingerprint
from .plan import ExportPlan, value_field

__all__ = ["FORMAT", "MANIFEST_SUFFIX", "column_types", "manifest"]

FORMAT = "csvgen-manifest/1"
MANIFEST_SUFFIX = ".manifest.json"


def column_types(plan: ExportPlan, table: pl.DataFrame) -> list[tuple[str, int]]:
    """Each written column's type (``date``, ``datetime``, ``integer``, ``decimal``,
    ``text``) and its count of empty cells."""
    out = []
    for n, column in enumerate(plan.columns):
        values = table.get_column(f"c{n}")
        empty = values.null_count()
        if column.dimension == "index":
            kind = "date" if plan.date_only else "datetime"
        elif values.dtype.is_integer():
            kind = "integer"
        elif values.dtype.is_float():
            present = values.drop_nulls()
            whole = present.len() == 0 or bool((present == present.round(0)).all())
            kind = "integer" if whole else "decimal"
        else:
            kind = "text"
        out.append((kind, empty))
    return out


def merge_types(a: list[tuple[str, int]], b: list[tuple[str, int]]) -> list[tuple[str, int]]:
    """The types of two batches of rows taken together: a column of whole numbers in one
    and decimals in the other is ``decimal``; empty cells add up."""
    return [
        (ka if ka == kb else "decimal", ea + eb) for (ka, ea), (kb, eb) in zip(a, b, strict=True)
    ]


def manifest(
    *,
    rid: str,
    request_fingerprint: bytes,
    plan: ExportPlan,
    item: dict[str, Any],
    types: list[tuple[str, int]],
    escaped: int,
    generated_at: datetime,
) -> dict[str, Any]:
    """The manifest document of one export; ``item`` is the reply's object fields."""
    return {
        "format": FORMAT,
        "export": {
            "bucket": item["bucket"],
            "key": item["key"],
            "sha256": item["sha256"],
            "sizeBytes": item["sizeBytes"],
            "rowCount": item["rowCount"],
            "contentType": item["contentType"],
            "dialect": plan.dialect,
            "compression": "gzip" if plan.gzip else "none",
        },
        "request": {"id": rid, "fingerprint": request_fingerprint.hex()},
        "generatedAt": generated_at.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "csvgen": __version__,
        "columns": [
            {
                "index": n,
                "heading": c.heading,
                **_binding(plan, n),
                "type": kind,
                "emptyCells": empty,
            }
            for n, (c, (kind, empty)) in enumerate(zip(plan.columns, types, strict=True))
        ],
        "metricRequests": [
            {
                "metricId": m.metric_id,
                "route": m.route,
                "period": m.period,
                "start": m.body.get("start"),
                "end": m.body.get("end"),
                "entities": list(m.entities),
                "upstreamFingerprint": fingerprint(m.route, m.body).hex(),
            }
            for m in plan.metrics
        ],
        "sort": list(plan.sort_by),
        "formulaEscapedCells": escaped,
        "warnings": list(item["warnings"]),
    }


def _binding(plan: ExportPlan, n: int) -> dict[str, Any]:
    column = plan.columns[n]
    if column.metric is None:
        return {"kind": "dimension", "dimension": column.dimension}
    metric = plan.metrics[column.metric]
    return {
        "kind": "value",
        "metricId": metric.metric_id,
        "route": metric.route,
        "fetchValue": value_field(metric, column),
        "field": ".".join(column.path) or None,
        "filter": dict(column.filter),
    }
