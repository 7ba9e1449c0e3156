"""Dispatch ``zebra experiment NAME`` to its experiment: config, run, tables, figures."""

from __future__ import annotations

import os
from pathlib import Path

from . import EXPERIMENTS
from .cells import RESULTS_FILE, load_results

CONFIG_DIR = Path("experiments/configs")


def _spec(name: str):
    if name == "zebra_strategies":
        from . import strategies as mod

        return mod.StrategyGridConfig, mod.run_grid
    if name == "lcat_smollm2":
        from . import lcat as mod

        return mod.LCATExperimentConfig, mod.run_lcat
    if name == "lit":
        from . import lit as mod

        return mod.LITExperimentConfig, mod.run_lit
    if name == "recall":
        from . import recall as mod

        return mod.RecallGridConfig, mod.run_recall
    if name == "lcat_control":
        from . import lcat_control as mod

        return mod.LCATControlConfig, mod.run_lcat_control
    raise ValueError(f"experiment must be one of {', '.join(EXPERIMENTS)}, got {name!r}")


def resolve_config(name: str, config: str | os.PathLike | None, overrides: list[str] | dict):
    from .config import load_config

    cls, _ = _spec(name)
    if config is None:
        default = CONFIG_DIR / f"{name}_cpu.yaml"
        config = default if default.is_file() else None
    return load_config(cls, config, overrides)


def check_only(name: str, cfg, only) -> None:
    """Every ``--only`` name is a cell of the experiment's plan: an unknown one (a typo) would
    otherwise run nothing and exit 0 (issue 25, item 5)."""
    import importlib

    if not only:
        return
    module = {"zebra_strategies": "strategies", "lcat_smollm2": "lcat"}.get(name, name)
    planned = importlib.import_module(f"{__package__}.{module}").cell_names(cfg)
    unknown = [c for c in only if c not in planned]
    if unknown:
        shown = ", ".join(planned[:4]) + (f", ... ({len(planned)} in all)" if len(planned) > 4 else "")
        raise ValueError(f"--only: {unknown[0]!r} is not a cell of {name}; its cells are {shown}")


def run_experiment(name: str, *, config=None, out=None, runs_dir=None, overrides=(), only=None,
                   report_only: bool = False, figures: bool = True) -> tuple[str, list[Path]]:
    """Run the unfinished cells of experiment ``name`` (unless ``report_only``), then
    return its Markdown tables and the figures drawn beside ``results.json``. The config (``config``,
    ``overrides``) and ``only`` are checked also with ``report_only``, which computes nothing: a bad
    file or ``--set`` is an error there too, not silently ignored."""
    from .tables import experiment_report

    cls, run = _spec(name)
    out = Path(out or Path("docs/results") / name)
    cfg = resolve_config(name, config, list(overrides))
    check_only(name, cfg, only)
    if not report_only:
        run(cfg, out, runs_dir=Path(runs_dir or Path("runs") / name), only=only)
    data = load_results(out / RESULTS_FILE)
    return experiment_report(data, out_dir=out if figures else None)
