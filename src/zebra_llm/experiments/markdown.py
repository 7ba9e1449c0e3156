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


def rows_where(rows, **kw):
    return [r for r in rows if all(r.get(k) == v for k, v in kw.items())]


def value_where(rows, **kw):
    found = rows_where(rows, **kw)
    return found[-1]["value"] if found else None


__all__ = ["PENDING", "fmt", "markdown_table", "rows_where", "value_where"]
