"""The baseline: the export script a capable analyst would write with pandas.

Reads the same metric answers (from files, so it pays no network), builds one
frame per metric request with pandas, outer-merges them on date, location and
age, sorts, writes the CSV with ``to_csv`` and uploads it with boto3's
``put_object``. Prints one JSON line: seconds, rows and peak RSS.

    python -m bench.baseline <case-dir> <request.json> <s3-endpoint> <bucket>
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time

import boto3
import pandas as pd

from bench.cases import fingerprint
from csvgen.csvexport.plan import make_plan

# The baseline as it was measured in every earlier round: text in Python objects. Since
# csvgen depends on pyarrow, pandas 3 would store text in pyarrow by default ("auto"),
# which moved the baseline (2026-11-30, one run: 38.5-44.1 s and 2.39 GB instead of
# about 32 s and 3.36 GB); bench/README.md gives both.
pd.set_option("mode.string_storage", os.environ.get("BENCH_PANDAS_STRINGS", "python"))


def main(case_dir: str, request_path: str, endpoint: str, bucket: str) -> None:
    with open(request_path) as f:
        body = json.load(f)
    # The analyst knows which request goes where; csvgen's planner only names the files.
    plan = make_plan(body)
    started = time.perf_counter()
    frames = []
    for metric in plan.metrics:
        with open(f"{case_dir}/{fingerprint(metric.route, metric.body)}.json") as f:
            segments = json.load(f)["segments"]
        frame = pd.DataFrame(segments)
        frame["index"] = frame["index"].str[:10]
        if "age" not in frame:
            frame["age"] = None
        columns = [c for c in plan.columns if c.metric == plan.metrics.index(metric)]
        keep = {c.fetch_value: c.heading for c in columns}
        frame = frame[["index", "location", "age", *keep]].rename(columns=keep)
        frames.append(frame)
    merged = frames[0]
    for frame in frames[1:]:
        merged = merged.merge(frame, on=["index", "location", "age"], how="outer")
    merged = merged.sort_values(["index", "location", "age"], na_position="last")
    merged = merged.rename(columns={"index": "Date", "location": "Location", "age": "Age"})
    text = merged.to_csv(index=False, lineterminator="\r\n")
    s3 = boto3.client("s3", endpoint_url=endpoint)
    s3.put_object(Bucket=bucket, Key=f"baseline/{time.time_ns()}.csv", Body=text.encode())
    seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(
        json.dumps({"seconds": seconds, "rows": len(merged), "bytes": len(text), "peak_rss": peak})
    )


if __name__ == "__main__":
    main(*sys.argv[1:5])
    sys.stdout.flush()
