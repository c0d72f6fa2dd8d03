"""Metric records → one sorted table, with no I/O (SPEC §4, protocol.md §5).

Why polars: an export can join several answers of millions of records. Done
in Python dicts, the 2.2M-row benchmark spent 33 s combining and sorting and
peaked at 5 GB; as polars frames the same join and sort take about a second
(see bench/README.md), in native threads that leave the event loop free.

How: every value column of a metric request becomes a frame of the row key
(``k0…``: the time bucket when dated, then each ``rowFilters`` dimension, all
text, a missing one null) and its value (``v<slot>``), filtered by the column's
``filter``. Columns of one request with the same filter share a frame. The
frames are outer-joined on the key with nulls equal, so a record lacking a
dimension lands on the row where it is empty. A key twice in one frame is two
records for one cell: ``metric_failed``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import polars as pl

from ..errors import MetricFailed, TooLarge
from .answers import Records
from .plan import ColumnSpec, ExportPlan, MetricPlan, field_of, value_field

__all__ = [
    "IN_MEMORY_FACTOR",
    "any_twice",
    "check_parts",
    "combine",
    "each_part",
    "finish",
    "in_memory_cost",
    "key_hashes",
    "key_names",
    "output",
    "side_by_side",
    "sort_order",
    "sources_of",
    "split",
    "text_ranks",
]


def combine(
    plan: ExportPlan,
    frames: Sequence[Records],
    names: Mapping[str, str] | None = None,
    *,
    max_rows: int | None = None,
    consume: bool = False,
) -> pl.DataFrame:
    """The CSV's rows, sorted and ready to write: one column per CSV column.

    ``frames`` holds the records of each of ``plan.metrics``, in order. Formula
    safety is the writer's (csvwrite.py). outofcore.py does the same out of core,
    from the same pieces. ``consume``: see :func:`split`.

    Raises:
        MetricFailed: two records claim one cell.
        TooLarge: more than ``max_rows`` rows.
    """
    keys = key_names(plan)
    parts, owners = split(plan, frames, keys, consume=consume)
    groups = side_by_side(parts, keys)
    table = groups[0]
    for group in groups[1:]:
        if _same_keys(table, group, keys):
            table = table.hstack(group.drop(keys))
        else:
            table = table.join(group, on=keys, how="full", coalesce=True, nulls_equal=True)
    del groups
    # Joins of frames with unique keys give unique keys. Hashes of the keys find a key
    # twice in a fraction of the memory of the keys themselves (the big export: 70 MB
    # instead of 355 MB); a collision only costs the exact check of each part.
    if _has_twice(table, keys):
        for part, owner in zip(parts, owners, strict=True):
            _check_unique(part, keys, *owner)
    del parts
    if max_rows is not None and table.height > max_rows:
        raise TooLarge(f"the export has {table.height} rows; the limit is {max_rows}")
    sources = sources_of(plan, keys)
    table = finish(plan, table, sources, keys, names)
    table = _sorted(table, sort_order(plan, sources, keys))
    return table.select(output(sources))


#: What combining in memory costs, per byte of the answers' records as read (measured on
#: the big export: 112 MB of records, 0.9 GB of peak memory above the process's own).
IN_MEMORY_FACTOR = 8


def in_memory_cost(frames: Sequence[pl.DataFrame]) -> int:
    """Bytes :func:`combine` is expected to need for these answers' records."""
    unique = {id(f): f for f in frames}.values()  # requests sharing one answer share its frame
    return IN_MEMORY_FACTOR * sum(int(f.estimated_size()) for f in unique)


def key_names(plan: ExportPlan) -> list[str]:
    """The row key's columns: ``k0…``, one per key dimension."""
    return [f"k{n}" for n in range(len(plan.key_dimensions))]


def split(
    plan: ExportPlan, frames: Sequence[Records], keys: list[str], *, consume: bool = False
) -> tuple[list[pl.DataFrame], list[tuple[MetricPlan, ColumnSpec]]]:
    """Every metric request's records as parts (the key, then value columns) and whose
    records each part holds. ``consume``: each frame of ``frames`` (a list) is dropped
    from it once its parts are made, so that an answer and its parts are not all held
    at once."""
    parts: list[pl.DataFrame] = []
    owners: list[tuple[MetricPlan, ColumnSpec]] = []
    for _, part, owner in each_part(plan, frames, keys, consume=consume):
        parts.append(part)
        owners.append(owner)
    return parts, owners


def each_part(
    plan: ExportPlan,
    frames: Sequence[Records],
    keys: list[str],
    *,
    consume: bool = False,
    rows: int | None = None,
) -> Iterator[tuple[int, pl.DataFrame, tuple[MetricPlan, ColumnSpec]]]:
    """:func:`split`'s parts one by one, numbered, one answer at a time (a spilled one
    read from its files). With ``rows``, an answer is read that many records at a
    time, and each of its parts comes in pieces, one a slice, under one number."""
    base = 0
    for m, metric in enumerate(plan.metrics):
        records = frames[m]
        if consume:
            assert isinstance(frames, list)
            frames[m] = pl.DataFrame()
        count = 0
        for chunk in _slices(records, rows):
            pieces = _parts(plan, m, metric, chunk, keys)
            del chunk
            for n, (part, column) in enumerate(pieces):
                yield base + n, part, (metric, column)
            count = len(pieces)
        base += count


def _slices(records: Records, rows: int | None) -> Iterator[pl.DataFrame]:
    """``records`` in slices of ``rows`` (all at once when None); at least one."""
    if rows is None:
        yield records.collect() if isinstance(records, pl.LazyFrame) else records
        return
    lazy = records.lazy()
    total = lazy.select(pl.len()).collect().item()
    for start in range(0, max(total, 1), rows):
        yield lazy.slice(start, rows).collect()


def side_by_side(parts: list[pl.DataFrame], keys: list[str]) -> list[pl.DataFrame]:
    """Neighbouring parts with the same keys in the same order as one frame.

    Answers for one period, entities and breakdown often share their keys row for
    row; two requests of one upstream answer always do. Side by side is their join,
    without the hashing."""
    groups: list[pl.DataFrame] = []
    for part in parts:
        if groups and _same_keys(groups[-1], part, keys):
            groups[-1] = groups[-1].hstack(part.drop(keys))
        else:
            groups.append(part)
    return groups


def check_parts(
    parts: list[pl.DataFrame], owners: list[tuple[MetricPlan, ColumnSpec]], keys: list[str]
) -> None:
    """Raise MetricFailed, naming the cell, if a part has a key twice."""
    for part, owner in zip(parts, owners, strict=True):
        if _has_twice(part, keys):
            _check_unique(part, keys, *owner)


def sources_of(plan: ExportPlan, keys: list[str]) -> list[str]:
    """Each CSV column's source: a key, a value (``v<n>``), or the entity's ``name``."""
    where = dict(zip(plan.key_dimensions, keys, strict=True))
    return [
        "name"
        if col.dimension == "entity_name"
        else where[col.dimension]
        if col.dimension
        else f"v{n}"
        for n, col in enumerate(plan.columns)
    ]


def finish(
    plan: ExportPlan,
    table: pl.DataFrame,
    sources: list[str],
    keys: list[str],
    names: Mapping[str, str] | None,
) -> pl.DataFrame:
    """The entity's name beside its key, values as they are written (row by row, so a
    part of the rows gives the same as the whole)."""
    if "name" in sources:
        entity = pl.col(keys[plan.key_dimensions.index("entity")]).cast(pl.String)
        names_of = entity.replace_strict(dict(names or {}), default=None, return_dtype=pl.String)
        table = table.with_columns(names_of.alias("name"))
    schema = table.schema  # once: each call builds it anew, in time linear in the columns
    return table.with_columns(
        _as_text(schema[c], c) for c in dict.fromkeys(sources) if c not in keys and c in schema
    )


def sort_order(plan: ExportPlan, sources: list[str], keys: list[str]) -> list[str]:
    """The columns to sort on: ``sortBy``'s, then the full row key to break ties (a key
    already sorted on is not sorted on again). Always ascending, nulls last."""
    return list(dict.fromkeys([sources[n] for n in plan.sort_by] + keys))


def output(sources: list[str]) -> list[pl.Expr]:
    """The CSV's columns, ``c0…``, from the finished table. Keys stay categorical: the
    writer writes their text without making a column of it (the big export: three
    columns of 2.19M texts)."""
    return [pl.col(src).alias(f"c{n}") for n, src in enumerate(sources)]


def _parts(
    plan: ExportPlan, m: int, metric: MetricPlan, frame: pl.DataFrame, keys: list[str]
) -> list[tuple[pl.DataFrame, ColumnSpec]]:
    """One frame per distinct filter among the value columns of metric request ``m``.

    Each comes with its first column, to name in an error.
    """
    by_filter: dict[tuple[tuple[str, str], ...], list[tuple[int, ColumnSpec]]] = {}
    for n, col in enumerate(plan.columns):
        if col.metric == m:
            by_filter.setdefault(col.filter, []).append((n, col))
    key_exprs = [e.alias(k) for e, k in zip(_key_exprs(plan, metric, frame), keys, strict=True)]
    parts = []
    for filter_, cols in by_filter.items():
        matches = [_text(frame, field_of(metric, dim)) == value for dim, value in filter_]
        selected = frame.filter(*matches) if matches else frame
        part = selected.select(
            pl.int_range(pl.len()).alias("_row"),  # one row per record, even if all else is null
            *key_exprs,
            *(_value(frame, metric, col).alias(f"v{n}") for n, col in cols),
        ).drop("_row")
        # Joins on categorical keys are faster than on text (cast back after the joins).
        part = part.with_columns(pl.col(k).cast(pl.Categorical) for k in keys)
        parts.append((part, cols[0][1]))
    return parts


def _key_exprs(plan: ExportPlan, metric: MetricPlan, frame: pl.DataFrame) -> list[pl.Expr]:
    exprs = []
    for dim in plan.key_dimensions:
        if dim == "index":
            # YYYY-MM-DD or YYYY-MM-DDTHH:MM:SS, no zone change
            width = 10 if plan.date_only else 19
            index = _text(frame, "index")
            categorical = frame.schema.get("index") == pl.Categorical
            exprs.append(index.cat.slice(0, width) if categorical else index.str.slice(0, width))
        else:
            exprs.append(_text(frame, field_of(metric, dim)))
    return exprs


def _text(frame: pl.DataFrame, name: str) -> pl.Expr:
    """A record field as text for keys and filters: missing or empty → null."""
    if name not in frame.columns:
        return pl.lit(None, dtype=pl.String)
    dtype = frame.schema[name]
    text = _json(dtype, name)
    if text is None:
        text = pl.col(name) if dtype == pl.Categorical else pl.col(name).cast(pl.String)
    return pl.when(text == "").then(None).otherwise(text)


def _value(frame: pl.DataFrame, metric: MetricPlan, col: ColumnSpec) -> pl.Expr:
    """``record[fetchValue]``, then ``field``'s dotted path into it; missing → null."""
    name = value_field(metric, col)
    if name not in frame.columns:
        return pl.lit(None)
    expr = pl.col(name)
    dtype: Any = frame.schema[name]
    for step in col.path:
        fields = {f.name: f.dtype for f in dtype.fields} if isinstance(dtype, pl.Struct) else {}
        if step not in fields:
            return pl.lit(None)
        expr, dtype = expr.struct.field(step), fields[step]
    return expr


def _has_twice(table: pl.DataFrame, keys: list[str]) -> bool:
    """Whether some key may be there twice (hashes: a collision says yes)."""
    return table.height > 1 and any_twice(key_hashes(table, keys))


def key_hashes(table: pl.DataFrame, keys: list[str]) -> pl.Series:
    """A hash of each row's key. Categorical keys are hashed by their codes (text would
    be materialised to hash); a table's slices give the slices of its hashes."""
    return table.select(pl.struct(pl.col(k).to_physical() for k in keys).hash()).to_series()


def any_twice(hashes: pl.Series) -> bool:
    """Whether a hash is there twice: sorted, then each against the next (two 8-byte
    columns, where ``is_duplicated`` builds a hash table)."""
    if hashes.len() < 2:
        return False
    ordered = hashes.sort()
    return bool((ordered.slice(1) == ordered.slice(0, ordered.len() - 1)).any())


def _sorted(table: pl.DataFrame, order: list[str]) -> pl.DataFrame:
    """``table`` sorted on ``order``, ascending, nulls last.

    When every sort column is categorical (sorting on the row key, the usual case),
    each is replaced by the rank of its text (:func:`text_ranks`, nulls after every
    text) and the ranks are packed into one integer, so one column is sorted instead of
    several (the row key is in the order, so no two rows tie): the big export's sort
    0.54 s -> 0.3 s. A key has few distinct texts."""
    if not order or any(table.schema[c] != pl.Categorical for c in order):
        return table.sort(order, nulls_last=True)
    packed = pl.repeat(0, pl.len(), dtype=pl.UInt64)
    room = 1
    for name in order:
        texts = table.get_column(name).unique().drop_nulls().cast(pl.String).sort()
        size = texts.len() + 1  # the ranks, then null
        room *= size
        if room >= 2**63:
            return table.sort(order, nulls_last=True)
        packed = packed * size + text_ranks(name, texts).cast(pl.UInt64).fill_null(size - 1)
    return table[table.select(packed).to_series().arg_sort()]


def text_ranks(name: str, texts: pl.Series) -> pl.Expr:
    """Categorical column ``name`` as the rank of its text among ``texts`` (its distinct
    texts, sorted: byte order, as polars sorts text); null stays null."""
    codes = texts.cast(pl.Categorical).to_physical()
    ranks = pl.int_range(0, texts.len(), dtype=pl.UInt32, eager=True)
    return pl.col(name).to_physical().replace_strict(codes, ranks, return_dtype=pl.UInt32)


def _same_keys(a: pl.DataFrame, b: pl.DataFrame, keys: list[str]) -> bool:
    return a.height == b.height and a.select(keys).equals(b.select(keys))


def _check_unique(part: pl.DataFrame, keys: list[str], metric: MetricPlan, col: ColumnSpec) -> None:
    twice = part.filter(pl.struct(keys).is_duplicated())
    if twice.height:
        row = "/".join("" if v is None else str(v) for v in twice.select(keys).row(0))
        raise MetricFailed(
            metric.metric_id, f"two records for one cell (row {row}, column {col.heading!r})"
        )


def _json(dtype: Any, name: str) -> pl.Expr | None:
    """A nested column (object or array values) as JSON text; None for a flat one."""
    if isinstance(dtype, pl.Struct):
        return pl.col(name).struct.json_encode()
    if isinstance(dtype, pl.List | pl.Array):
        # {"name":[…]} → […]
        return pl.struct(pl.col(name)).struct.json_encode().str.slice(len(name) + 4).str.head(-1)
    return None


def _as_text(dtype: Any, name: str) -> pl.Expr:
    """Nested values become JSON text; empty text becomes an empty cell."""
    nested = _json(dtype, name)
    if nested is not None:
        return nested.alias(name)
    col = pl.col(name)
    if dtype == pl.String:
        return pl.when(col == "").then(None).otherwise(col).alias(name)
    return col
