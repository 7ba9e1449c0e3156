"""``docs/results.md``'s generated parts: every table between a pair of markers

    <!-- BEGIN zebra_strategies:gap -->
    ...
    <!-- END zebra_strategies:gap -->

is replaced by the table of that name from ``docs/results/<experiment>/results.json``
(:mod:`.tables`); ``<experiment>:status`` is the list of finished and pending cells.
Nothing between markers is typed by hand; an experiment without results shows as pending.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from .cells import RESULTS_FILE, load_results
from .tables import status_line, tables

MARKER = re.compile(r"(<!-- BEGIN (\w+):(\w+) -->\n)(.*?)(<!-- END \2:\3 -->)", re.S)


def fill(page: str, results_dir: str | os.PathLike) -> str:
    """``page`` with every marker block regenerated from the results under ``results_dir``."""
    cache: dict[str, dict | None] = {}

    def data_of(exp: str):
        if exp not in cache:
            path = Path(results_dir) / exp / RESULTS_FILE
            cache[exp] = load_results(path) if path.is_file() else None
        return cache[exp]

    def replace(m: re.Match) -> str:
        exp, name = m.group(2), m.group(3)
        data = data_of(exp)
        if data is None:
            body = f"_Pending: no cell of `{exp}` has finished yet (`zebra experiment {exp}`)._"
        elif name == "status":
            body = status_line(data)
        else:
            found = tables(data)
            if name not in found:
                raise ValueError(f"docs: {exp} has no table {name!r}; it has {', '.join(found)}")
            body = found[name]
        return f"{m.group(1)}{body}\n{m.group(5)}"

    return MARKER.sub(replace, page)


def write_page(path: str | os.PathLike = "docs/results.md", results_dir: str | os.PathLike = "docs/results") -> Path:
    from ..io import write_text_atomic

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"docs: {path} does not exist")
    return write_text_atomic(path, fill(path.read_text(encoding="utf-8"), results_dir))
