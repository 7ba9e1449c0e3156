"""Tiny models and configs shared by the training tests."""

from __future__ import annotations

import copy
import json
from pathlib import Path

# A random Llama small enough to train on CPU in a fraction of a second per
# step; its vocabulary fits the SmolLM2 tokenizer that every test uses.
TINY_LLAMA = {
    "model_type": "llama",
    "vocab_size": 49152,
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 1024,
    "tie_word_embeddings": True,
}


def write_tiny_llama_config(directory: Path, **overrides) -> Path:
    path = Path(directory) / "tiny_llama.json"
    path.write_text(json.dumps({**TINY_LLAMA, **overrides}))
    return path


def tiny_pretrain_config(model_config: Path, output_dir: Path, **sections) -> dict:
    """A pretraining config dict: the tiny Llama on the first stdlib document."""
    cfg = {
        "model": {"config": str(model_config)},
        "data": {"limit": 1, "seq_len": 32},
        "optim": {"lr": 1e-2, "warmup_steps": 2},
        "train": {"steps": 4, "batch_size": 4, "output_dir": str(output_dir), "progress": False},
    }
    cfg = copy.deepcopy(cfg)
    for section, values in sections.items():
        cfg.setdefault(section, {}).update(values)
    return cfg


def losses_of(output_dir: Path) -> list[float]:
    lines = (Path(output_dir) / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line)["loss"] for line in lines if line.strip()]


