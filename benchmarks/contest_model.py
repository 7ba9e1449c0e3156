"""Build the small model of the extension contest: a byte-level BPE tokenizer and a 4-layer Llama trained
at 256 tokens on the default stdlib corpus with the project's own trainer (``zebra train pretrain``).

    PYTHONPATH=$PWD/src python benchmarks/contest_model.py            # tokenizer, then the training run
    PYTHONPATH=$PWD/src python benchmarks/contest_model.py --describe # only the committed JSON

Why a tokenizer of its own: with SmolLM2's 49152-token vocabulary the output layer is ~90% of the compute
of a 128-wide model, and the whole run has ~10 minutes of two shared CPU cores. A 4096-token byte-level BPE,
trained on the same corpus the model is trained on (never on the held-out evaluation files), makes each
step several times cheaper. The tokenizer is a transformers ``PreTrainedTokenizerFast`` directory, so the
trainer and every evaluation load it like any other.

The checkpoint goes to ``runs/contest-llama-256`` (git-ignored); ``docs/results/extensions/contest/model.json``
records the command, the config, the tokens seen and the final loss.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TOKENIZER_DIR = ROOT / "runs" / "contest-tokenizer"
RUN_DIR = ROOT / "runs" / "contest-llama-256"
MODEL_CONFIG = ROOT / "benchmarks" / "configs" / "contest_llama.json"
DESCRIPTION = ROOT / "docs" / "results" / "extensions" / "contest" / "model.json"
VOCAB = 4096
SEQ_LEN = 256
TRAIN_ARGS = ["--seq-len", str(SEQ_LEN), "--packing", "concat", "--batch-size", "8",
              "--set", "optim.lr=3e-3", "--set", "optim.warmup_steps=20", "--set", "train.save_every=50"]


def build_tokenizer(out: Path = TOKENIZER_DIR, vocab_size: int = VOCAB) -> Path:
    """A byte-level BPE on the training corpus (zebra_llm.data's default stdlib corpus)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from zebra_llm.data.sources import stdlib_corpus

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([d.text for d in stdlib_corpus()], trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>",
                                   pad_token="<|endoftext|>")
    out.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(out)
    # zebra_llm.loading takes a directory with a config.json as a model spec; the tokenizer travels with the
    # config of the model it is for (the trainer copies it into every checkpoint).
    (out / "config.json").write_text(MODEL_CONFIG.read_text())
    return out


def train_command(steps: int) -> list[str]:
    return [sys.executable, "-m", "zebra_llm", "train", "pretrain", "--model-config", str(MODEL_CONFIG.relative_to(ROOT)),
            "--tokenizer", str(TOKENIZER_DIR.relative_to(ROOT)), "--steps", str(steps), *TRAIN_ARGS,
            "-o", str(RUN_DIR.relative_to(ROOT))]


def describe(steps: int) -> dict:
    """What the committed JSON says: the command, the config, the per-step losses summarised."""
    lines = [json.loads(x) for x in (RUN_DIR / "metrics.jsonl").read_text().splitlines() if x.strip()]
    last = lines[-20:]
    info = {
        "what": "the small model of the extension contest (benchmarks/extensions_contest.py)",
        "command": "PYTHONPATH=$PWD/src python benchmarks/contest_model.py --steps " + str(steps),
        "train_command": " ".join(["python"] + train_command(steps)[1:]),
        "model_config": json.loads(MODEL_CONFIG.read_text()),
        "tokenizer": f"byte-level BPE, vocabulary {VOCAB}, trained on the default stdlib corpus",
        "corpus": "zebra_llm.data default stdlib corpus (STDLIB_MODULES + pydoc topics)",
        "seq_len": SEQ_LEN,
        "steps": lines[-1]["step"],
        "tokens_seen": sum(x["tokens"] for x in lines),
        "first_loss": lines[0]["loss"],
        "final_loss": lines[-1]["loss"],
        "final_loss_mean_last_20_steps": sum(x["loss"] for x in last) / len(last),
        "train_seconds": lines[-1]["elapsed_s"],
        "checkpoint": str(RUN_DIR.relative_to(ROOT) / "final") + " (git-ignored; rebuild with the command)",
    }
    return info


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--describe", action="store_true", help="only write the JSON from a finished run")
    args = p.parse_args(argv)
    if not args.describe:
        build_tokenizer()
        env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
        subprocess.run(train_command(args.steps), cwd=ROOT, env=env, check=True)
        # the trainer saves a config-only tokenizer directory's weights but not its tokenizer files
        for name in ("tokenizer.json", "tokenizer_config.json"):
            shutil.copyfile(TOKENIZER_DIR / name, RUN_DIR / "final" / name)
    from zebra_llm.io import write_json_atomic

    DESCRIPTION.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(DESCRIPTION, describe(args.steps))
    print(DESCRIPTION)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
