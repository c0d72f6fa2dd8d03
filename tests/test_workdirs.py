"""Work directories in the spill directory: held while their process lives, swept by the
next worker once it is gone (killed outright, it removed nothing)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from csvgen.csvexport.workdirs import WorkDir, sweep

HOLDER = """
import sys
from csvgen.csvexport.workdirs import WorkDir
work = WorkDir(sys.argv[2], sys.argv[1])
with open(work.path + "/records-1.arrow", "wb") as f:
    f.write(bytes(4096))
print(work.path, flush=True)
sys.stdin.read()
"""


def killed_holder(parent: Path, prefix: str = "csvgen-records-") -> Path:
    """The work directory of a process killed with SIGKILL while it held it."""
    with subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(parent), prefix],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    ) as proc:
        assert proc.stdout is not None
        path = Path(proc.stdout.readline().strip())
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL
    return path


def test_the_directories_of_killed_processes_are_swept_and_live_ones_kept(
    tmp_path: Path,
) -> None:
    dead = [killed_holder(tmp_path), killed_holder(tmp_path, "csvgen-duckdb-")]
    assert all((d / "records-1.arrow").is_file() for d in dead)
    live = WorkDir("csvgen-records-", str(tmp_path))
    others = [tmp_path / "csvgen-records-file", tmp_path / "keep", tmp_path / "csvgen-new-x"]
    others[0].write_bytes(b"not a directory")
    others[1].mkdir()
    others[2].mkdir()  # being made: no lock yet, and young
    assert sweep(str(tmp_path)) == 2
    assert sorted(os.listdir(tmp_path)) == sorted([Path(live.path).name, *(o.name for o in others)])
    assert sweep(str(tmp_path)) == 0  # the live one stays while held
    live.remove()
    live.remove()
    assert sorted(os.listdir(tmp_path)) == sorted(o.name for o in others)


def test_a_sweep_of_a_missing_directory_removes_nothing(tmp_path: Path) -> None:
    assert sweep(str(tmp_path / "gone")) == 0


def test_a_lock_that_is_not_a_file_is_left_and_never_waited_on(tmp_path: Path) -> None:
    """The spill directory may be a shared /tmp: a directory named like ours whose .lock
    is a FIFO (opening it to read would wait for a writer forever) or a link is not
    ours; the sweep leaves it and goes on."""
    fifo, link = tmp_path / "csvgen-records-fifo", tmp_path / "csvgen-duckdb-link"
    fifo.mkdir()
    os.mkfifo(fifo / ".lock")
    link.mkdir()
    (link / ".lock").symlink_to(tmp_path / "elsewhere")
    (tmp_path / "elsewhere").write_bytes(b"")
    removed: list[int] = []
    sweeping = threading.Thread(target=lambda: removed.append(sweep(str(tmp_path))), daemon=True)
    sweeping.start()
    sweeping.join(timeout=30)
    assert not sweeping.is_alive()
    assert removed == [0]
    assert fifo.exists() and link.exists()


def test_a_new_directory_a_killed_worker_left_is_swept_by_its_lock_or_its_age(
    tmp_path: Path,
) -> None:
    """Killed between making ``csvgen-new-…`` and renaming it: with its lock file (free
    now) it goes at once; without one it goes once older than NEW_GRACE_S, never before
    (a live worker may be about to lock it)."""
    locked, young, old = (tmp_path / f"csvgen-new-{n}" for n in ("locked", "young", "old"))
    for d in (locked, young, old):
        d.mkdir()
    (locked / ".lock").write_bytes(b"")
    hour_ago = time.time() - 3600
    os.utime(old, (hour_ago, hour_ago))
    assert sweep(str(tmp_path)) == 2
    assert os.listdir(tmp_path) == [young.name]
