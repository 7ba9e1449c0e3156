"""Markdown helpers shared by the experiments' tables (``tables.py``, ``lcat.py``, ``lit.py``)."""

from __future__ import annotations

import math

PENDING = "pending"


def markdown_table(header: list[str], body: list[list[str]], align: list[str] | None = None) -> str:
    align = align or ["---"] + ["---:"] * (len(header) - 1)
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in body]
    return "\n".join(lines)


def fmt(x, spec=".2f", none=PENDING) -> str:
    return none if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


def fill_block(text: str, begin: str, end: str, block: str, *, page: str) -> str:
    """``text`` with what lies between the markers ``begin`` and ``end`` replaced by ``block`` (the
    generated tables of the benchmarks' ``--write-docs``); a page without them is a ValueError."""
    if begin not in text or end not in text:
        raise ValueError(f"{page}: no {begin} ... {end} block")
    head, rest = text.split(begin, 1)
    _, tail = rest.split(end, 1)
    return f"{head}{begin}\n{block}\n{end}{tail}"


def rows_where(rows, **kw):
    return [r for r in rows if all(r.get(k) == v for k, v in kw.items())]


def value_where(rows, **kw):
    found = rows_where(rows, **kw)
    return found[-1]["value"] if found else None


__all__ = ["PENDING", "fill_block", "fmt", "markdown_table", "rows_where", "value_where"]
