"""Telling a stage's thread to stop (no I/O): a flag it checks between batches, and
hooks that interrupt a long call in progress (DuckDB's ``interrupt()``), so that a
cancelled export stops within about a second even in the middle of a join or a sort."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator

__all__ = ["Stop", "Stopped"]


class Stopped(Exception):
    """Raised in a stage's thread that stopped because its :class:`Stop` was set."""


class Stop:
    def __init__(self) -> None:
        self._set = threading.Event()
        self._hooks: list[Callable[[], object]] = []
        self._lock = threading.Lock()

    def set(self) -> None:
        """Stop: the flag, then every hook registered now."""
        with self._lock:
            self._set.set()
            hooks = list(self._hooks)
        for hook in hooks:
            hook()

    def is_set(self) -> bool:
        return self._set.is_set()

    @contextlib.contextmanager
    def calling(self, hook: Callable[[], object]) -> Iterator[None]:
        """``hook()`` is called if the stop comes while the block runs (or came before)."""
        with self._lock:
            self._hooks.append(hook)
            already = self._set.is_set()
        if already:
            hook()
        try:
            yield
        finally:
            with self._lock:
                self._hooks.remove(hook)
