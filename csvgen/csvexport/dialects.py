"""The CSV dialects a request may ask for (``csvFormat.dialect``), in one table."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["DIALECTS", "Dialect"]


@dataclass(frozen=True, slots=True)
class Dialect:
    separator: str = ","
    decimal_comma: bool = False
    bom: bool = False


DIALECTS = {
    "default": Dialect(),
    "excel": Dialect(bom=True),
    "excel-eu": Dialect(separator=";", decimal_comma=True, bom=True),
}
