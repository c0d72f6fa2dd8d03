"""One export's progress: what each stage has done, and the time each took (no I/O).

The stages report into one :class:`Progress` per export: fetch (metric requests total
and done, bytes and records received), combine (rows total, once joined), write (rows
written), upload (bytes uploaded). The stage log line and the stage histograms are read
from it. Its updates are plain integer additions, a few per answer part or batch of
rows, made on the event loop or in a stage's one thread (never both for one field).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

__all__ = ["STAGES", "Progress"]

logger = logging.getLogger(__name__)

#: The stages of an export, in order (SPEC §11 names them).
STAGES = ("fetch", "combine", "write", "upload")


@dataclass(slots=True)
class Progress:
    rid: str = ""  # the request id, for the DEBUG line of each stage
    metric_requests: int = 0
    metric_requests_done: int = 0
    bytes_received: int = 0
    records_received: int = 0
    rows_total: int | None = None  # known once the rows are joined (in memory)
    rows_written: int = 0
    bytes_uploaded: int = 0
    stage: str = "queued"
    laps: list[tuple[str, float]] = field(default_factory=list)
    _since: float = field(default_factory=time.perf_counter)

    def enter(self, stage: str) -> None:
        """The export goes on to ``stage``: the one it leaves gets its lap (once running)."""
        now = time.perf_counter()
        if self.stage in STAGES:
            self.laps.append((self.stage, now - self._since))
        self.stage, self._since = stage, now
        logger.debug("export id=%s: stage %s", self.rid, stage)

    def counts(self) -> dict[str, int]:
        """The counts under their wire names (SPEC §11), ``rowsTotal`` once known."""
        counts = {
            "metricRequests": self.metric_requests,
            "metricRequestsDone": self.metric_requests_done,
            "bytesReceived": self.bytes_received,
            "recordsReceived": self.records_received,
            "rowsWritten": self.rows_written,
            "bytesUploaded": self.bytes_uploaded,
        }
        if self.rows_total is not None:
            counts["rowsTotal"] = self.rows_total
        return counts

    def __str__(self) -> str:
        return " ".join(f"{name}={seconds:.3f}s" for name, seconds in self.laps)

    def fields(self, rid: str) -> dict[str, Any]:
        """For a JSON log line: the id and each stage's seconds."""
        return {"id": rid, "stages": {name: round(s, 6) for name, s in self.laps}}
