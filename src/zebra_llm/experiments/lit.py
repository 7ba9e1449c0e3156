"""Long Instruction Tuning (Zebra paper section 4.2) at small scale, on synthetic
long-document QA records built offline.

A record is a long document (a contiguous stretch of a stdlib source file) with
one fact inserted as a comment line (``# The access code of project heron is
48213.``) ``distance`` tokens before the end, and the question asked after the
document ("What is the access code of project heron? ..."); the response is the
number. Training records take their documents from train-split files, held-out
records from test-split files (:mod:`.corpus`), with other names and numbers.

The model is SmolLM2-135M-Instruct converted to Zebra (group attention, a short
``window`` so that most distances are only reachable through the global layers)
and tuned with ``zebra_llm.train.lit`` (loss on the response only), once with a
LoRA adapter and once in full. Accuracy: greedy decoding of ``max_new_tokens``
tokens, correct when the code appears in the output as a whole number (RULER's
string match; the models answer in a sentence that also names the project, whose
name holds a number, so "the first number is the code" would score right answers
wrong), per distance, before (the original model and the converted one) and after
each tuning.
"""

from __future__ import annotations

import gc
import json
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..modeling.layout import DEFAULT_LAYOUT, LayerSettingError, ZebraLayout
from .cells import CellStore, log

WORDS = ("heron", "basalt", "quill", "marigold", "tundra", "lantern", "cobalt", "juniper", "falcon", "saffron",
         "glacier", "orchid", "meadow", "granite", "willow", "ember", "harbor", "thistle", "canyon", "aurora",
         "pebble", "cedar", "monsoon", "violet", "walnut", "comet", "lagoon", "sparrow", "indigo", "maple")
QUESTION = "What is the access code of project {name}? Answer with the number only."
FACT = "# The access code of project {name} is {code}."


# (Fields listed per experiment, as in lcat.py and strategies.py: shared names, different defaults.)
@dataclass
class LITExperimentConfig:
    source: str = "smollm2"
    layer_group_size: int = DEFAULT_LAYOUT.layer_group_size
    window: int = 128  # shorter than Zebra's default, so most distances need the global layers
    doc_tokens: int = 1024
    distances: list[int] = field(default_factory=lambda: [64, 256, 512, 896])
    train_records: int = 96
    test_records_per_distance: int = 8
    steps: int = 48
    batch_size: int = 1
    lora_lr: float = 2.0e-4
    full_lr: float = 2.0e-5
    lora_r: int = 16
    max_new_tokens: int = 24  # room for a full-sentence answer ("The access code of project X is N.")
    max_files: int | None = None
    seed: int = 0
    device: str = "auto"

    def __post_init__(self):
        try:  # the layer settings' one check (ZebraLayout's), before any cell runs
            ZebraLayout(layer_group_size=self.layer_group_size, window=self.window)
        except LayerSettingError as e:
            raise ValueError(f"{e.field} {e.problem}") from None
        for d in self.distances:
            if not 0 < d < self.doc_tokens:
                raise ValueError(f"distances: {d} must be in (0, doc_tokens={self.doc_tokens})")


MODELS = ("original", "converted", "lora", "full")


def cell_names(cfg: LITExperimentConfig) -> list[str]:
    return ["eval_original", "eval_converted", "train_lora", "eval_lora", "train_full", "eval_full"]


# ----------------------------------------------------------------------------- records


def build_records(cfg: LITExperimentConfig, tokenizer, split: str, n: int, seed: int) -> list[dict]:
    """``n`` QA records from long ``split`` files, distances cycling through ``cfg.distances``."""
    from ..data import tokenize_documents
    from .corpus import split_corpus

    corpus = split_corpus(max_files=cfg.max_files)
    docs = [d for d in getattr(corpus, split) if len(d.text) >= cfg.doc_tokens * 5]
    if not docs:
        raise ValueError(f"data: no {split}-split file is long enough for {cfg.doc_tokens}-token documents")
    ids = tokenize_documents(docs, tokenizer, add_bos=False)
    pool = [(d, t) for d, t in zip(docs, ids) if len(t) > cfg.doc_tokens + 8]
    rng = random.Random(seed)
    out = []
    for i in range(n):
        distance = cfg.distances[i % len(cfg.distances)]
        doc, t = pool[rng.randrange(len(pool))]
        start = rng.randrange(len(t) - cfg.doc_tokens)
        before = tokenizer.decode(t[start : start + cfg.doc_tokens - distance].tolist())
        after = tokenizer.decode(t[start + cfg.doc_tokens - distance : start + cfg.doc_tokens].tolist())
        name = f"{rng.choice(WORDS)}-{rng.randrange(100, 1000)}"
        code = str(rng.randrange(10000, 100000))
        document = before.rstrip("\n") + "\n" + FACT.format(name=name, code=code) + "\n" + after.lstrip("\n")
        out.append({"prompt": document + "\n\n" + QUESTION.format(name=name), "response": code,
                    "distance": distance, "source_file": doc.name, "answer": code})
    return out


def records(cfg: LITExperimentConfig, tokenizer, runs_dir: Path) -> tuple[Path, list[dict]]:
    """The training JSONL (written once) and the held-out records."""
    from ..io import write_text_atomic

    train_path = runs_dir / "train.jsonl"
    if not train_path.is_file():
        train = build_records(cfg, tokenizer, "train", cfg.train_records, cfg.seed)
        write_text_atomic(train_path, "".join(json.dumps({"prompt": r["prompt"], "response": r["response"]}) + "\n"
                                              for r in train))
    test = build_records(cfg, tokenizer, "test", cfg.test_records_per_distance * len(cfg.distances), cfg.seed + 1)
    return train_path, test


# ----------------------------------------------------------------------------- models


def converted_dir(cfg: LITExperimentConfig, runs_dir: Path) -> Path:
    """The Zebra model LIT starts from: ``source`` converted with ``layer_group_size`` and ``window``, or
    ``source`` itself when it is a Zebra model already (an LCAT result), whose settings must then match."""
    from ..loading import load_config
    from ..modeling.convert import convert_checkpoint

    source = load_config(cfg.source)
    if source.model_type == "zebra":
        have = {"layer_group_size": source.layer_group_size, "window": source.window}
        want = {"layer_group_size": cfg.layer_group_size, "window": cfg.window}
        if have != want or source.attention != "group":
            raise ValueError(
                f"source {cfg.source} is a Zebra model with attention={source.attention!r}, {have}; LIT keeps "
                f"its layout, so set layer_group_size and window to match (the config asks for {want})"
            )
        return Path(cfg.source)
    path = runs_dir / "converted"
    if not (path / "config.json").is_file():
        convert_checkpoint(cfg.source, path, attention="group", layer_group_size=cfg.layer_group_size,
                           window=cfg.window)
    return path


def load(cfg: LITExperimentConfig, which: str, runs_dir: Path):
    from ..loading import load_model

    if which == "original":
        return load_model(cfg.source, dtype=torch.float32)
    if which == "converted":
        return load_model(str(converted_dir(cfg, runs_dir)), dtype=torch.float32)
    final = runs_dir / which / "final"
    if not (final / "config.json").is_file():
        raise FileNotFoundError(f"{final} is missing: the train_{which} cell has not finished")
    return load_model(str(final), dtype=torch.float32)


@torch.no_grad()
def accuracy_rows(cfg: LITExperimentConfig, which: str, runs_dir: Path) -> dict:
    from ..data.instructions import has_chat_template
    from ..eval.retrieval import number_in_answer

    model, tok = load(cfg, which, runs_dir)
    model.eval()
    _, test = records(cfg, tok, runs_dir)
    per: dict[int, list[int]] = {}
    t0 = time.perf_counter()
    for k, rec in enumerate(test):
        messages = [{"role": "user", "content": rec["prompt"]}]
        if has_chat_template(tok):
            text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            ids = tok(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
        else:
            ids = tok("user: " + rec["prompt"] + "\n\nassistant: ", return_tensors="pt")["input_ids"]
        out = model.generate(ids, max_new_tokens=cfg.max_new_tokens, do_sample=False,
                             pad_token_id=tok.pad_token_id or tok.eos_token_id)
        answer = tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
        ok = number_in_answer(answer, rec["answer"])
        per.setdefault(rec["distance"], []).append(int(ok))
        if (k + 1) % 8 == 0:
            log(f"  eval {which}: {k + 1}/{len(test)} records")
    rows = [{"experiment": "lit", "model": which, "split": "test", "distance": d, "metric": "accuracy",
             "value": sum(v) / len(v), "correct": sum(v), "records": len(v), "prompt_tokens": cfg.doc_tokens}
            for d, v in sorted(per.items())]
    total = [x for v in per.values() for x in v]
    rows.append({"experiment": "lit", "model": which, "split": "test", "distance": "all", "metric": "accuracy",
                 "value": sum(total) / len(total), "correct": sum(total), "records": len(total),
                 "eval_s": time.perf_counter() - t0})
    del model
    gc.collect()
    return {"rows": rows}


def train_cell(cfg: LITExperimentConfig, which: str, runs_dir: Path) -> dict:
    from ..train import LITConfig, lit
    from ..train.metrics import read_metrics
    from ..train.models import load_tokenizer

    base = converted_dir(cfg, runs_dir)
    train_path, _ = records(cfg, load_tokenizer(str(base)), runs_dir)
    out = runs_dir / which
    lora = which == "lora"
    tcfg = LITConfig.from_dict({
        "model": {"source": str(base), "lora": {"enabled": lora, "r": cfg.lora_r, "alpha": 2 * cfg.lora_r}},
        "data": {"path": str(train_path), "seq_len": cfg.doc_tokens + 128, "overflow": "truncate"},
        "optim": {"lr": cfg.lora_lr if lora else cfg.full_lr, "warmup_steps": max(1, cfg.steps // 10),
                  "weight_decay": 0.0},
        "train": {"steps": cfg.steps, "batch_size": cfg.batch_size, "seed": cfg.seed, "output_dir": str(out),
                  "save_every": max(1, cfg.steps // 6), "keep_checkpoints": 1, "resume": True, "progress": False},
        "engine": {"device": cfg.device},
    })

    def on_step(step, record):
        if step % 4 == 0 or step == cfg.steps:
            log(f"  lit {which} step {step}/{cfg.steps} loss {record['loss']:.4f} {record['tokens_per_s']:.0f} tok/s")

    result = lit(tcfg, callbacks=[on_step])
    if result.interrupted:
        raise KeyboardInterrupt(f"LIT {which} stopped at step {result.step}; rerun to resume")
    rows = [{"experiment": "lit", "model": which, "split": "train", "metric": "loss", "value": r["loss"],
             "step": r["step"]} for r in read_metrics(out)]
    return {"rows": rows}


def run_lit(cfg: LITExperimentConfig, out, *, runs_dir="runs/lit", only=None) -> dict:
    from .config import as_dict

    out, runs_dir = Path(out), Path(runs_dir)
    runs_dir.mkdir(parents=True, exist_ok=True)
    store = CellStore(out, experiment="lit", config=as_dict(cfg), planned=cell_names(cfg))
    todo = [c for c in store.planned if store.get(c) is None and (not only or c in only)]
    log(f"lit: {len(store.planned) - len(todo)} of {len(store.planned)} cells done, {len(todo)} to run")
    for name in todo:
        kind, which = name.split("_", 1)
        torch.manual_seed(cfg.seed)
        if kind == "eval":
            store.run(name, lambda: accuracy_rows(cfg, which, runs_dir))
        else:
            store.run(name, lambda: train_cell(cfg, which, runs_dir))
    return store.write_results()


# ----------------------------------------------------------------------------- tables and figures


def lit_tables(data: dict) -> dict[str, str]:
    from .markdown import PENDING, markdown_table

    cfg, rows, cells = data["config"], data["rows"], data.get("cells", {})
    labels = {"original": f"`{cfg['source']}` (original)", "converted": "converted to Zebra, before LIT",
              "lora": "after LIT, LoRA", "full": "after LIT, full fine-tuning"}
    cols = list(cfg["distances"]) + ["all"]
    body = []
    for m in MODELS:
        row = [labels[m]]
        for d in cols:
            r = next((r for r in rows if r.get("model") == m and r.get("distance") == d
                      and r.get("metric") == "accuracy"), None)
            if r is None:
                row.append(PENDING if cells.get(f"eval_{m}") != "done" else "n/a")
            else:
                row.append(f"{100 * r['value']:.0f}% ({r['correct']}/{r['records']})")
        body.append(row)
    header = ["model"] + [f"distance {d}" if d != "all" else "all" for d in cols]
    return {"accuracy": markdown_table(header, body)}


def lit_figures(data: dict, out_dir) -> list[Path]:
    from ..eval.plots import _figure, _save

    rows = data["rows"]
    fig, axes = _figure(9, 3.4, ncols=2)
    ax = axes[0][0]
    for m in MODELS:
        pts = sorted((r["distance"], r["value"]) for r in rows if r.get("model") == m
                     and r.get("metric") == "accuracy" and r.get("distance") != "all")
        if pts:
            xs, ys = zip(*pts)
            ax.plot(xs, ys, marker="o", label=m)
    ax.axvline(data["config"]["window"], color="grey", linestyle=":", linewidth=0.8)
    ax.set_xlabel("distance of the fact from the question (tokens)")
    ax.set_ylabel("accuracy")
    ax.set_ylim(-0.05, 1.05)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)
    ax = axes[0][1]
    for m in ("lora", "full"):
        pts = sorted((r["step"], r["value"]) for r in rows if r.get("model") == m and r.get("split") == "train")
        if pts:
            xs, ys = zip(*pts)
            ax.plot(xs, ys, label=m)
    ax.set_xlabel("LIT step")
    ax.set_ylabel("training loss (response tokens)")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)
    return [_save(fig, Path(out_dir) / "lit_accuracy.png")]
