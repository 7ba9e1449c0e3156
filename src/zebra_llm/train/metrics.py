"""What a run reports: a progress bar (loss, tokens/s, ETA), one JSON line per
logged step in ``<output_dir>/metrics.jsonl``, and TensorBoard scalars under
``<output_dir>/tensorboard`` when the ``tensorboard`` package is installed.
Only the main process reports.

``metrics.jsonl`` is strict JSON: a non-finite number (the loss of a step that
went inf/nan) is written as ``null``, never as the ``NaN``/``Infinity`` tokens
that JSON parsers other than Python's reject. Messages (what was resumed, why
the run stopped) go to stderr with or without the progress bar."""

from __future__ import annotations

import json
import logging
import math
import sys
from pathlib import Path

from ..io import write_text_atomic

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.jsonl"


def _strict(record: dict) -> dict:
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()}


def dumps_record(record: dict) -> str:
    """One metrics line: strict JSON (non-finite numbers as null)."""
    return json.dumps(_strict(record), allow_nan=False)


def read_metrics(output_dir: str | Path) -> list[dict]:
    path = Path(output_dir) / METRICS_FILE
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def truncate_metrics(output_dir: str | Path, step: int) -> None:
    """Drop records after ``step`` (a resumed run rewrites the steps it repeats)."""
    path = Path(output_dir) / METRICS_FILE
    if path.is_file():
        kept = [r for r in read_metrics(output_dir) if r.get("step", 0) <= step]
        write_text_atomic(path, "".join(dumps_record(r) + "\n" for r in kept))


class Reporter:
    def __init__(self, output_dir: Path, *, total_steps: int, start_step: int, enabled: bool, progress: bool):
        self.enabled = enabled
        self._file = None
        self._bar = None
        self._tb = None
        if not enabled:
            return
        output_dir.mkdir(parents=True, exist_ok=True)
        self._file = open(output_dir / METRICS_FILE, "a", encoding="utf-8")
        if progress:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total_steps, initial=start_step, desc="train", unit="step", dynamic_ncols=True)
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # tensorboard is optional (pip install tensorboard)
            SummaryWriter = None
        if SummaryWriter is not None:
            self._tb = SummaryWriter(log_dir=str(output_dir / "tensorboard"), purge_step=start_step + 1)

    def step(self, record: dict, *, write: bool) -> None:
        if not self.enabled:
            return
        if write:
            self._file.write(dumps_record(record) + "\n")
            self._file.flush()
            if self._tb is not None:
                for key, value in record.items():
                    if key != "step" and isinstance(value, (int, float)) and math.isfinite(value):
                        self._tb.add_scalar(f"train/{key}", value, record["step"])
        if self._bar is not None:
            self._bar.set_postfix(
                loss=f"{record['loss']:.4f}", lr=f"{record['lr']:.2e}", tok_s=f"{record['tokens_per_s']:.0f}", refresh=False
            )  # format() of nan/inf is "nan"/"inf": fine on a bar
            self._bar.update(1)

    def message(self, text: str) -> None:
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.write(text, file=sys.stderr)
        else:
            print(text, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        if self._file is not None:
            self._file.close()
        if self._tb is not None:
            self._tb.close()
