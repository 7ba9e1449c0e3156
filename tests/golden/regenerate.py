"""Recompute the golden loss curve of the debug preset and write it next to this file.

    PYTHONPATH=src python tests/golden/regenerate.py

Run it only when a deliberate change alters the numbers (a new initialisation,
a different corpus or tokenizer), and say why in the commit. It trains exactly
what ``tests/train/test_train_zebra.py::test_debug_preset_golden_losses`` trains, on
one CPU thread, float32.
"""

from __future__ import annotations

import json
import platform
import sys
import tempfile
from pathlib import Path

import torch

HERE = Path(__file__).parent
GOLDEN = HERE / "pretrain_debug.json"

# Everything the run depends on; the test reads it from the JSON file.
CONFIG = {
    "model": {"preset": "debug"},
    "data": {"seq_len": 32},  # the default corpus (stdlib modules), split packing; window 16 < 32
    "optim": {"lr": 3e-3, "warmup_steps": 5},
    "train": {"steps": 50, "batch_size": 8, "seed": 0, "progress": False},
}


def run(output_dir: Path) -> list[float]:
    from zebra_llm.train import pretrain

    cfg = json.loads(json.dumps(CONFIG))
    cfg["train"]["output_dir"] = str(output_dir)
    torch.set_num_threads(1)
    return pretrain(cfg).losses


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        losses = run(Path(tmp) / "run")
    GOLDEN.write_text(json.dumps({
        "about": "pretraining losses of the debug preset, CPU float32, one thread; regenerate with "
                 "`PYTHONPATH=src python tests/golden/regenerate.py`",
        "config": CONFIG,
        "machine": f"{platform.machine()}, torch {torch.__version__}",
        "losses": losses,
    }, indent=2) + "\n")
    print(f"wrote {GOLDEN}: first {losses[0]:.4f}, last {losses[-1]:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
