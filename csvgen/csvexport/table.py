"""The combine stage: the fetched records → the export's rows, sorted, in memory or out
of core.

An export whose records fit ``CSVGEN_MEMORY_BUDGET_MB`` is joined and sorted by polars
in a worker thread (combine.py), and its row count is known at once; a larger one, or
one whose records spilled, is joined and sorted by DuckDB as it is written
(outofcore.py), its batches read by the write stage.
"""

from __future__ import annotations

import asyncio
import ctypes
import functools
import logging
from collections.abc import Generator
from typing import Any

import polars as pl

from .. import telemetry
from ..config import Settings
from . import outofcore
from .combine import combine, in_memory_cost
from .fetch import Fetched
from .files import Rows
from .plan import ExportPlan
from .progress import Progress
from .stop import Stop

__all__ = ["rows_of"]

logger = logging.getLogger(__name__)


async def rows_of(
    rid: str, plan: ExportPlan, fetched: Fetched, settings: Settings, progress: Progress
) -> Rows:
    """The export's rows; ``fetched.records`` is emptied (each answer dropped once read)."""
    answers = fetched.records
    held = [f for f in answers if isinstance(f, pl.DataFrame)]
    cost = in_memory_cost(held) if len(held) == len(answers) else None  # None: spilled
    del held  # combine drops each answer from ``answers`` once read
    if cost is None or cost > TRIM_AFTER_BYTES:  # a small export skips the 2-3 ms
        await asyncio.to_thread(_give_back_memory)
    budget = settings.memory_budget_mb
    if cost is not None and cost < budget * 1024 * 1024:
        progress.enter("combine")
        table = await asyncio.to_thread(
            functools.partial(combine, max_rows=settings.max_rows, consume=True),
            plan,
            answers,
            fetched.names,
        )
        progress.rows_total = table.height
        return functools.partial(_single, table)
    logger.info(  # out of core: combined and sorted while written (outofcore.py)
        "out of core id=%s: the answers' records cost more than %d MB%s",
        rid,
        budget,
        "" if cost is not None else "; spilled as read",
    )
    telemetry.OUT_OF_CORE.labels("false" if cost is not None else "true").inc()
    return functools.partial(
        outofcore.batches,
        plan,
        answers,
        fetched.names,
        memory_mb=budget,
        spill_dir=settings.spill_dir,
        max_rows=settings.max_rows,
    )


#: Exports whose answers cost more than this in memory hand freed heap back after the fetch.
TRIM_AFTER_BYTES = 64 * 1024 * 1024


def _give_back_memory() -> None:
    """Hand the heap pages of freed answer parts back to the system (glibc keeps them:
    the huge benchmark export held 0.5 GB of them into its join; with this its peak
    went from 1.58-1.61 GB to 1.42-1.45 GB). Elsewhere than glibc, nothing to do."""
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


def _libc() -> Any:
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return None
    return libc if hasattr(libc, "malloc_trim") else None


_LIBC = _libc()


def _single(table: pl.DataFrame, *, stop: Stop | None = None) -> Generator[pl.DataFrame]:
    yield table
