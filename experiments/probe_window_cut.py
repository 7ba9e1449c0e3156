"""Probe before the per-position grid (issue 19.2): does a global model use context past a small window?

    python experiments/probe_window_cut.py LENGTH WINDOW STEPS HIDDEN STRATEGIES     # e.g. 512 32 128 128 global
    python experiments/probe_window_cut.py --model DIR LENGTH WINDOW    # a trained grid model, no training

Trains the strategy grid's model (``zebra_llm.experiments.strategies.model_config``) at LENGTH with a plain
AdamW loop on the grid's train split (its tokenizer), and every STEPS/4 steps scores the first LENGTH tokens of
48 test files: the loss by position bucket with full attention and, with the same weights, with attention cut
to WINDOW and 4 x WINDOW keys (``convert_to_zebra(model, attention="local")``). A model that uses context
past the cut loses there. Output: runs/probe/probe.jsonl and the log (the committed run:
docs/results/zebra_positions/probe_window_cut.log).
"""

from __future__ import annotations

import json
import math
import shutil
import sys
import time
from pathlib import Path

import torch

from zebra_llm.data.packing import pack_documents
from zebra_llm.experiments.position_loss import position_edges, position_nll
from zebra_llm.experiments.strategies import StrategyGridConfig, load_data, model_config
from zebra_llm.modeling import convert_to_zebra
from zebra_llm.train.models import build_from_config

OUT = Path("runs/probe")
TOKENS_PER_STEP, LR, WARMUP, DOCS = 4096, 2e-3, 25, 48


def lr_at(step: int, steps: int) -> float:
    """Linear warm-up, cosine decay to a tenth (the grid's schedule)."""
    return LR * min(1, step / WARMUP) * (0.1 + 0.45 * (1 + math.cos(math.pi * step / steps)))


def score(model, docs, n: int, w: int) -> dict:
    """Loss by position with full attention, and its change with attention cut to w and 4w keys."""
    full = position_nll(model, docs, n, position_edges(n, 8), max_docs=DOCS)
    cut = {}
    for keys in (w, 4 * w):
        local = convert_to_zebra(model, attention="local", window=keys)
        cut[keys] = [r["nll"] - a["nll"] for r, a in zip(position_nll(local, docs, n, position_edges(n, 8),
                                                                       max_docs=DOCS), full)]
    return {"res": full, "cut_minus_full": cut}


def train(strategy: str, cfg: StrategyGridConfig, n: int, w: int, steps: int, rows, docs) -> None:
    torch.manual_seed(0)
    model = build_from_config(model_config(cfg, strategy, n))
    print(strategy, model.config.layer_types, "params", sum(p.numel() for p in model.parameters()), flush=True)
    opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=0.1, betas=(0.9, 0.95))
    order = torch.randperm(len(rows), generator=torch.Generator().manual_seed(0))
    batch, c0 = TOKENS_PER_STEP // n, time.process_time()
    for step in range(1, steps + 1):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, steps)
        b = rows.collate(order[(step - 1) * batch : step * batch].tolist())
        model.train()
        loss = model(input_ids=b["input_ids"], labels=b["labels"], use_cache=False).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if step % max(1, steps // 4) == 0 or step == steps:
            found = score(model, docs, n, w)
            print(f"{strategy} step {step} loss {loss.item():.3f} cpu {time.process_time() - c0:.0f}s", flush=True)
            print("   full " + "  ".join(f"{r['lo'] + 1}-{r['hi']}:{r['nll']:.3f}±{r['se']:.3f}"
                                         for r in found["res"]), flush=True)
            for keys, delta in found["cut_minus_full"].items():
                print(f"   win{keys} " + "  ".join(f"{r['lo'] + 1}-{r['hi']}:{d:+.3f}"
                                                   for r, d in zip(found["res"], delta)), flush=True)
            with open(OUT / "probe.jsonl", "a") as f:
                f.write(json.dumps({"n": n, "w": w, "strategy": strategy, "step": step, "steps": steps,
                                    **found}) + "\n")


def score_trained(model_dir: str, n: int, w: int) -> None:
    """The window cut of a model trained elsewhere (a grid cell's ``final`` directory), on its grid's test split."""
    from zebra_llm.data import tokenize_documents
    from zebra_llm.experiments.corpus import load_bpe_tokenizer, split_corpus
    from zebra_llm.modeling import ZebraForCausalLM

    torch.set_num_threads(1)
    model = ZebraForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    tok = load_bpe_tokenizer(Path(model_dir) / "tokenizer.json")
    docs = [d for d in tokenize_documents(split_corpus().test, tok) if len(d) >= n]
    found = score(model, docs, n, w)
    print(f"{model_dir} at {n} tokens, {min(DOCS, len(docs))} test files", flush=True)
    print("   full " + "  ".join(f"{r['lo'] + 1}-{r['hi']}:{r['nll']:.3f}±{r['se']:.3f}" for r in found["res"]))
    for keys, delta in found["cut_minus_full"].items():
        print(f"   win{keys} " + "  ".join(f"{r['lo'] + 1}-{r['hi']}:{d:+.3f}" for r, d in zip(found["res"], delta)))
    OUT.mkdir(parents=True, exist_ok=True)
    with open(OUT / "probe.jsonl", "a") as f:
        f.write(json.dumps({"model": model_dir, "n": n, "w": w, **found}) + "\n")


def main(argv: list[str]) -> None:
    if argv[0] == "--model":
        return score_trained(argv[1], int(argv[2]), int(argv[3]))
    n, w, steps, hidden = (int(a) for a in argv[:4])
    OUT.mkdir(parents=True, exist_ok=True)
    if not (OUT / "tokenizer.json").is_file():
        shutil.copy("docs/results/zebra_strategies/tokenizer.json", OUT / "tokenizer.json")
    torch.set_num_threads(1)
    cfg = StrategyGridConfig(train_lengths=[n], window_divisor=n // w, model=dict(
        hidden_size=hidden, intermediate_size=3 * hidden, num_hidden_layers=4, num_attention_heads=4,
        num_key_value_heads=4, tie_word_embeddings=True))
    data = load_data(cfg, OUT)
    rows = pack_documents(data.train_ids, n, mode="concat", pad_id=data.tokenizer.pad_token_id)
    docs = [d for d in data.test.ids if len(d) >= n]
    print("train rows", len(rows), "test docs", len(docs), flush=True)
    for strategy in argv[4].split(","):
        train(strategy, cfg, n, w, steps, rows, docs)


if __name__ == "__main__":
    main(sys.argv[1:])
