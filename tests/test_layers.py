"""The pure core imports no I/O: each module, imported alone in a fresh interpreter, leaves
websockets, boto3 and asyncio out of ``sys.modules``."""

from __future__ import annotations

import subprocess
import sys

import pytest

PURE = [
    "csvgen.errors",
    "csvgen.frames",
    "csvgen.config",
    "csvgen.logs",
    "csvgen.routes",
    "csvgen.receipts",
    "csvgen.stores",
    "csvgen.csvexport.catalogue",
    "csvgen.csvexport.dialects",
    "csvgen.csvexport.plan",
    "csvgen.csvexport.answers",
    "csvgen.csvexport.combine",
    "csvgen.csvexport.csvwrite",
    "csvgen.csvexport.references",
    "csvgen.csvexport.manifest",
    "csvgen.csvexport.link",
    "csvgen.csvexport.progress",
    "csvgen.csvexport.stop",
]
IO_MODULES = ("websockets", "boto3", "botocore", "s3transfer", "asyncio")

CHECK = """
import importlib, sys
importlib.import_module(sys.argv[1])
print(" ".join(sorted(m for m in sys.argv[2:] if m in sys.modules)))
"""


def loaded(module: str) -> list[str]:
    out = subprocess.run(
        [sys.executable, "-c", CHECK, module, *IO_MODULES],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return out.stdout.split()


@pytest.mark.parametrize("module", PURE)
def test_pure_modules_import_no_io(module: str) -> None:
    assert loaded(module) == []


def test_the_check_sees_io_where_there_is_some() -> None:
    """The shells do load the network: the check above could fail."""
    assert loaded("csvgen.bus") == ["asyncio", "websockets"]
    assert "boto3" in loaded("csvgen.stores.s3")


def test_the_route_reaches_the_store_through_its_protocol_only() -> None:
    """The route imports no storage SDK: S3 is wired in app.py, behind ObjectStore."""
    assert "boto3" not in loaded("csvgen.csvexport.route")
