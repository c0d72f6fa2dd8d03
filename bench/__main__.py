"""`make bench`: every case several times in fresh processes; medians with min–max.

Cases (bench/README.md says what each means):
  big          1,000 locations × 365 days, 5 metric requests, ~2.2M rows; csvgen vs pandas
  small        the seed example 200 times: csvgen's own overhead per export
  concurrency  20 medium exports at once vs one after another, answers delayed 500 ms
  hostile      200 invalid 1 MiB bodies and 20 seed requests while the big export runs
  huge         the big export for 4,000 locations: 8.76M rows, out of core
  pair         two big exports at once on one worker
  scaling      0.25M to 2M rows (subsets of the big export's locations) and the huge case,
               with the default memory budget and with 256 MB

Results go to bench/results/latest.json.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import statistics
import time
from pathlib import Path
from typing import Any

import orjson
from prometheus_client.parser import text_string_to_metric_families
from websockets.asyncio.client import connect

from bench.cases import DATA_DIR, SCALING, ensure_data, ensure_scaling_data
from bench.hostile import frames as hostile_frames, validation_times
from csvgen.csvexport.plan import make_plan
from csvgen.standin.child import Child
from csvgen.standin.demo import submit

RESULTS = Path(__file__).parent / "results"
RUNS = int(os.environ.get("BENCH_RUNS", "3"))
#: For working on one case: BENCH_CASES=big (the report then shows only what ran).
ALL_CASES = ["big", "small", "concurrency", "hostile", "huge", "pair", "scaling"]
CASES = os.environ.get("BENCH_CASES", ",".join(ALL_CASES)).split(",")


def summary(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def shown(s: dict[str, float], unit: str = "s", scale: float = 1.0) -> str:
    return f"{s['median'] * scale:.3f} {unit} ({s['min'] * scale:.3f}–{s['max'] * scale:.3f})"


async def replay(*cases: str, latency_ms: float = 0) -> tuple[Child, dict[str, Any]]:
    args = (*(str(DATA_DIR / case) for case in cases), "--latency-ms", str(latency_ms))
    proc = await Child(*args, module="bench.replay", stream="both").start()
    line = await proc.wait_for_line("replay-ready ", within=120)
    return proc, json.loads(line.removeprefix("replay-ready "))


async def worker(info: dict[str, Any]) -> Child:
    proc = await Child("run", env={**os.environ, **info["env"]}, stream="both").start()
    await proc.wait_for_line("connected to the bus")
    await proc.wait_for_line("connected to the metrics API")
    return proc


def frame(rid: str, body: dict[str, Any]) -> dict[str, Any]:
    data = {"id": rid, "route": "external-service/csv-generator", "body": body}
    return {"action": "external-service", "data": data}


def request(case: str, n: int = 0) -> dict[str, Any]:
    body: dict[str, Any] = orjson.loads((DATA_DIR / case / f"request-{n}.json").read_bytes())
    return body


async def stats(info: dict[str, Any]) -> dict[str, Any]:
    result: dict[str, Any] = await submit(
        info["submit"], {"action": "bench-stats", "data": {"id": "s"}}
    )
    return result


STAGES = re.compile(r"stages id=(\S+) (.*)")
#: The worker's own time from a hostile frame's arrival to its reply in the outbox.
HOSTILE_LOG = re.compile(r"request id=hostile-\S+ .*outcome=invalid_request duration=([\d.]+)s")


def stages_of(proc: Child, rid: str) -> dict[str, float]:
    for line in proc.lines:
        m = STAGES.search(line)
        if m and m.group(1) == rid:
            return {
                k: float(v.rstrip("s")) for k, v in (kv.split("=") for kv in m.group(2).split())
            }
    return {}


async def big_case() -> dict[str, Any]:
    print("big export: 1,000 locations × 365 days, 5 metric requests", flush=True)
    server, info = await replay("big")
    runs: list[dict[str, Any]] = []
    try:
        for n in range(RUNS):
            w = await worker(info)
            rid = f"big-{n}"
            started = time.perf_counter()
            reply = await submit(info["submit"], frame(rid, request("big")), timeout_s=600)
            seconds = time.perf_counter() - started
            item = reply["body"][0]
            await w.wait_for_line(f"stages id={rid} ")
            runs.append({"seconds": seconds, "peak_rss": w.peak_rss(), "rows": item["rowCount"],
                         "bytes": item["sizeBytes"], "stages": stages_of(w, rid)})  # fmt: skip
            await w.stop(within=90)
            print(f"  csvgen run {n + 1}: {seconds:.2f} s, {runs[-1]['peak_rss'] / 1e9:.2f} GB, "
                  f"{item['rowCount']} rows", flush=True)  # fmt: skip
        baseline = []
        endpoint = info["env"]["AWS_ENDPOINT_URL_S3"]
        for n in range(RUNS):
            env = {**os.environ, **info["env"]}
            args = (str(DATA_DIR / "big"), str(DATA_DIR / "big" / "request-0.json"), endpoint,
                    "aura-exports")  # fmt: skip
            base = await Child(*args, env=env, module="bench.baseline", stream="stdout").start()
            if await base.wait(within=900) != 0:
                raise RuntimeError("the pandas baseline failed")
            baseline.append(json.loads(base.lines[-1]))
            print(f"  pandas run {n + 1}: {baseline[-1]['seconds']:.2f} s, "
                  f"{baseline[-1]['peak_rss'] / 1e9:.2f} GB", flush=True)  # fmt: skip
    finally:
        await server.stop()
    ours = summary([r["seconds"] for r in runs])
    theirs = summary([b["seconds"] for b in baseline])
    rss, base_rss = (
        summary([r["peak_rss"] for r in runs]),
        summary([b["peak_rss"] for b in baseline]),
    )
    stage_names = list(runs[0]["stages"])
    return {
        "rows": runs[0]["rows"], "bytes": runs[0]["bytes"],
        "csvgen_seconds": ours, "pandas_seconds": theirs,
        "csvgen_peak_rss": rss, "pandas_peak_rss": base_rss,
        "stages": {s: summary([r["stages"][s] for r in runs]) for s in stage_names},
        "speedup": theirs["median"] / ours["median"],
        "after_fetch": summary([after_fetch(r["stages"]) for r in runs]),
        "rss_ratio": rss["median"] / base_rss["median"],
    }  # fmt: skip


async def one_export(case: str, rid: str, **env: str) -> dict[str, Any]:
    """One export of ``case`` on a fresh worker (``env`` added to its environment): time,
    peak RSS, stages, the reply's item."""
    server, info = await replay(case)
    try:
        w = await worker({**info, "env": {**info["env"], **env}})
        started = time.perf_counter()
        reply = await submit(info["submit"], frame(rid, request(case)), timeout_s=900)
        seconds = time.perf_counter() - started
        if "body" not in reply:
            raise RuntimeError(f"{case} failed: {reply}")
        await w.wait_for_line(f"stages id={rid} ")
        run = {"seconds": seconds, "peak_rss": w.peak_rss(), "item": reply["body"][0],
               "stages": stages_of(w, rid),
               "out_of_core": any(f"out of core id={rid}" in line for line in w.lines),
               "spilled": any(f"out of core id={rid}" in line and "spilled as read" in line
                              for line in w.lines)}  # fmt: skip
        await w.stop(within=120)
    finally:
        await server.stop()
    return run


def after_fetch(stages: dict[str, float]) -> float:
    """From the last answer byte to the reply: every stage after ``fetch``."""
    return sum(seconds for stage, seconds in stages.items() if stage != "fetch")


async def huge_case() -> dict[str, Any]:
    print("huge export: 4,000 locations × 365 days × 6 rows (8.76M rows), one run", flush=True)
    run = await one_export("huge", "huge-0")
    rows = run["item"]["rowCount"]
    print(f"  csvgen: {run['seconds']:.2f} s, {run['peak_rss'] / 1e9:.2f} GB, {rows} rows, "
          f"out of core: {run['out_of_core']}", flush=True)  # fmt: skip
    return {"seconds": run["seconds"], "peak_rss": run["peak_rss"], "rows": rows,
            "bytes": run["item"]["sizeBytes"], "stages": run["stages"],
            "out_of_core": run["out_of_core"]}  # fmt: skip


async def pair_case() -> dict[str, Any]:
    """Two big exports at once on one worker, against one alone (each on a fresh worker)."""
    print("pair: one big export, then two at once on one worker", flush=True)
    alone = await one_export("big", "alone")
    server, info = await replay("big")
    try:
        w = await worker(info)
        started = time.perf_counter()
        replies = await asyncio.gather(
            *(submit(info["submit"], frame(f"pair-{n}", request("big")), timeout_s=900)
              for n in range(2))
        )  # fmt: skip
        seconds = time.perf_counter() - started
        peak = w.peak_rss()
        await w.stop(within=120)
    finally:
        await server.stop()
    items = [r["body"][0] for r in replies]
    same = all(i["sha256"] == alone["item"]["sha256"] for i in items)
    print(f"  alone {alone['seconds']:.2f} s, {alone['peak_rss'] / 1e9:.2f} GB; two at once "
          f"{seconds:.2f} s, {peak / 1e9:.2f} GB; same bytes: {same}", flush=True)  # fmt: skip
    return {"alone_seconds": alone["seconds"], "alone_peak_rss": alone["peak_rss"],
            "pair_seconds": seconds, "pair_peak_rss": peak, "same_bytes": same,
            "rss_ratio": peak / alone["peak_rss"]}  # fmt: skip


#: The scaling table's second budget: small enough that the huge export's records spill.
SMALL_BUDGET_MB = 256


async def scaling_case() -> dict[str, Any]:
    print("scaling: the big export for fewer locations, then the huge case, with the default "
          f"budget and with {SMALL_BUDGET_MB} MB", flush=True)  # fmt: skip
    ensure_scaling_data()
    table = []
    for case in [*SCALING, "huge"]:
        row: dict[str, Any] = {"case": case}
        for budget, at in (("", ""), (str(SMALL_BUDGET_MB), "small_")):
            env = {"CSVGEN_MEMORY_BUDGET_MB": budget} if budget else {}
            run = await one_export(case, f"{case}-{at}0", **env)
            row.update({"rows": run["item"]["rowCount"], f"{at}seconds": run["seconds"],
                        f"{at}peak_rss": run["peak_rss"], f"{at}sha256": run["item"]["sha256"],
                        f"{at}out_of_core": run["out_of_core"],
                        f"{at}spilled": run["spilled"]})  # fmt: skip
            print(f"  {row['rows']:>9,} rows, budget {budget or 'default'}: "
                  f"{run['seconds']:6.2f} s, {run['peak_rss'] / 1e9:.2f} GB{_where(run)}",
                  flush=True)  # fmt: skip
        row["same_bytes"] = row["sha256"] == row["small_sha256"]
        table.append(row)
    return {"table": table, "small_budget_mb": SMALL_BUDGET_MB}


def _where(run: dict[str, Any]) -> str:
    """How an export ran: in memory, out of core, or out of core with its records spilled."""
    if run.get("spilled"):
        return " (out of core, records spilled)"
    return " (out of core)" if run["out_of_core"] else ""


async def small_case() -> dict[str, Any]:
    print("small export: the seed example, 200 times", flush=True)
    server, info = await replay("small")
    try:
        w = await worker({**info, "env": {**info["env"], "CSVGEN_HTTP_PORT": "0"}})
        port = int(
            (await w.wait_for_line("serving /healthz")).rsplit(":", 1)[1].strip().rstrip("/")
        )
        body = request("small")
        store_before = await store_metrics(port)
        totals, answers = [], []
        [upstream] = make_plan(body).metrics  # the one metric request csvgen sends
        for n in range(200):
            started = time.perf_counter()
            await submit(info["submit"], frame(f"small-{n}", body))
            totals.append(time.perf_counter() - started)
            started = time.perf_counter()
            data = {"id": f"m{n}", "route": upstream.route, "body": upstream.body}
            await submit(info["submit"], {"action": "metric", "data": data})
            answers.append(time.perf_counter() - started)
        store_after = await store_metrics(port)
        # One fresh export and one repeat of it, their S3 requests counted by the worker.
        await submit(info["submit"], frame("counted", body))
        fresh = await store_metrics(port)
        await submit(info["submit"], frame("counted", body))
        repeat = await store_metrics(port)
        await w.stop()
    finally:
        await server.stop()
    overhead = [t - statistics.median(answers) for t in totals]
    overhead.sort()
    store_s = (store_after["seconds"] - store_before["seconds"]) / len(totals)
    return {
        "total": summary(totals), "answer": summary(answers),
        "overhead_median": statistics.median(overhead),
        "overhead_p99": overhead[int(len(overhead) * 0.99) - 1],
        "store_seconds_per_export": store_s,
        "overhead_without_store_median": statistics.median(overhead) - store_s,
        "store_requests_fresh": fresh["requests"] - store_after["requests"],
        "store_requests_repeat": repeat["requests"] - fresh["requests"],
    }  # fmt: skip


async def store_metrics(port: int) -> dict[str, float]:
    """The worker's S3 requests and the seconds spent waiting on them, from /metrics."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /metrics HTTP/1.1\r\nHost: bench\r\n\r\n")
    await writer.drain()
    text = (await reader.read()).partition(b"\r\n\r\n")[2].decode()
    writer.close()
    found = {"requests": 0.0, "seconds": 0.0}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "csvgen_store_requests_total":
                found["requests"] += s.value
            elif s.name == "csvgen_store_request_duration_seconds_sum":
                found["seconds"] += s.value
    return found


async def timed(info: dict[str, Any], rid: str, body: dict[str, Any], into: list[float]) -> None:
    """One export; its latency goes into ``into``."""
    started = time.perf_counter()
    reply = await submit(info["submit"], frame(rid, body), timeout_s=600)
    if "body" not in reply:
        raise RuntimeError(f"{rid} failed: {reply}")
    into.append(time.perf_counter() - started)


async def concurrency_case() -> dict[str, Any]:
    print(
        "concurrency: 20 medium exports (50 locations × 365 days, 3 metrics, 500 ms answers)",
        flush=True,
    )
    server, info = await replay("medium", latency_ms=500)
    result: dict[str, Any] = {}
    try:
        w = await worker(info)
        bodies = [request("medium", n) for n in range(20)]
        for mode in ("sequential", "concurrent"):
            await stats(info)
            latencies: list[float] = []
            started = time.perf_counter()
            if mode == "sequential":
                for n, body in enumerate(bodies):
                    await timed(info, f"{mode}-{n}", body, latencies)
            else:
                await asyncio.gather(
                    *(timed(info, f"{mode}-{n}", b, latencies) for n, b in enumerate(bodies))
                )
            total = time.perf_counter() - started
            pings = await stats(info)
            latencies.sort()
            result[mode] = {
                "total": total, "p50": statistics.median(latencies), "p99": latencies[-1],
                "pings": pings["pings"], "max_ping_rtt": pings["max_rtt"],
            }  # fmt: skip
            print(f"  {mode}: {total:.2f} s", flush=True)
        lost = sum("lost the bus connection" in ln for ln in w.lines)
        await w.stop()
    finally:
        await server.stop()
    result["ratio"] = result["concurrent"]["total"] / result["sequential"]["total"]
    result["missed_keepalive"] = (
        lost > 0 or max(result[m]["max_ping_rtt"] for m in ("sequential", "concurrent")) >= 20.0
    )
    return result


def report(results: dict[str, Any]) -> None:
    print()
    if "big" in results:
        report_big(results["big"])
    if "small" in results:
        report_small(results["small"])
    if "concurrency" in results:
        report_concurrency(results["concurrency"])
    if "hostile" in results:
        report_hostile(results["hostile"])
    if "huge" in results:
        report_huge(results["huge"], results.get("big"))
    if "pair" in results:
        p = results["pair"]
        print(f"two big exports at once on one worker: {p['pair_seconds']:.2f} s, peak RSS "
              f"{p['pair_peak_rss'] / 1e9:.2f} GB = {p['rss_ratio']:.2f}× one alone "
              f"({p['alone_peak_rss'] / 1e9:.2f} GB) (target ≤ 2); "
              f"same bytes as alone: {p['same_bytes']}")  # fmt: skip
    if "scaling" in results:
        small = results["scaling"].get("small_budget_mb")
        print("scaling (one run each): rows, seconds, µs a row, peak RSS; then with a budget "
              f"of {small} MB")  # fmt: skip
        for r in results["scaling"]["table"]:
            per_row = r["seconds"] / r["rows"] * 1e6
            line = (f"  {r['rows']:>10,}  {r['seconds']:7.2f} s  {per_row:5.2f}"
                    f"  {r['peak_rss'] / 1e9:.2f} GB{_where(r)}")  # fmt: skip
            if "small_seconds" in r:
                line += (f" | {r['small_seconds']:7.2f} s  {r['small_peak_rss'] / 1e9:.2f} GB"
                         f"{_where({k[6:]: v for k, v in r.items() if k.startswith('small_')})}"
                         f"{'' if r['same_bytes'] else '  NOT THE SAME BYTES'}")  # fmt: skip
            print(line)


def report_big(big: dict[str, Any]) -> None:
    print(
        f"big export ({big['rows']:,} rows, {big['bytes'] / 1e6:.0f} MB), "
        f"{RUNS} runs, median (min–max):"
    )
    print(f"  csvgen end to end   {shown(big['csvgen_seconds'])}, peak RSS "
          f"{shown(big['csvgen_peak_rss'], 'GB', 1e-9)}")  # fmt: skip
    for stage, s in big["stages"].items():
        print(f"    {stage:<18}{shown(s)}")
    print(f"  pandas baseline     {shown(big['pandas_seconds'])}, peak RSS "
          f"{shown(big['pandas_peak_rss'], 'GB', 1e-9)}")  # fmt: skip
    print(f"  csvgen is {big['speedup']:.2f}× faster (target ≥ 5), "
          f"its peak RSS is {big['rss_ratio']:.2f}× pandas' (target ≤ 0.25)")  # fmt: skip
    print(f"  from the last answer byte to the reply (the stages after fetch): "
          f"{big['after_fetch']['median']:.2f} s (target ≤ 1.5)")  # fmt: skip


def report_huge(huge: dict[str, Any], big: dict[str, Any] | None) -> None:
    per_row = huge["seconds"] / huge["rows"]
    print(f"huge export ({huge['rows']:,} rows, {huge['bytes'] / 1e6:.0f} MB), one run: "
          f"{huge['seconds']:.2f} s, peak RSS {huge['peak_rss'] / 1e9:.2f} GB (target ≤ 1.5), "
          f"out of core: {huge['out_of_core']}")  # fmt: skip
    print("    " + ", ".join(f"{k} {v:.2f} s" for k, v in huge["stages"].items()))
    if big is not None:
        big_per_row = big["csvgen_seconds"]["median"] / big["rows"]
        print(f"  time a row {per_row * 1e6:.2f} µs = {per_row / big_per_row:.2f}× the big "
              f"export's {big_per_row * 1e6:.2f} µs (target ≤ 1.3)")  # fmt: skip
        # moto's upload grows faster than the object (bench/README.md): shown apart.
        own = (huge["seconds"] - huge["stages"]["upload"]) / huge["rows"]
        big_upload = big["stages"]["upload"]["median"]
        big_own = (big["csvgen_seconds"]["median"] - big_upload) / big["rows"]
        print(f"  without the upload to moto: {own * 1e6:.2f} µs = {own / big_own:.2f}× the big "
              f"export's {big_own * 1e6:.2f} µs")  # fmt: skip


def report_small(small: dict[str, Any]) -> None:
    print("small export (30 rows), 200 runs:")
    print(
        f"  total {shown(small['total'], 'ms', 1e3)}; "
        f"stand-in answer {shown(small['answer'], 'ms', 1e3)}"
    )
    print(f"  csvgen's own overhead: median {small['overhead_median'] * 1e3:.1f} ms, "
          f"p99 {small['overhead_p99'] * 1e3:.1f} ms; of it, waiting on S3 "
          f"{small['store_seconds_per_export'] * 1e3:.1f} ms (mean); apart from S3: median "
          f"{small['overhead_without_store_median'] * 1e3:.1f} ms (target < 20)")  # fmt: skip
    print(f"  S3 requests: a fresh export {small['store_requests_fresh']:.0f} (target ≤ 4), "
          f"a repeat {small['store_requests_repeat']:.0f} (target ≤ 1)")  # fmt: skip


def report_concurrency(conc: dict[str, Any]) -> None:
    print("concurrency (20 medium exports, answers delayed 500 ms):")
    for mode in ("sequential", "concurrent"):
        m = conc[mode]
        print(f"  {mode:<11} total {m['total']:.2f} s, p50 {m['p50']:.2f} s, p99 {m['p99']:.2f} s, "
              f"{m['pings']} pings, slowest pong {m['max_ping_rtt'] * 1e3:.0f} ms")  # fmt: skip
    print(f"  at once / one after another = {conc['ratio']:.2f} (target ≤ 0.4); "
          f"missed keepalive: {'yes' if conc['missed_keepalive'] else 'no'}")  # fmt: skip


async def hostile_case() -> dict[str, Any]:
    print(
        "hostile: 200 invalid 1 MiB bodies and 20 seed requests beside the big export", flush=True
    )
    seed = request("small")
    result: dict[str, Any] = {"validation": validation_times(seed)}
    # Bus, Metrics API and S3 in three processes: relaying 1 MiB frames must not queue
    # behind the big answers or the big upload in a stand-in's own loop, or its delay
    # would count as csvgen's.
    bus, bus_info = await replay("small")
    api, api_info = await replay("big", "small")
    store, store_info = await replay("small")
    env = {
        **bus_info["env"],
        "CSVGEN_METRICS_URL": api_info["env"]["CSVGEN_METRICS_URL"],
        "AWS_ENDPOINT_URL_S3": store_info["env"]["AWS_ENDPOINT_URL_S3"],
    }
    info = {**bus_info, "env": env}
    try:
        # Idle: the seed's latency, then the hostile traffic alone and the memory it costs.
        w = await worker(info)
        idle: list[float] = []
        for n in range(20):
            await timed(info, f"idle-{n}", seed, idle)
        before = w.rss()
        idle_invalid, _, _ = await hostile_traffic(info["submit"], seed)
        growth = w.peak_rss() - before
        await w.stop()
        # Beside the big export.
        w = await worker(info)
        big = asyncio.create_task(
            submit(info["submit"], frame("beside", request("big")), timeout_s=600)
        )
        invalid, seeds, codes = await hostile_traffic(info["submit"], seed)
        overlapped = not big.done()
        reply = await big
        with_rss = w.peak_rss()
        own = sorted(
            float(m.group(1)) for line in w.lines if (m := HOSTILE_LOG.search(line)) is not None
        )
        await w.stop(within=90)
    finally:
        await asyncio.gather(bus.stop(), api.stop(), store.stop())
    invalid.sort()
    idle_invalid.sort()
    result.update(
        idle_invalid_p50=statistics.median(idle_invalid),
        idle_invalid_p99=idle_invalid[int(len(idle_invalid) * 0.99) - 1],
        invalid_p50=statistics.median(invalid),
        invalid_p99=invalid[int(len(invalid) * 0.99) - 1],
        invalid_max=invalid[-1],
        worker_p50=statistics.median(own),
        worker_p99=own[int(len(own) * 0.99) - 1],
        worker_max=own[-1],
        codes=sorted(set(codes)),
        seed_idle=statistics.median(idle),
        seed_beside=statistics.median(seeds),
        seed_ratio=statistics.median(seeds) / statistics.median(idle),
        rss_beside=with_rss,
        rss_growth=growth,
        overlapped=overlapped,
        big_rows=reply["body"][0]["rowCount"],
    )
    return result


async def hostile_traffic(
    url: str, seed: dict[str, Any]
) -> tuple[list[float], list[float], list[str]]:
    """200 hostile frames one after another on one link, a seed request after every tenth.

    Returns the latency of each invalid request, of each seed request, and the codes seen.
    """
    invalid: list[float] = []
    seeds: list[float] = []
    codes: list[str] = []
    async with connect(url, compression=None, max_size=None) as ws:

        async def ask(rid: str, text: str) -> tuple[float, Any]:
            started = time.perf_counter()
            await ws.send(text)
            async for message in ws:
                got, payload = parse_reply(message)
                if got == rid:
                    return time.perf_counter() - started, payload
            raise ConnectionError("the bus closed")

        for n, (rid, data) in enumerate(hostile_frames(seed, 200)):
            seconds, payload = await ask(rid, data.decode())
            invalid.append(seconds)
            codes.append(payload["error"]["code"] if "error" in payload else "ok")
            if n % 10 == 9:
                sid = f"seed-{n}"
                seconds, payload = await ask(sid, orjson.dumps(frame(sid, seed)).decode())
                if "body" not in payload:
                    raise RuntimeError(f"{sid} failed: {payload}")
                seeds.append(seconds)
    return invalid, seeds, codes


def parse_reply(message: str | bytes) -> tuple[str, Any]:
    text = message if isinstance(message, str) else message.decode()
    rid, _, _, body = text.split("|", 3)
    return rid, orjson.loads(body)


def report_hostile(h: dict[str, Any]) -> None:
    print("hostile (200 invalid bodies of about 1 MiB, 20 seed requests, beside the big export):")
    for kind, v in h["validation"].items():
        mib, median, most = v["bytes"] / 2**20, v["median"] * 1e3, v["max"] * 1e3
        print(f"  validating {kind:<9} {mib:.2f} MiB: median {median:.1f} ms, max {most:.1f} ms"
              f" -> {v['code']} (target ≤ 200 ms)")  # fmt: skip
    p50, p99, most = (h[k] * 1e3 for k in ("invalid_p50", "invalid_p99", "invalid_max"))
    print(f"  time to invalid_request: p50 {p50:.1f} ms, p99 {p99:.1f} ms (target ≤ 50), "
          f"max {most:.1f} ms; codes {h['codes']}")  # fmt: skip
    p50, p99, most = (h[k] * 1e3 for k in ("worker_p50", "worker_p99", "worker_max"))
    print(f"    of which in the worker (receipt to reply): p50 {p50:.1f} ms, p99 {p99:.1f} ms, "
          f"max {most:.1f} ms")  # fmt: skip
    idle, beside = h["seed_idle"] * 1e3, h["seed_beside"] * 1e3
    print(f"  seed request: idle {idle:.1f} ms, beside {beside:.1f} ms "
          f"= {h['seed_ratio']:.2f}× (target ≤ 2)")  # fmt: skip
    print(f"  idle worker: time to invalid_request p50 {h['idle_invalid_p50'] * 1e3:.1f} ms, "
          f"p99 {h['idle_invalid_p99'] * 1e3:.1f} ms; peak RSS growth from the hostile traffic "
          f"{h['rss_growth'] / 1e6:+.0f} MB (target ≤ 100)")  # fmt: skip
    print(f"  worker peak RSS with the big export and the hostile traffic "
          f"{h['rss_beside'] / 1e6:.0f} MB; traffic ended before the big export: "
          f"{h['overlapped']}")  # fmt: skip


async def main() -> None:
    started = time.perf_counter()
    ensure_data()
    cases = {
        "big": big_case,
        "small": small_case,
        "concurrency": concurrency_case,
        "hostile": hostile_case,
        "huge": huge_case,
        "pair": pair_case,
        "scaling": scaling_case,
    }
    results: dict[str, Any] = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "runs": RUNS,
    }
    for name in CASES:
        results[name] = await cases[name]()
    results["seconds"] = time.perf_counter() - started
    RESULTS.mkdir(exist_ok=True)
    if CASES != ALL_CASES:
        return report(results)  # a partial run does not replace the latest full figures
    (RESULTS / "latest.json").write_text(json.dumps(results, indent=2) + "\n")
    report(results)
    print(f"\n(make bench took {results['seconds']:.0f} s; results in bench/results/latest.json)")


if __name__ == "__main__":
    asyncio.run(main())
