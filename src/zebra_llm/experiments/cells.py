"""Resumable experiment cells and the ``results.json`` built from them.

A cell is one unit of work (a training run with its evaluation, a timing). A
finished cell is one JSON file ``<out>/cells/<name>.json`` holding its flat
result rows, written atomically (temp file + rename) only when the cell is
complete; a cell whose file exists is never recomputed. ``results.json`` is
rebuilt from all cell files after every cell: ``{"experiment", "config",
"cells": {name: status}, "rows": [...]}``, each row a flat record (one per run x
split x metric) that ``pandas.DataFrame(data["rows"])`` reads as is.

A cell's identity includes the experiment config it was computed under
(``config_hash``): rerunning with a different config refuses to mix results
instead of silently reusing cells computed under other settings.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..io import write_json_atomic

RESULTS_FILE = "results.json"
CELLS_DIR = "cells"


def config_hash(config: dict) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:12]


def log(message: str) -> None:
    """A progress line with a UTC time stamp, flushed at once (background runs log to a file)."""
    print(f"[{time.strftime('%H:%M:%S', time.gmtime())}] {message}", flush=True)


class CellStore:
    """The cells of one experiment under ``out_dir``."""

    def __init__(self, out_dir: str | os.PathLike, *, experiment: str, config: dict, planned: list[str]):
        self.out = Path(out_dir)
        self.experiment = experiment
        self.config = config
        self.hash = config_hash(config)
        self.planned = list(planned)
        (self.out / CELLS_DIR).mkdir(parents=True, exist_ok=True)

    def path(self, name: str) -> Path:
        return self.out / CELLS_DIR / f"{name}.json"

    def get(self, name: str) -> dict | None:
        """The finished cell ``name`` or None; a cell of another config is an error."""
        path = self.path(name)
        if not path.is_file():
            return None
        data = json.loads(path.read_text())
        if data.get("config_hash") != self.hash:
            raise ValueError(
                f"{path} was computed under another {self.experiment} config (hash {data.get('config_hash')}, "
                f"now {self.hash}); use another --out directory or delete {self.out / CELLS_DIR} to recompute"
            )
        return data

    def run(self, name: str, compute: Callable[[], dict[str, Any]]) -> dict:
        """The cell's saved result, or ``compute()``'s (``{"rows": [...], ...}``) saved atomically."""
        done = self.get(name)
        if done is not None:
            log(f"{self.experiment}: cell {name} already done ({len(done['rows'])} rows), skipped")
            return done
        log(f"{self.experiment}: cell {name} starting")
        t0, c0 = time.perf_counter(), time.process_time()
        result = compute()
        if "rows" not in result:
            raise ValueError(f"cell {name}: the result has no rows")
        # cpu_s (all threads of this process) / cores is what the cell would take on a quiet machine;
        # wall_s also counts the time other jobs held the cores.
        data = {"cell": name, "config_hash": self.hash, "wall_s": time.perf_counter() - t0,
                "cpu_s": time.process_time() - c0,
                "finished_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **result}
        for row in data["rows"]:
            row.setdefault("cell", name)
        write_json_atomic(self.path(name), data)
        log(f"{self.experiment}: cell {name} done in {data['wall_s']:.0f} s ({len(data['rows'])} rows)")
        self.write_results()
        return data

    def cells(self) -> dict[str, dict]:
        return {n: c for n in self.planned if (c := self.get(n)) is not None}

    def write_results(self) -> dict:
        """Rebuild ``results.json`` from the finished cells (atomically)."""
        done = self.cells()
        rows = [r for n in self.planned if n in done for r in done[n]["rows"]]
        data = {
            "experiment": self.experiment,
            "config": self.config,
            "config_hash": self.hash,
            "cells": {n: ("done" if n in done else "pending") for n in self.planned},
            "cell_wall_s": {n: round(done[n]["wall_s"], 1) for n in done},
            "cell_cpu_s": {n: round(done[n]["cpu_s"], 1) for n in done if "cpu_s" in done[n]},
            "versions": _versions(),
            "rows": rows,
        }
        write_json_atomic(self.out / RESULTS_FILE, data)
        return data


def _versions() -> dict:
    import platform

    import torch
    import transformers

    return {"python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "machine": platform.machine(),
            "torch_threads": torch.get_num_threads(), "argv": " ".join(sys.argv[:1])}


def load_results(path: str | os.PathLike) -> dict:
    """An experiment's ``results.json``; checks the shape the tables need."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"results: {path} does not exist")
    data = json.loads(path.read_text())
    if not isinstance(data, dict) or not isinstance(data.get("rows"), list) or "experiment" not in data:
        raise ValueError(f"results: {path} is not an experiment results file (needs 'experiment' and a 'rows' list)")
    return data


class RunClock:
    """Wall and CPU seconds of a training run over all its parts (a killed run resumes; each part adds its time),
    kept in ``<run_dir>/time.json``, rewritten at every step."""

    def __init__(self, run_dir: Path):
        self.path = run_dir / "time.json"
        saved = json.loads(self.path.read_text()) if self.path.is_file() else {}
        self.wall0, self.cpu0 = float(saved.get("wall_s", 0.0)), float(saved.get("cpu_s", 0.0))
        self.parts = int(saved.get("parts", 0)) + 1
        self.t, self.c = time.perf_counter(), time.process_time()

    def totals(self) -> dict:
        return {"wall_s": self.wall0 + time.perf_counter() - self.t, "cpu_s": self.cpu0 + time.process_time() - self.c,
                "parts": self.parts}

    def save(self) -> dict:
        out = self.totals()
        write_json_atomic(self.path, out)
        return out
