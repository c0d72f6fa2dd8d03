"""Logging setup: one format, and websockets' chatty loggers kept at INFO or above."""

from __future__ import annotations

import logging
import sys


def setup(level: str) -> None:
    logging.basicConfig(
        level=level,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        force=True,
    )
    # At DEBUG, websockets logs handshake request lines, which carry ?token=.
    for name in ("websockets", "csvgen.websockets"):
        logging.getLogger(name).setLevel(max(logging.INFO, logging.getLevelName(level)))
    # botocore at DEBUG logs signed URLs and headers.
    for name in ("botocore", "boto3", "s3transfer", "urllib3"):
        logging.getLogger(name).setLevel(logging.WARNING)
