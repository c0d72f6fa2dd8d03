"""Command line: ``csvgen run`` (the worker)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Sequence

from .config import ENV, SECRET_ENV, Settings
from .errors import ConfigError

logger = logging.getLogger("csvgen")


def _flag(name: str) -> str:
    return "--" + name.removeprefix("CSVGEN_").lower().replace("_", "-")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="csvgen", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="run the worker (configuration: CSVGEN_* variables)")
    for name in ENV:
        if name not in SECRET_ENV:  # argv is visible to every user of the machine
            run.add_argument(_flag(name), dest=name, metavar="VALUE", help=f"overrides {name}")

    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return _run(args)


def _run(args: argparse.Namespace) -> int:
    overrides = {name: value for name in ENV if (value := getattr(args, name, None)) is not None}
    try:
        settings = Settings.from_env(os.environ, overrides)
    except ConfigError as exc:
        print(f"csvgen: {exc}", file=sys.stderr)
        return 2
    from . import logs, worker
    from .app import build_router

    logs.setup(settings.log_level)
    logger.info("starting csvgen worker: %r", settings)
    try:
        return asyncio.run(worker.main(settings, build_router))
    except Exception as exc:
        logger.error("worker stopped: %s", exc)
        return 1
