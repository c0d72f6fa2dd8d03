"""The benchmark's requests, and their metric answers generated once from the stand-in's data set.

Answers are written as JSON files under ``bench/data/<case>/`` (kept out of git),
keyed by the fingerprint of the upstream request csvgen sends, so the replay
server can answer it without computing anything.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import orjson

from csvgen import frames
from csvgen.csvexport.plan import ExportPlan, MetricPlan, make_plan
from csvgen.standin.api import MetricsAPI
from csvgen.standin.data import AGES, DataSet

DATA_DIR = Path(__file__).parent / "data"
YEAR = ("2024-01-01T00:00:00.000Z", "2024-12-30T23:59:59.000Z")  # 365 days


def _metric(mid: str, entities: list[str], **extra: Any) -> dict[str, Any]:
    start, end = YEAR
    return {"metricId": mid, "name": mid, "start": start, "end": end, "entities": entities,
            "entityType": "location", "aggregationPeriod": "day", **extra}  # fmt: skip


def big(data: DataSet) -> dict[str, Any]:
    """1,000 locations × 365 days × (5 age bands + the entity row): about 2.2M rows, 8 columns."""
    ids = [loc.id for loc in data.locations[:1000]]
    ages = list(AGES[1:6])
    return {
        "csvFormat": {
            "columns": [
                {"heading": "Date"}, {"heading": "Location"}, {"heading": "Age"},
                {"heading": "Entries", "metricId": "entries", "fetchValue": "entries"},
                {"heading": "Passers-by", "metricId": "passers", "fetchValue": "passers_by"},
                {"heading": "Capture rate", "metricId": "capture", "fetchValue": "capture_rate"},
                {"heading": "Sales", "metricId": "sales", "fetchValue": "sales_volume"},
                {"heading": "Transactions", "metricId": "tx",
                 "fetchValue": "sales_transaction_count"},
            ],
            "sortBy": [0, 1, 2],
            "rowFilters": ["entity", "age"],
        },
        "metricRequests": [
            _metric("entries", ids, ages=ages),
            _metric("passers", ids, ages=ages),
            _metric("capture", ids, ages=ages),
            _metric("sales", ids),
            _metric("tx", ids),
        ],
    }  # fmt: skip


#: The huge case: the big case's 1,000 locations four times over (ids differing in their
#: first character), 8,760,000 rows.
HUGE_TILES = "6789"


def tiled(entity: str, tile: str) -> str:
    return tile + entity[1:]


def huge(data: DataSet) -> dict[str, Any]:
    """The big export for 4,000 locations: 4,000 × 365 days × 6 rows, 8.76M rows."""
    body = big(data)
    for metric in body["metricRequests"]:
        metric["entities"] = [tiled(e, t) for t in HUGE_TILES for e in metric["entities"]]
    return body


def generate_huge(data: DataSet) -> None:
    """The huge case's answers, made from the big case's in seconds: each big answer's
    records four times, the location ids changed per copy (the stand-in's values for
    the first 1,000 locations, under 4,000 ids)."""
    folder = DATA_DIR / "huge"
    by_id = {m.metric_id: m for m in make_plan(big(data)).metrics}
    for metric in _write_request(folder, 0, huge(data)).metrics:
        path = _answer_path(folder, metric)
        if path.exists():
            continue
        data_ = _answer_path(DATA_DIR / "big", by_id[metric.metric_id]).read_bytes()
        opening = b'"segments":['
        first = data_.index(opening) + len(opening)
        last = data_.rindex(b"]")
        records = data_[first:last]
        copies = [
            records.replace(b'"location":"6', b'"location":"' + t.encode()) for t in HUGE_TILES
        ]
        _write_whole(path, data_[:first] + b",".join(copies) + data_[last:])
        print(f"  huge: {metric.metric_id} {path.stat().st_size / 1e6:.0f} MB", flush=True)


#: Scaling cases: the big export for the first N of its locations (about 2,190 rows each).
SCALING = {"rows-250k": 114, "rows-500k": 228, "rows-1m": 457, "rows-2m": 913}


def ensure_scaling_data() -> None:
    """The scaling cases' answers: the big answers' records of the first N locations, in
    the same JSON shape (about 40 s the first time)."""
    data = DataSet(locations=1000)
    big_plan = make_plan(big(data))
    for case, count in SCALING.items():
        folder = DATA_DIR / case
        body = big(data)
        for metric in body["metricRequests"]:
            metric["entities"] = metric["entities"][:count]
        wanted = set(body["metricRequests"][0]["entities"])
        plan = _write_request(folder, 0, body)
        for metric, source in zip(plan.metrics, big_plan.metrics, strict=True):
            path = _answer_path(folder, metric)
            if path.exists():
                continue
            answer = orjson.loads(_answer_path(DATA_DIR / "big", source).read_bytes())
            answer["segments"] = [r for r in answer["segments"] if r["location"] in wanted]
            _write_whole(path, orjson.dumps(answer))
    os.sync()


def medium(data: DataSet, offset: int) -> dict[str, Any]:
    """50 locations × 365 days, 3 metrics: 18,250 rows."""
    ids = [loc.id for loc in data.locations[offset : offset + 50]]
    return {
        "csvFormat": {
            "columns": [
                {"heading": "Date"}, {"heading": "Location"},
                {"heading": "Entries", "metricId": "e", "fetchValue": "entries"},
                {"heading": "Passers-by", "metricId": "p", "fetchValue": "passers_by"},
                {"heading": "Sales", "metricId": "s", "fetchValue": "sales_volume"},
            ],
            "sortBy": [0, 1],
            "rowFilters": ["entity"],
        },
        "metricRequests": [_metric("e", ids), _metric("p", ids), _metric("s", ids)],
    }  # fmt: skip


def small() -> dict[str, Any]:
    """The seed page's example: 30 rows."""
    from csvgen.standin.demo import SEED_REQUEST

    body: dict[str, Any] = SEED_REQUEST["data"]["body"]
    return body


def fingerprint(route: str, body: dict[str, Any]) -> str:
    """The answer file's name: csvgen's own fingerprint of the upstream request."""
    return frames.fingerprint(route, body).hex()


def generate(case: str, bodies: list[dict[str, Any]], data: DataSet) -> None:
    """Write the answers of every metric request of ``bodies`` under bench/data/<case>/.

    The missing answers are made in one process per core: each is pure Python (the big
    case's take over a minute each), so a fresh machine's first ``make bench`` waits
    for them half as long on two cores."""
    folder = DATA_DIR / case
    missing: dict[Path, MetricPlan] = {}
    for n, body in enumerate(bodies):
        for metric in _write_request(folder, n, body).metrics:
            path = _answer_path(folder, metric)
            if not path.exists():
                missing[path] = metric
    if not missing:
        return
    spawn = multiprocessing.get_context("spawn")  # no fork of a process with a running loop
    with ProcessPoolExecutor(os.cpu_count() or 1, mp_context=spawn) as pool:
        jobs = {
            pool.submit(_make_answer, path, m.route, m.body, len(data.locations), data.seed): m
            for path, m in missing.items()
        }
        for job in as_completed(jobs):
            path, seconds = job.result()
            print(f"  {case}: {jobs[job].metric_id} {path.stat().st_size / 1e6:.0f} MB "
                  f"in {seconds:.0f} s", flush=True)  # fmt: skip


def _make_answer(
    path: Path, route: str, body: dict[str, Any], locations: int, seed: int
) -> tuple[Path, float]:
    """One answer file, made from the data set of ``locations`` and ``seed`` (in a worker
    process)."""
    started = time.monotonic()
    answer = MetricsAPI(DataSet(locations=locations, seed=seed)).answer("metric", route, body)
    _write_whole(path, orjson.dumps(answer))
    return path, time.monotonic() - started


def _write_request(folder: Path, n: int, body: dict[str, Any]) -> ExportPlan:
    """A case's request ``n`` and the routes it asks (``request-N.json`` and
    ``request-N.meta.json``); returns its plan."""
    plan = make_plan(body)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"request-{n}.json").write_bytes(orjson.dumps(body))
    meta = {"routes": [m.route for m in plan.metrics]}
    (folder / f"request-{n}.meta.json").write_text(json.dumps(meta))
    return plan


def _answer_path(folder: Path, metric: MetricPlan) -> Path:
    return folder / f"{fingerprint(metric.route, metric.body)}.json"


def _write_whole(path: Path, data: bytes) -> None:
    """Under a temporary name first: an interrupted run leaves no half answer that a
    later run would take for a whole one (it only checks that the file exists)."""
    partial = path.with_suffix(".partial")
    partial.write_bytes(data)
    partial.replace(path)


def ensure_data() -> None:
    """Generate whatever answers are missing (minutes the first time, nothing after)."""
    data = DataSet(locations=1000)
    generate("small", [small()], data)
    generate("medium", [medium(data, 50 * k) for k in range(20)], data)
    generate("big", [big(data)], data)
    generate_huge(data)
    # The answers reach the disk before any case is timed: on a fresh machine the first
    # cases otherwise ran beside the kernel writing 3.5 GB back (the huge export 36.6 s
    # there, 26-28 s once the files had settled).
    os.sync()


if __name__ == "__main__":
    ensure_data()
