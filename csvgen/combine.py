"""Metric answers → one sorted table, with no I/O (SPEC §4, protocol.md "Building the CSV").

The table is built in one pass over each answer's records: a record's row key
is its time bucket (dated CSVs) plus each ``rowFilters`` dimension read from the
record (missing → empty), and it fills the cell of every value column of its
metric request whose ``filter`` it matches. Rows are the union of all keys
(an outer join). Two records for one cell fail the export: never a silent pick.

Pure Python on dicts and tuples: rows are keyed and filled in one pass, then
sorted once with a typed key. Numbers stay the Python values orjson gave, so
the writer controls their text exactly (plain decimal, never exponents).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import orjson

from .errors import MetricFailed, TooLarge
from .plan import VALUE_FIELDS, ColumnSpec, ExportPlan, MetricPlan

__all__ = ["Table", "combine", "records_of"]

Row = list[Any]
_MISSING: Any = object()  # a cell no record filled; becomes empty


class Table:
    """The combined rows, in output order: one list of typed cells per row."""

    def __init__(self, headings: list[str], rows: list[Row]) -> None:
        self.headings = headings
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)


def records_of(plan: ExportPlan, metric: MetricPlan, answer: Any) -> list[dict[str, Any]]:
    """The records of one answer the CSV reads: ``segments`` when dated, else ``summary``."""
    facet = "segments" if plan.dated else "summary"
    records = answer.get(facet) if isinstance(answer, dict) else None
    if not isinstance(records, list):
        raise MetricFailed(metric.metric_id, f"the answer has no {facet} array")
    return records


def combine(
    plan: ExportPlan,
    answers: Sequence[Any],
    names: Mapping[str, str] | None = None,
    *,
    max_rows: int | None = None,
) -> Table:
    """Join the answers (one per ``plan.metrics``) into the sorted table of the CSV.

    Raises:
        MetricFailed: an answer is malformed, or two records claim one cell.
    """
    value_slots = [i for i, c in enumerate(plan.columns) if c.metric is not None]
    slot_of = {col: slot for slot, col in enumerate(value_slots)}
    width = len(value_slots)
    rows: dict[tuple[Any, ...], Row] = {}
    for m, (metric, answer) in enumerate(zip(plan.metrics, answers, strict=True)):
        columns = [(slot_of[i], c) for i, c in enumerate(plan.columns) if c.metric == m]
        _fill(rows, width, plan, metric, records_of(plan, metric, answer), columns)
    keys = list(rows)
    if max_rows is not None and len(keys) > max_rows:
        raise TooLarge(f"the export has {len(keys)} rows; the limit is {max_rows}")
    out = [_assemble(plan, key, rows[key], slot_of, names or {}) for key in keys]
    _sort(plan, out, keys)
    return Table([c.heading for c in plan.columns], out)


def _fill(
    rows: dict[tuple[Any, ...], Row],
    width: int,
    plan: ExportPlan,
    metric: MetricPlan,
    records: list[dict[str, Any]],
    columns: list[tuple[int, ColumnSpec]],
) -> None:
    key_of = _key_function(plan, metric)
    readers = [(slot, _matcher(c, metric), _reader(c, metric), c.heading) for slot, c in columns]
    for record in records:
        if not isinstance(record, dict):
            raise MetricFailed(metric.metric_id, "a record of the answer is not an object")
        key = key_of(record)
        row = None
        for slot, matches, read, heading in readers:
            if matches is not None and not matches(record):
                continue
            if row is None:
                row = rows.get(key)
                if row is None:
                    row = rows[key] = [_MISSING] * width
            if row[slot] is not _MISSING:
                raise MetricFailed(
                    metric.metric_id,
                    f"two records for one cell (row {_show_key(key)}, column {heading!r})",
                )
            row[slot] = read(record)


def _key_function(
    plan: ExportPlan, metric: MetricPlan
) -> Callable[[dict[str, Any]], tuple[Any, ...]]:
    fields = [metric.entity_type if d == "entity" else d for d in plan.row_dimensions]
    if not plan.dated:
        return lambda r: tuple([r.get(f) for f in fields])
    width = 10 if plan.date_only else 19  # YYYY-MM-DD or YYYY-MM-DDTHH:MM:SS, no zone change

    def key(r: dict[str, Any]) -> tuple[Any, ...]:
        index = r.get("index")
        bucket = index[:width] if isinstance(index, str) else None
        return (bucket, *[r.get(f) for f in fields])

    return key


def _matcher(spec: ColumnSpec, metric: MetricPlan) -> Callable[[dict[str, Any]], bool] | None:
    if not spec.filter:
        return None
    pairs = [(metric.entity_type if k == "entity" else k, v) for k, v in spec.filter]
    return lambda r: all(r.get(k) == v for k, v in pairs)


def _reader(spec: ColumnSpec, metric: MetricPlan) -> Callable[[dict[str, Any]], Any]:
    name = spec.fetch_value or VALUE_FIELDS[metric.route][0]
    if not spec.path:
        return lambda r: r.get(name)
    path = spec.path

    def read(r: dict[str, Any]) -> Any:
        value = r.get(name)
        for step in path:
            if not isinstance(value, dict):
                return None
            value = value.get(step)
        return value

    return read


def _assemble(
    plan: ExportPlan,
    key: tuple[Any, ...],
    values: Row,
    slot_of: dict[int, int],
    names: Mapping[str, str],
) -> Row:
    dims = dict(zip(plan.key_dimensions, key, strict=True))
    row: Row = []
    for i, col in enumerate(plan.columns):
        if col.dimension is None:
            value = values[slot_of[i]]
            row.append(None if value is _MISSING else value)
        elif col.dimension == "entity_name":
            entity = dims.get("entity")
            row.append(names.get(entity) if isinstance(entity, str) else None)
        else:
            row.append(dims.get(col.dimension))
    return row


def _typed(value: Any) -> tuple[Any, ...]:
    """Sort key of a cell: numbers numerically, then text by code point, empty last."""
    if value is None or value == "":
        return (2,)
    if isinstance(value, int | float) and not isinstance(value, bool):
        return (0, value)
    if isinstance(value, str):
        return (1, value)
    return (1, orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode())


def _sort(plan: ExportPlan, rows: list[Row], keys: list[tuple[Any, ...]]) -> None:
    """Sort by the sortBy columns, ties broken by the full row key (reproducible output)."""
    order = plan.sort_by
    decorated = [
        (tuple(_typed(row[c]) for c in order), tuple(_typed(k) for k in key), n)
        for n, (row, key) in enumerate(zip(rows, keys, strict=True))
    ]
    decorated.sort()
    rows[:] = [rows[n] for *_, n in decorated]


def _show_key(key: tuple[Any, ...]) -> str:
    return "/".join("" if k is None else str(k) for k in key)
