"""What a running worker counts, for Prometheus (SPEC §10), through ``prometheus_client``.

One registry per process (``REGISTRY``), served by health.py at ``/metrics``. Names
follow Prometheus' conventions: the ``csvgen_`` prefix, ``_total`` for counters,
``_seconds`` and ``_bytes`` units. Every label takes a bounded set of values: a route
label is a registered route or ``other``, never text a request sent.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

__all__ = [
    "BUS_RECONNECTS",
    "BYTES_WRITTEN",
    "EXPORTS",
    "EXPORTS_QUEUED",
    "EXPORTS_RUNNING",
    "EXPORT_SECONDS",
    "METRIC_REQUESTS",
    "OUT_OF_CORE",
    "REGISTRY",
    "ROWS_WRITTEN",
    "STAGE_SECONDS",
    "STORE_REQUESTS",
    "STORE_SECONDS",
    "SWEPT_DIRS",
    "UPSTREAM_BYTES",
]

REGISTRY = CollectorRegistry(auto_describe=True)

_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900, 1800)

EXPORTS = Counter(
    "csvgen_exports_total",
    "Requests answered, by route and outcome (ok, or the error code).",
    ["route", "outcome"],
    registry=REGISTRY,
)
EXPORT_SECONDS = Histogram(
    "csvgen_export_duration_seconds",
    "Time from admission to reply of exports that ran, by route and outcome.",
    ["route", "outcome"],
    buckets=_BUCKETS,
    registry=REGISTRY,
)
STAGE_SECONDS = Histogram(
    "csvgen_export_stage_duration_seconds",
    "Time spent in each stage of a successful export (fetch, combine, write, upload).",
    ["stage"],
    buckets=_BUCKETS,
    registry=REGISTRY,
)
ROWS_WRITTEN = Counter(
    "csvgen_rows_written_total", "CSV data rows written by successful exports.", registry=REGISTRY
)
BYTES_WRITTEN = Counter(
    "csvgen_written_bytes_total",
    "Bytes of stored files written by successful exports.",
    registry=REGISTRY,
)
EXPORTS_RUNNING = Gauge("csvgen_exports_running", "Exports holding a slot now.", registry=REGISTRY)
EXPORTS_QUEUED = Gauge(
    "csvgen_exports_queued", "Admitted exports waiting for a slot now.", registry=REGISTRY
)
BUS_RECONNECTS = Counter(
    "csvgen_bus_reconnects_total",
    "Connections to the bus after the first one.",
    registry=REGISTRY,
)
METRIC_REQUESTS = Counter(
    "csvgen_metric_requests_total",
    "Requests to the Metrics API, by outcome (ok, error, lost, too_large).",
    ["outcome"],
    registry=REGISTRY,
)
UPSTREAM_BYTES = Counter(
    "csvgen_upstream_received_bytes_total",
    "Bytes of answer frames received from the Metrics API.",
    registry=REGISTRY,
)
STORE_REQUESTS = Counter(
    "csvgen_store_requests_total",
    "Requests to the object store, by operation (PutObject, GetObject, UploadPart…).",
    ["operation"],
    registry=REGISTRY,
)
STORE_SECONDS = Histogram(
    "csvgen_store_request_duration_seconds",
    "Time spent waiting on the object store, by operation.",
    ["operation"],
    buckets=_BUCKETS,
    registry=REGISTRY,
)
OUT_OF_CORE = Counter(
    "csvgen_exports_out_of_core_total",
    "Exports joined and sorted out of core (past CSVGEN_MEMORY_BUDGET_MB), by whether "
    "their records spilled to disk as they were read.",
    ["spilled"],
    registry=REGISTRY,
)
SWEPT_DIRS = Counter(
    "csvgen_spill_dirs_swept_total",
    "Work directories of killed workers removed from the spill directory at start.",
    registry=REGISTRY,
)
