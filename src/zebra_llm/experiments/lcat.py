"""Long Context Adaptation Training (Zebra paper section 4.1) of SmolLM2-135M at small scale.

SmolLM2-135M (Llama architecture, 30 layers, trained context 8192, RoPE base 100000)
is converted to Zebra (``convert_to_zebra``: group attention, the first layer of
every ``layer_group_size`` global, the others a ``window``-token sliding window,
RoPE base ``rope_theta``) and trained further on ``train_len``-token sequences of
the stdlib train split (``zebra_llm.train.lcat``). Perplexity (the first N tokens
of held-out test-split files, the same files at every length) at each of
``eval_lengths`` for: the original model; the original with DCA
(``pretraining_length`` 8192); the converted model before any training; the LCAT
model; the LCAT model with DCA on its global layers. Plus the training
tokens/s of the converted model against the same model all-global, timed side
by side.

Cells (each resumable, see :mod:`.cells`): ``speed``, ``ppl_<variant>_<length>``,
``train`` (the LCAT run itself resumes from its checkpoints every ``save_every``
steps).
"""

from __future__ import annotations

import gc
import json
import math
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..modeling.layout import DEFAULT_LAYOUT
from .cells import CellStore, log

VARIANTS = ("original", "original_dca", "converted", "lcat", "lcat_dca")


# Each experiment's config lists its own fields (they mirror its YAML under experiments/configs/); the
# ones the three share (source, steps, lr, seed, ...) have different defaults and meanings per experiment.
@dataclass
class LCATExperimentConfig:
    source: str = "smollm2"
    layer_group_size: int = DEFAULT_LAYOUT.layer_group_size
    window: int = DEFAULT_LAYOUT.window
    rope_theta: float | None = 400000.0  # None keeps the source's base
    train_len: int = 4096
    steps: int = 64
    batch_size: int = 1
    lr: float = 2.0e-5
    warmup_steps: int = 4
    save_every: int = 4
    eval_lengths: list[int] = field(default_factory=lambda: [2048, 4096, 8192, 16384])
    eval_docs: int = 2
    dca_pretraining_length: int = 8192
    speed_rounds: int = 2
    train_min_chars: int = 40000  # LCAT trains on long train-split files only
    max_files: int | None = None
    seed: int = 0
    device: str = "auto"
    precision: str = "auto"

    def __post_init__(self):
        if self.train_len <= self.window:
            raise ValueError(f"train_len ({self.train_len}) must exceed window ({self.window})")
        if not self.eval_lengths:
            raise ValueError("eval_lengths: give at least one length")


def cell_names(cfg: LCATExperimentConfig) -> list[str]:
    lengths = sorted(cfg.eval_lengths)
    short = [n for n in lengths if n <= cfg.train_len]
    long = [n for n in lengths if n > cfg.train_len]
    names = ["speed"]
    names += [f"ppl_{v}_{n}" for n in short for v in ("original", "original_dca", "converted")]
    names.append("train")
    names += [f"ppl_{v}_{n}" for n in short for v in ("lcat", "lcat_dca")]
    names += [f"ppl_{v}_{n}" for n in long for v in VARIANTS]
    return names


# ----------------------------------------------------------------------------- data


def eval_docs(cfg: LCATExperimentConfig, tokenizer):
    """The first ``eval_docs`` test-split files with at least max(eval_lengths) tokens (file-name order)."""
    from ..data import tokenize_documents
    from ..eval.corpus import TokenDocs
    from .corpus import split_corpus

    need = max(cfg.eval_lengths)
    corpus = split_corpus(max_files=cfg.max_files)
    long = sorted((d for d in corpus.test if len(d.text) >= need * 2), key=lambda d: d.name)
    ids = tokenize_documents(long, tokenizer)
    keep = [(d.name, t) for d, t in zip(long, ids) if len(t) >= need][: cfg.eval_docs]
    if not keep:
        raise ValueError(f"data: no test-split file has {need} tokens")
    return TokenDocs("stdlib test split", [k[0] for k in keep], [k[1] for k in keep])


def write_train_jsonl(cfg: LCATExperimentConfig, path: Path) -> Path:
    """The long train-split files as a JSONL corpus for ``zebra_llm.train.lcat`` (``data.source``)."""
    from ..io import write_text_atomic
    from .corpus import split_corpus

    if not path.is_file():
        corpus = split_corpus(max_files=cfg.max_files)
        docs = [d for d in corpus.train if len(d.text) >= cfg.train_min_chars]
        if not docs:
            raise ValueError(f"data: no train-split file has {cfg.train_min_chars} characters")
        write_text_atomic(path, "".join(json.dumps({"name": d.name, "text": d.text}) + "\n" for d in docs))
    return path


# ----------------------------------------------------------------------------- models


def rope_overrides(cfg: LCATExperimentConfig, config) -> dict:
    out = {"max_position_embeddings": max(int(config.max_position_embeddings), max(cfg.eval_lengths))}
    if cfg.rope_theta is not None:
        params = dict(config.rope_parameters or {})
        params["rope_theta"] = float(cfg.rope_theta)
        out["rope_parameters"] = params
    return out


def load_variant(cfg: LCATExperimentConfig, variant: str, runs_dir: Path):
    """``(model, tokenizer)`` of a variant, float32, eval mode."""
    from transformers import AutoModelForCausalLM

    from ..dca import apply_dca
    from ..loading import load_model
    from ..modeling import convert_to_zebra

    if variant.startswith("lcat"):
        final = runs_dir / "train" / "final"
        if not (final / "config.json").is_file():
            raise FileNotFoundError(f"LCAT model {final} is missing: the train cell has not finished")
        model = AutoModelForCausalLM.from_pretrained(final, dtype=torch.float32)
        tok = _tokenizer(cfg)
    else:
        model, tok = load_model(cfg.source, dtype=torch.float32)
        if variant == "converted":
            model = convert_to_zebra(model, attention="group", layer_group_size=cfg.layer_group_size,
                                     window=cfg.window, **rope_overrides(cfg, model.config))
    if variant.endswith("_dca"):
        apply_dca(model, pretraining_length=cfg.dca_pretraining_length)
    model.eval()
    return model, tok


def _tokenizer(cfg: LCATExperimentConfig):
    from ..train.models import load_tokenizer

    return load_tokenizer(cfg.source)


def ppl_cell(cfg: LCATExperimentConfig, variant: str, length: int, runs_dir: Path, cache: dict) -> dict:
    from ..eval.perplexity import fixed_segments, score_segments

    if cache.get("variant") != variant:
        cache.pop("model", None)
        gc.collect()
        cache["model"], cache["tok"] = load_variant(cfg, variant, runs_dir)
        cache["variant"] = variant
    model, tok = cache["model"], cache["tok"]
    if "docs" not in cache:
        cache["docs"] = eval_docs(cfg, tok)
    docs = cache["docs"]
    segs = fixed_segments(docs, length, max_docs=cfg.eval_docs, min_doc_length=max(cfg.eval_lengths))
    nll, tokens = 0.0, 0
    t0 = time.perf_counter()
    for seg, item in score_segments(model, docs, segs):
        nll += item["nll_sum"]
        tokens += item["tokens"]
    base, dca = variant.removesuffix("_dca"), variant.endswith("_dca")
    return {"rows": [{
        "experiment": "lcat_smollm2", "variant": variant, "model": base, "method": "dca" if dca else "none",
        "split": "test", "length": length, "metric": "ppl", "value": math.exp(nll / tokens), "tokens": tokens,
        "docs": len(segs), "doc_names": ",".join(s.name for s in segs), "eval_s": time.perf_counter() - t0,
        "beyond_trained_context": length > cfg.dca_pretraining_length,
    }]}


def train_cell(cfg: LCATExperimentConfig, runs_dir: Path) -> dict:
    from ..train import LCATConfig, lcat
    from ..train.metrics import read_metrics

    out = runs_dir / "train"
    data = write_train_jsonl(cfg, runs_dir / "train_docs.jsonl")
    tcfg = LCATConfig.from_dict({
        "model": {"source": cfg.source, "attention": "group", "layer_group_size": cfg.layer_group_size,
                  "window": cfg.window, "rope_theta": cfg.rope_theta,
                  "max_position_embeddings": max(8192, max(cfg.eval_lengths))},
        "data": {"source": str(data), "seq_len": cfg.train_len, "packing": "split"},
        "optim": {"lr": cfg.lr, "warmup_steps": cfg.warmup_steps, "min_lr_ratio": 0.1},
        "train": {"steps": cfg.steps, "batch_size": cfg.batch_size, "seed": cfg.seed, "output_dir": str(out),
                  "save_every": cfg.save_every, "keep_checkpoints": 1, "resume": True, "progress": False},
        "engine": {"device": cfg.device, "precision": cfg.precision},
    })

    def on_step(step, record):
        log(f"  lcat step {step}/{cfg.steps} loss {record['loss']:.4f} {record['tokens_per_s']:.0f} tok/s "
            f"({record['step_time_s']:.0f} s/step)")

    result = lcat(tcfg, callbacks=[on_step])
    if result.interrupted:
        raise KeyboardInterrupt(f"LCAT stopped at step {result.step}; rerun to resume")
    rows = []
    for r in read_metrics(out):
        rows.append({"experiment": "lcat_smollm2", "variant": "lcat", "split": "train", "metric": "loss",
                     "value": r["loss"], "step": r["step"], "tokens_seen": r["step"] * cfg.batch_size * cfg.train_len,
                     "tokens_per_s": r.get("tokens_per_s")})
    speeds = [r["tokens_per_s"] for r in rows if r["tokens_per_s"]]
    rows.append({"experiment": "lcat_smollm2", "variant": "lcat", "split": "efficiency",
                 "metric": "train_tokens_per_s", "value": statistics.median(speeds),
                 "note": "median over the LCAT run's steps (shared machine)"})
    return {"rows": rows, "final_dir": str(result.final_dir)}


def speed_cell(cfg: LCATExperimentConfig) -> dict:
    """Forward + backward tokens/s at ``train_len`` of the converted model, group vs all-global, interleaved."""
    from ..loading import load_model
    from ..modeling import convert_to_zebra

    src, _ = load_model(cfg.source, dtype=torch.float32)
    kw = rope_overrides(cfg, src.config)
    models = {
        "group": convert_to_zebra(src, attention="group", layer_group_size=cfg.layer_group_size,
                                  window=cfg.window, **kw),
        "global": convert_to_zebra(src, attention="global", window=cfg.window, **kw),
    }
    del src
    gc.collect()
    ids = torch.randint(0, models["group"].config.vocab_size, (1, cfg.train_len),
                        generator=torch.Generator().manual_seed(cfg.seed))
    times = {k: [] for k in models}

    def step(name):
        m = models[name]
        m.train()
        t = time.perf_counter()
        m(input_ids=ids, labels=ids, use_cache=False).loss.backward()
        dt = time.perf_counter() - t
        m.zero_grad(set_to_none=True)
        return dt

    for r in range(cfg.speed_rounds):
        for name in models:
            times[name].append(step(name))
            log(f"  speed round {r + 1}/{cfg.speed_rounds} {name}: {times[name][-1]:.1f} s")
    g = statistics.median(times["global"])
    rows = [{"experiment": "lcat_smollm2", "variant": "converted", "attention": name, "split": "speed",
             "metric": "train_tokens_per_s", "length": cfg.train_len, "value": cfg.train_len / statistics.median(t),
             "step_s": statistics.median(t), "speedup_vs_global": g / statistics.median(t), "rounds": cfg.speed_rounds,
             "note": "forward + backward, no optimizer step (identical for both)"}
            for name, t in times.items()]
    return {"rows": rows}


def run_lcat(cfg: LCATExperimentConfig, out, *, runs_dir="runs/lcat_smollm2", only=None) -> dict:
    from .config import as_dict

    out, runs_dir = Path(out), Path(runs_dir)
    store = CellStore(out, experiment="lcat_smollm2", config=as_dict(cfg), planned=cell_names(cfg))
    todo = [c for c in store.planned if store.get(c) is None and (not only or c in only)]
    log(f"lcat_smollm2: {len(store.planned) - len(todo)} of {len(store.planned)} cells done, {len(todo)} to run")
    cache: dict = {}
    for name in todo:
        if name == "speed":
            store.run(name, lambda: speed_cell(cfg))
        elif name == "train":
            cache.pop("model", None)
            cache.pop("variant", None)
            gc.collect()
            torch.manual_seed(cfg.seed)
            store.run(name, lambda: train_cell(cfg, runs_dir))
        else:
            _, rest = name.split("_", 1)
            variant, length = rest.rsplit("_", 1)
            store.run(name, lambda: ppl_cell(cfg, variant, int(length), runs_dir, cache))
    return store.write_results()


# ----------------------------------------------------------------------------- tables and figures


def lcat_tables(data: dict) -> dict[str, str]:
    from ..eval.plots import _length_label
    from .markdown import PENDING, fmt, markdown_table, value_where

    cfg, rows, cells = data["config"], data["rows"], data.get("cells", {})
    lengths = sorted(cfg["eval_lengths"])
    labels = {"original": "original (all global)", "original_dca": "original + DCA",
              "converted": "converted to Zebra, no training", "lcat": "after LCAT",
              "lcat_dca": "after LCAT + DCA on global layers"}
    body = []
    for v in VARIANTS:
        row = [labels[v]]
        for n in lengths:
            value = value_where(rows, variant=v, length=n, metric="ppl")
            row.append(fmt(value, ".2f", PENDING if cells.get(f"ppl_{v}_{n}") != "done" else "n/a"))
        body.append(row)
    out = {"ppl": markdown_table(["model"] + [_length_label(n) for n in lengths], body)}
    speed = [r for r in rows if r.get("split") == "speed"]
    sbody = [[f"`{r['attention']}`", fmt(r["value"], ".0f"), fmt(r["step_s"], ".1f"),
              fmt(r["speedup_vs_global"], ".2f")] for r in speed]
    if not sbody:
        sbody = [[PENDING] * 4]
    out["speed"] = markdown_table(["attention (converted SmolLM2)", f"train tok/s at {cfg['train_len']}", "s / step",
                           "x global"], sbody)
    losses = sorted((r for r in rows if r.get("split") == "train"), key=lambda r: r["step"])
    if losses:
        k = max(1, len(losses) // 8)
        picked = losses[::k] + ([losses[-1]] if (len(losses) - 1) % k else [])
        out["train_loss"] = markdown_table(["step", "tokens seen", "loss"],
                                   [[str(r["step"]), str(r["tokens_seen"]), fmt(r["value"], ".4f")] for r in picked])
    else:
        out["train_loss"] = "LCAT training: " + PENDING + "."
    return out


def lcat_figures(data: dict, out_dir) -> list[Path]:
    from ..eval.plots import _figure, _length_axis, _save

    rows, cfg = data["rows"], data["config"]
    fig, axes = _figure(9, 3.6, ncols=2)
    ax = axes[0][0]
    for v in VARIANTS:
        pts = sorted((r["length"], r["value"]) for r in rows if r.get("variant") == v and r.get("metric") == "ppl")
        if pts:
            xs, ys = zip(*pts)
            ax.plot(xs, ys, marker="o", label=v)
    ax.axvline(8192, color="grey", linestyle=":", linewidth=0.8)
    _length_axis(ax, sorted(cfg["eval_lengths"]))
    ax.set_yscale("log")
    ax.set_xlabel("tokens")
    ax.set_ylabel("perplexity (held-out stdlib files)")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)
    ax = axes[0][1]
    losses = sorted((r["step"], r["value"]) for r in rows if r.get("split") == "train")
    if losses:
        xs, ys = zip(*losses)
        ax.plot(xs, ys)
    ax.set_xlabel("LCAT step")
    ax.set_ylabel("training loss")
    return [_save(fig, Path(out_dir) / "lcat_ppl_and_loss.png")]
