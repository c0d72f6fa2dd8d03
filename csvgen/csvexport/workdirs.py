"""An export's work directories in the spill directory, and the sweep of those that a
killed worker left behind.

An export's spilled records (answers.py) and DuckDB's work (outofcore.py) live in
directories made for it in ``CSVGEN_SPILL_DIR``, removed when the export ends, whatever
the outcome. A worker killed outright (SIGKILL, the kernel's OOM killer) removes
nothing, so each directory carries a ``.lock`` file on which its process holds an
exclusive ``flock`` while it lives: the kernel releases it when the process dies. A
worker starting removes the directories whose lock it can take; those of the live
workers beside it (replicas sharing the disk) stay.

A directory gets its name only once its lock is held (it is made under a ``csvgen-new-``
name, locked, then renamed), so a free lock on a named directory always means that its
process is gone. A ``csvgen-new-`` directory is swept by the same lock test; one without
a lock file yet (its worker killed between making it and locking it, or a live worker
in the microseconds between) is removed only once it is ``NEW_GRACE_S`` old.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import stat
import tempfile
import time

__all__ = ["PREFIXES", "WorkDir", "sweep"]

#: The names of work directories (what ``sweep`` looks at), by what they hold.
PREFIXES = ("csvgen-records-", "csvgen-duckdb-")
_NEW = "csvgen-new-"
_LOCK = ".lock"
#: A ``csvgen-new-`` directory without a lock file is left alone this long (seconds).
NEW_GRACE_S = 60.0


class WorkDir:
    """A directory made in ``parent`` (None: the system temp directory), named
    ``prefix`` + a random part, held until :meth:`remove`.

    Raises:
        OSError: it could not be made (the spill directory is full or gone).
    """

    def __init__(self, prefix: str, parent: str | None) -> None:
        new = tempfile.mkdtemp(prefix=_NEW, dir=parent)
        lock = -1
        try:
            lock = os.open(os.path.join(new, _LOCK), os.O_CREAT | os.O_WRONLY, 0o600)
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            path = os.path.join(os.path.dirname(new), prefix + new.rsplit(_NEW, 1)[1])
            os.rename(new, path)
        except OSError:
            if lock >= 0:
                os.close(lock)
            shutil.rmtree(new, ignore_errors=True)
            raise
        self.path, self._lock = path, lock

    def remove(self) -> None:
        """Remove the directory and all in it, then let its lock go (again: nothing)."""
        if self._lock >= 0:
            shutil.rmtree(self.path, ignore_errors=True)
            os.close(self._lock)
            self._lock = -1


def sweep(parent: str | None) -> int:
    """Remove the work directories in ``parent`` whose process is gone; how many."""
    removed = 0
    try:
        entries = list(os.scandir(parent or tempfile.gettempdir()))
    except OSError:
        return 0
    for entry in entries:
        if not entry.name.startswith((*PREFIXES, _NEW)) or not entry.is_dir(follow_symlinks=False):
            continue
        try:  # without blocking (a FIFO put there) or following a link
            lock = os.open(
                os.path.join(entry.path, _LOCK), os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW
            )
        except FileNotFoundError:  # removed meanwhile, or a new one never locked
            removed += _sweep_unlocked(entry)
            continue
        except OSError:  # not ours
            continue
        try:
            if not stat.S_ISREG(os.fstat(lock).st_mode):  # not ours
                continue
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # held: a live process's
            continue
        else:
            shutil.rmtree(entry.path, ignore_errors=True)
            removed += 1
        finally:
            os.close(lock)
    return removed


def _sweep_unlocked(entry: os.DirEntry[str]) -> int:
    """Remove a ``csvgen-new-`` directory that never got its lock file, once it is old."""
    try:
        age = time.time() - entry.stat(follow_symlinks=False).st_mtime
    except OSError:
        return 0
    if not entry.name.startswith(_NEW) or age < NEW_GRACE_S:
        return 0
    shutil.rmtree(entry.path, ignore_errors=True)
    return 1
