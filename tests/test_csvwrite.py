"""The writer alone: formula safety cell by cell, mixed columns, dialects, gzip."""

from __future__ import annotations

import gzip
import hashlib
import io

import polars as pl

from csvgen.csvexport.answers import TEXT_MARK
from csvgen.csvexport.csvwrite import write_csv
from csvgen.csvexport.dialects import DIALECTS


def written(
    table: pl.DataFrame, dialect: str = "default", **kw: bool
) -> tuple[bytes, tuple[int, ...]]:
    out = io.BytesIO()
    result = write_csv(["=h", "b"], table, out, dialect=DIALECTS[dialect], **kw)
    assert result.size == len(out.getvalue())
    assert result.sha256 == hashlib.sha256(out.getvalue()).hexdigest()
    return out.getvalue(), result.mixed


def test_text_that_looks_like_a_formula_is_escaped_numbers_never() -> None:
    table = pl.DataFrame({"c0": ["-x", "@y", "ok"], "c1": [-5.0, 1.5, None]})
    data, mixed = written(table)
    assert data == b"'=h,b\r\n'-x,-5\r\n'@y,1.5\r\nok,\r\n"
    assert mixed == ()


def test_a_mixed_column_keeps_numbers_and_escapes_text() -> None:
    cells = ["-5", TEXT_MARK + "-x", "-12.5", TEXT_MARK + "", None]
    table = pl.DataFrame({"c0": ["a"] * 5, "c1": cells})
    data, mixed = written(table, mixed=(1,))
    assert data == b"'=h,b\r\na,-5\r\na,'-x\r\na,-12.5\r\na,\r\na,\r\n"
    assert mixed == (1,)
    data, _ = written(table, "excel-eu", mixed=(1,))
    assert data.split(b"\r\n")[3] == b"a;-12,5"  # the decimal comma of the dialect


def test_gzip_is_byte_for_byte_reproducible() -> None:
    table = pl.DataFrame({"c0": ["a", "b"], "c1": [1.0, 2.0]})
    first, _ = written(table, compress=True)
    second, _ = written(table, compress=True)
    assert first == second
    assert gzip.decompress(first) == b"'=h,b\r\na,1\r\nb,2\r\n"


def test_a_mark_in_upstream_text_does_not_make_a_column_mixed() -> None:
    """Text that starts with the mark itself (upstream can send any character) leaves the
    column text: every cell of it gets formula safety, none passes as a number."""
    table = pl.DataFrame({"c0": ["a", "b"], "c1": [TEXT_MARK + "x", "=cmd()"]})
    data, mixed = written(table)
    assert data.split(b"\r\n")[2] == b"b,'=cmd()"
    assert mixed == ()


def test_categorical_keys_are_written_and_escaped_like_text() -> None:
    """Row keys reach the writer as categorical text: the same bytes and the same escapes."""
    keys = ["=cmd()", "L1", None, "a,b", "+1"]
    as_text = pl.DataFrame({"c0": keys, "c1": [1.0, 2.0, 3.0, 4.0, 5.0]})
    as_categorical = as_text.with_columns(pl.col("c0").cast(pl.Categorical))
    out = io.BytesIO()
    result = write_csv(["=h", "b"], as_categorical, out)
    assert out.getvalue() == written(as_text)[0]
    assert out.getvalue() == b"'=h,b\r\n'=cmd(),1\r\nL1,2\r\n,3\r\n\"a,b\",4\r\n'+1,5\r\n"
    assert result.escaped == 3  # the heading and two keys
