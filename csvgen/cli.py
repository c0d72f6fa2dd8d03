"""Command line: ``csvgen run`` (the worker), ``csvgen standin`` and ``csvgen demo``."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Sequence

from . import submit
from .config import ENV, SECRET_ENV, Settings, unknown_variables
from .errors import ConfigError

logger = logging.getLogger("csvgen")

#: polars' allocator settings for the worker (see _run).
JEMALLOC = "background_thread:true,dirty_decay_ms:100,muzzy_decay_ms:0"
#: What polars writes into ``_RJEM_MALLOC_CONF`` when it is imported (polars/__init__.py):
#: a process started by one that imported polars inherits it.
POLARS_JEMALLOC = "dirty_decay_ms:500,muzzy_decay_ms:1000"


def allocator_settings(inherited: str) -> str:
    """csvgen's jemalloc settings, then the operator's (jemalloc: the last one wins).

    polars' own, passed down by a parent process that imported polars (a test, the
    benchmark, the stand-in's demo), are not an operator's choice and are dropped."""
    operator = inherited.removeprefix(POLARS_JEMALLOC).lstrip(",")
    return ",".join(filter(None, [JEMALLOC, operator]))


def _flag(name: str) -> str:
    return "--" + name.removeprefix("CSVGEN_").lower().replace("_", "-")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="csvgen", description="The worker behind Aura's external-service/csv-generator route."
    )
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="run the worker (configuration: CSVGEN_* variables)")
    for name in ENV:
        if name not in SECRET_ENV:  # argv is visible to every user of the machine
            run.add_argument(_flag(name), dest=name, metavar="VALUE", help=f"overrides {name}")

    standin = commands.add_parser("standin", help="run the local stand-in for the bus, Aura and S3")
    standin.add_argument("--port", type=int, default=0, help="WebSocket port (default: a free one)")
    standin.add_argument("--s3-port", type=int, default=0, help="S3 port (default: a free one)")
    standin.add_argument("--bucket", default="aura-exports", help="the bucket to create")
    standin.add_argument("--locations", type=int, default=8, help="locations in the data set")
    standin.add_argument("--latency-ms", type=float, default=0.0, help="delay before each answer")
    standin.add_argument(
        "--part-chars", type=int, default=256 * 1024, help="split answers longer than this"
    )

    submit.add_parser(commands)

    demo = commands.add_parser("demo", help="stand-in + worker + the seed request, end to end")
    demo.add_argument("--request", metavar="FILE", help="send this request frame (JSON) instead")
    demo.add_argument("--rows", type=int, default=30, help="CSV rows to print at most")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "standin":
        from .standin.server import main as standin_main

        return standin_main(args)
    if args.command == "submit":
        return submit.main(args)
    if args.command == "demo":
        from .standin.demo import main as demo_main

        return demo_main(args)
    return _run(args)


def _run(args: argparse.Namespace) -> int:
    overrides = {name: value for name in ENV if (value := getattr(args, name, None)) is not None}
    try:
        settings = Settings.from_env(os.environ, overrides)
    except ConfigError as exc:
        print(f"csvgen: {exc}", file=sys.stderr)
        return 2
    # Before polars loads: its allocator (jemalloc) returns freed pages after 0.1 s instead
    # of 10 s, from a background thread rather than in the allocating threads. An export
    # frees hundreds of megabytes of answers and parts while it builds the next ones. The
    # big benchmark export peaked at 0.81-0.88 GB with a 1 s decay, 0.67-0.68 GB with this,
    # and ran no slower (bench/README.md). An operator's own setting comes after, so it wins.
    os.environ["_RJEM_MALLOC_CONF"] = allocator_settings(os.environ.get("_RJEM_MALLOC_CONF", ""))
    from . import logs, worker
    from .app import build_router

    logs.setup(
        settings.log_level,
        secrets=(settings.bus_token, settings.metrics_token),
        fmt=settings.log_format,
    )
    for warning in unknown_variables(os.environ):
        logger.warning("%s", warning)
    logger.info("starting csvgen worker: %r", settings)
    try:
        return asyncio.run(worker.main(settings, build_router))
    except ConfigError as exc:  # found at startup: the store's check (app.check_store)
        print(f"csvgen: {exc}", file=sys.stderr)
        return 2
    except Exception:
        logger.exception("worker stopped")
        return 1
