"""An export too big for its memory budget: joined, sorted and written out of core.

:func:`combine` (combine.py) joins and sorts in memory, which costs several times
the size of the answers' records. Past ``CSVGEN_MEMORY_BUDGET_MB`` the same table
is built by DuckDB instead, whose join and sort spill to disk within a memory
limit (bench/README.md has the comparison with polars' streaming engine, which
held the whole join in memory). The pieces are combine.py's, so the rows are the
same and so are the bytes:

- the parts (keys and values of each metric request) are made, checked for a key
  twice and finished (entity names, values as written) by polars, as in memory;
- the keys go to DuckDB as the ranks of their texts (byte order), small integers;
- DuckDB joins the parts one after another on the row key (full outer joins of parts
  whose keys are unique, nulls equal; many parts are stacked and grouped), then sorts
  with polars' order: ascending, nulls last, text by bytes, ``-0.0`` equal to ``0.0``,
  NaN after every number;
- the sorted rows come back in batches, which the CSV writer writes one by one.

DuckDB works in a directory made for the export in the spill directory, removed
when the export ends, whatever the outcome.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Generator, Iterator, Mapping
from typing import Any

import duckdb
import polars as pl

from ..errors import StorageFailed, TooLarge
from .answers import Records
from .combine import (
    any_twice,
    check_parts,
    each_part,
    finish,
    key_hashes,
    key_names,
    output,
    side_by_side,
    sort_order,
    sources_of,
    split,
    text_ranks,
)
from .plan import ColumnSpec, ExportPlan, MetricPlan
from .stop import Stop, Stopped
from .workdirs import WorkDir

__all__ = ["BATCH_ROWS", "batches"]

#: DuckDB's memory limit is the budget, but never under this (it needs some to work).
MIN_MEMORY_MB = 64
SPILL_FAILED = "the export could not spill to disk: the spill directory is full or gone"
#: Rows written at a time.
BATCH_ROWS = 256 * 1024
#: Records of a spilled answer read at a time (about 20 MB of them, 0.2 GB at work).
SLICE_ROWS = 1024 * 1024


def batches(
    plan: ExportPlan,
    frames: list[Records],
    names: Mapping[str, str] | None,
    *,
    memory_mb: int,
    spill_dir: str | None,
    max_rows: int | None = None,
    slice_rows: int = SLICE_ROWS,
    stop: Stop | None = None,
) -> Generator[pl.DataFrame]:
    """The rows :func:`~csvgen.csvexport.combine.combine` would return, in batches.

    Each frame of ``frames`` is dropped from it once its parts are made (memory).
    Yields at least one batch (empty when there are no rows).

    Raises:
        MetricFailed: two records claim one cell.
        TooLarge: more than ``max_rows`` rows (found while the rows come).
        StorageFailed: the spill directory is full or gone.
        Stopped: ``stop`` was set (DuckDB's work in progress is interrupted).
    """
    keys = key_names(plan)
    sources = sources_of(plan, keys)
    workdir = _work_dir(spill_dir)
    work = workdir.path
    try:
        tables: list[Any]  # each part: an Arrow table, or its Parquet files
        if any(isinstance(f, pl.LazyFrame) for f in frames):
            tables, texts = _parts_on_disk(plan, frames, keys, sources, names, work, slice_rows)
            held = 0
        else:
            parts, owners = split(plan, frames, keys, consume=True)
            check_parts(parts, owners, keys)
            groups = [finish(plan, g, sources, keys, names) for g in side_by_side(parts, keys)]
            del parts, owners
            groups, texts = _ranked(groups, keys)
            # DuckDB gets what the parts, held in memory while it reads them, leave of
            # the budget.
            held = sum(int(g.estimated_size()) for g in groups) // 2**20
            tables = [g.to_arrow() for g in groups]
            del groups
        settings: dict[str, str | bool | int | float | list[str]] = {
            "memory_limit": f"{max(memory_mb - held, MIN_MEMORY_MB)}MB",
            "temp_directory": work,
            "threads": 2,
        }
        interrupt = stop.calling if stop is not None else _nothing
        with duckdb.connect(config=settings) as con, interrupt(con.interrupt):
            if stop is not None and stop.is_set():
                raise Stopped  # before the query: interrupt() stops only one running
            columns = []
            for n, table in enumerate(tables):
                if isinstance(table, list):
                    con.read_parquet(table).create_view(f"g{n}")
                else:
                    con.register(f"g{n}", table)
                columns.append([c for c in con.table(f"g{n}").columns if c not in keys])
            query = _query(columns, keys, sort_order(plan, sources, keys))
            del tables
            reader = con.sql(query).to_arrow_reader(BATCH_ROWS)
            rows = 0
            for batch in reader:
                rows += batch.num_rows
                if max_rows is not None and rows > max_rows:
                    raise TooLarge(f"the export has over {max_rows} rows; the limit is {max_rows}")
                yield _texts(_frame(batch), texts).select(output(sources))
            if rows == 0:
                empty = _frame(reader.schema.empty_table())
                yield _texts(empty, texts).select(output(sources))
    except duckdb.InterruptException:
        raise Stopped from None
    except duckdb.OutOfMemoryException:
        if not os.path.isdir(work):  # it could not spill: its directory is gone
            raise StorageFailed(SPILL_FAILED) from None
        raise TooLarge(
            f"the export does not fit in its memory budget ({memory_mb} MB) even out of core"
        ) from None
    except (duckdb.IOException, OSError):  # the spill directory is full or gone
        raise StorageFailed(SPILL_FAILED) from None
    finally:
        workdir.remove()


@contextlib.contextmanager
def _nothing(hook: Callable[[], object]) -> Iterator[None]:
    yield


def _work_dir(spill_dir: str | None) -> WorkDir:
    try:
        return WorkDir("csvgen-duckdb-", spill_dir)
    except OSError:
        raise StorageFailed(SPILL_FAILED) from None


def _parts_on_disk(
    plan: ExportPlan,
    frames: list[Records],
    keys: list[str],
    sources: list[str],
    names: Mapping[str, str] | None,
    work: str,
    slice_rows: int,
) -> tuple[list[Any], dict[str, pl.Series]]:
    """The parts of an export whose records were spilled (answers.RecordSpill), with
    memory bounded by ``slice_rows`` records, not by the answers: each answer is read a
    slice at a time, and each slice's parts are made, finished and written to ``work``.
    A part's key hashes are checked for a key twice once its answer is read (8 bytes a
    record); its keys, read back, name the cell. The pieces are then ranked as
    :func:`_ranked` ranks them, one at a time. Returns each part's ranked pieces, as
    Parquet files (DuckDB reads them as it goes, in less memory than Arrow files: 0.16
    against 0.52 GB on the huge export), and the keys' texts by rank."""
    pieces: dict[int, list[str]] = {}
    hashes: dict[int, list[pl.Series]] = {}
    owners: dict[int, tuple[MetricPlan, ColumnSpec]] = {}
    seen: dict[str, list[pl.Series]] = {k: [] for k in keys}
    done, metric = 0, None  # the parts checked so far: those of the metric requests read
    for n, part, owner in each_part(plan, frames, keys, consume=True, rows=slice_rows):
        if owner[0] is not metric:  # the previous metric request's parts are all there
            _check_pieces(range(done, n), pieces, hashes, owners, keys)
            done, metric = n, owner[0]
        owners[n] = owner
        hashes.setdefault(n, []).append(key_hashes(part, keys))
        part = finish(plan, part, sources, keys, names)
        for k in keys:
            seen[k].append(part.get_column(k).unique())
        path = os.path.join(work, f"part-{n}-{len(pieces.setdefault(n, []))}.arrow")
        part.write_ipc(path, compression="lz4")
        pieces[n].append(path)
        del part
    _check_pieces(range(done, len(owners)), pieces, hashes, owners, keys)
    texts = {k: _sorted_texts(seen[k]) for k in keys}
    tables: list[Any] = []
    for n in range(len(owners)):
        ranked = []
        for i, path in enumerate(pieces[n]):
            ranked.append(os.path.join(work, f"ranked-{n}-{i}.parquet"))
            piece = pl.scan_ipc(path).with_columns(text_ranks(k, texts[k]) for k in keys)
            try:
                piece.sink_parquet(ranked[-1])
            except pl.exceptions.ComputeError as exc:  # how polars says a write failed
                if "IO error" in str(exc):
                    raise OSError(str(exc)) from None
                raise
            os.remove(path)
        tables.append(ranked)
    return tables, {k: t.cast(pl.Categorical) for k, t in texts.items()}


def _check_pieces(
    numbers: range,
    pieces: dict[int, list[str]],
    hashes: dict[int, list[pl.Series]],
    owners: dict[int, tuple[MetricPlan, ColumnSpec]],
    keys: list[str],
) -> None:
    """Raise MetricFailed if a part among ``numbers`` has a key twice."""
    for n in numbers:
        if any_twice(pl.concat(hashes.pop(n))):
            check_parts([pl.scan_ipc(pieces[n]).select(keys).collect()], [owners[n]], keys)


#: Up to this many parts DuckDB joins them; past it, it stacks and groups them.
JOINED_PARTS = 8


def _query(columns: list[list[str]], keys: list[str], order: list[str]) -> str:
    """SQL for the sorted rows of the registered parts ``g0…``, whose columns other than
    the key are ``columns``.

    Parts whose keys are unique, joined by full outer joins on the key with nulls equal
    (``IS NOT DISTINCT FROM``), or stacked and grouped by the key, give the rows of the
    in-memory join; a column in several parts (the entity's name, the same in each)
    is taken from whichever has the row. Joins are twice as fast on the huge export
    (1.2 against 2.4 s), but each needs its own memory: 500 parts joined did not fit
    in 256 MB, and joined one after another they passed DuckDB's expression depth limit.
    So many parts are grouped (the query is then linear in the parts).
    """
    q = _quoted
    if len(columns) <= JOINED_PARTS:
        source, have = _joined(columns, keys)
    else:
        have = list(dict.fromkeys(c for part in columns for c in part))
        stacked = " UNION ALL BY NAME ".join(f"SELECT * FROM g{n}" for n in range(len(columns)))
        picked = [*map(q, keys), *(f"any_value({q(v)}) AS {q(v)}" for v in have)]
        grouped = ", ".join(map(q, keys))
        source = f"(SELECT {', '.join(picked)} FROM ({stacked}) GROUP BY {grouped})"
    # Like polars' sort on several columns (a float column always comes with the key):
    # -0.0 and 0.0 are equal, NaN after every number, nulls last.
    sort = [f"{q(c)} ASC NULLS LAST" for c in order]
    selected = [*map(q, keys), *map(q, have)]
    return f"SELECT {', '.join(selected)} FROM {source} ORDER BY {', '.join(sort)}"


def _joined(columns: list[list[str]], keys: list[str]) -> tuple[str, list[str]]:
    """The full outer join of the parts, one after another, as SQL; its columns other
    than the key."""
    q = _quoted
    source, have = "g0", list(columns[0])
    on = " AND ".join(f"a.{q(k)} IS NOT DISTINCT FROM b.{q(k)}" for k in keys)
    for n, more in enumerate(columns[1:], start=1):
        shared = set(more)
        picked = [f"COALESCE(a.{q(k)}, b.{q(k)}) AS {q(k)}" for k in keys]
        picked += [f"COALESCE(a.{q(c)}, b.{q(c)}) AS {q(c)}" if c in shared else f"a.{q(c)}"
                   for c in have]  # fmt: skip
        known = set(have)
        picked += [f"b.{q(c)}" for c in more if c not in known]
        have += [c for c in more if c not in known]
        source = f"(SELECT {', '.join(picked)} FROM {source} AS a FULL JOIN g{n} AS b ON {on})"
    return source, have


def _ranked(
    groups: list[pl.DataFrame], keys: list[str]
) -> tuple[list[pl.DataFrame], dict[str, pl.Series]]:
    """Each key as the rank of its text in byte order (UInt32), and the texts by rank.

    DuckDB then groups and sorts small integers, in the order polars sorts the text,
    instead of converting millions of categorical values to text: the big export's
    keys are a few thousand distinct texts."""
    texts: dict[str, pl.Series] = {}
    ranked = groups
    for k in keys:
        text = _sorted_texts([g.get_column(k).unique() for g in groups])
        texts[k] = text.cast(pl.Categorical)
        ranked = [g.with_columns(text_ranks(k, text)) for g in ranked]
    return ranked, texts


def _sorted_texts(uniques: list[pl.Series]) -> pl.Series:
    """The distinct texts of a key's categorical columns, sorted (nulls apart)."""
    return pl.concat(uniques).cast(pl.String).unique().drop_nulls().sort()


def _texts(batch: pl.DataFrame, texts: dict[str, pl.Series]) -> pl.DataFrame:
    """The keys' texts back in place of their ranks (``texts``: categorical, by rank),
    as categorical text: the writer writes it without making a column of text."""
    return batch.with_columns(
        texts[k].gather(batch.get_column(k)).alias(k)
        if texts[k].len()
        else pl.col(k).cast(pl.String).cast(pl.Categorical)  # no text at all: every key is empty
        for k in texts
    )


def _quoted(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _frame(batch: Any) -> pl.DataFrame:
    frame = pl.from_arrow(batch)
    assert isinstance(frame, pl.DataFrame)
    return frame
