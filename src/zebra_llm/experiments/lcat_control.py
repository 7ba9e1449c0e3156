"""LCAT end to end at small scale, with its control (issue 19, item 3).

The Zebra paper's long context adaptation training (section 4.1) converts a pretrained all-global model to
group attention and trains it further on longer sequences. The claim it needs a control for: that the
converted model keeps its short-context quality and gains on long inputs *as an all-global model trained
the same way would*, while training faster. Here:

1. ``pretrain``: a small all-global model pretrained at ``pretrain_len`` tokens: the ``global`` cell of a
   strategy grid (:mod:`.strategies`, config ``grid_config``, seed ``seed``), trained in (or resumed from,
   or reused from) ``pretrain_run_dir``: the grid's own run directory by default, so the grid's cell and
   this one are the same model;
2. ``adapt_group``: that model converted with ``convert_to_zebra`` (group attention, ``layer_group_size``,
   ``window``, RoPE base ``rope_theta``) and trained ``steps`` steps on ``adapt_len = factor x
   pretrain_len`` token rows of the grid's train split;
3. ``adapt_global`` (the control): the same pretrained model with the same RoPE base, all layers global,
   trained on the same rows in the same order from the same seed;
4. ``eval_pretrained`` / ``eval_pretrained_dca`` / ``eval_converted``: the pretrained model as is, with DCA
   (``pretraining_length = pretrain_len``), and converted before any training;
5. ``speed``: a training step of the two arms at ``adapt_len`` timed side by side, with their FLOPs
   (``zebra_llm.flops``).

Every evaluation scores the same test documents (the first ``eval_docs`` test files with at least
``adapt_len`` tokens): their first ``pretrain_len`` tokens (short-context perplexity) and their first
``adapt_len`` tokens (long-context perplexity and loss by position bucket, :mod:`.position_loss`).
Cells are resumable (training resumes from checkpoints; ``wall_s`` / ``cpu_s`` add up every part).
"""

from __future__ import annotations

import dataclasses
import json
import math
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from .cells import CellStore, RunClock, log

EXPERIMENT = "lcat_control"
VARIANTS = ("pretrained", "pretrained_dca", "converted", "adapt_group", "adapt_global")
LABELS = {"pretrained": "pretrained (all global, before LCAT)", "pretrained_dca": "pretrained + DCA",
          "converted": "converted to group, no training", "adapt_group": "LCAT: group attention, trained long",
          "adapt_global": "control: all global, trained long"}


@dataclass
class LCATControlConfig:
    """See ``experiments/configs/lcat_control_*.yaml`` for the sizes and why."""

    grid_config: str = "experiments/configs/zebra_positions_cpu.yaml"  # the strategy grid of the pretrained model
    grid_out: str = "docs/results/zebra_positions"  # its results directory (its tokenizer.json is reused)
    pretrain_len: int = 1024  # one of the grid's training lengths
    pretrain_run_dir: str | None = "runs/zebra_positions/1024_global_seed0"  # None: <runs_dir>/pretrain
    seed: int = 0
    factor: int = 4  # adapt_len = factor x pretrain_len
    layer_group_size: int = 2
    window: int = 64
    rope_theta: float | None = 40000.0  # both arms; None keeps the pretrained base
    steps: int = 64
    tokens_per_step: int = 8192
    lr: float = 1.0e-3
    warmup_steps: int = 8
    save_every: int = 8
    eval_docs: int = 32
    position_first: int = 16
    speed_rounds: int = 3
    device: str = "auto"
    precision: str = "auto"

    def __post_init__(self):
        if self.factor < 2:
            raise ValueError(f"factor must be >= 2 (LCAT trains longer than pretraining), got {self.factor}")
        if self.tokens_per_step % self.adapt_len:
            raise ValueError(f"tokens_per_step ({self.tokens_per_step}) must be a multiple of adapt_len "
                             f"({self.adapt_len} = factor x pretrain_len)")
        if not 2 <= self.window < self.adapt_len:
            raise ValueError(f"window must be between 2 and adapt_len ({self.adapt_len}), got {self.window}")
        if self.layer_group_size < 2:
            raise ValueError(f"layer_group_size must be >= 2, got {self.layer_group_size}")
        if self.steps < 1 or self.save_every < 1:
            raise ValueError("steps and save_every must be >= 1")

    @property
    def adapt_len(self) -> int:
        return self.factor * self.pretrain_len


def cell_names(cfg: LCATControlConfig) -> list[str]:
    return ["pretrain", "eval_pretrained", "eval_pretrained_dca", "eval_converted", "adapt_group",
            "adapt_global", "speed"]


def grid_cfg(cfg: LCATControlConfig):
    from .config import load_config
    from .strategies import StrategyGridConfig

    g = load_config(StrategyGridConfig, cfg.grid_config)
    if cfg.pretrain_len not in g.train_lengths:
        raise ValueError(f"pretrain_len: {cfg.pretrain_len} is not a training length of {cfg.grid_config} "
                         f"({g.train_lengths})")
    return g


def stored_config(cfg: LCATControlConfig) -> dict:
    """The config kept with the cells: this experiment's and the grid's (so a changed grid is a new hash)."""
    from .config import as_dict
    from .strategies import grid_config_dict

    return {**as_dict(cfg), "grid": grid_config_dict(grid_cfg(cfg))}


# ----------------------------------------------------------------------------- models and data


def load_grid_data(cfg: LCATControlConfig):
    from .strategies import load_data

    return load_data(grid_cfg(cfg), Path(cfg.grid_out))


def eval_docs(cfg: LCATControlConfig, data) -> list[torch.Tensor]:
    long = [d for d in data.test.ids if len(d) >= cfg.adapt_len][: cfg.eval_docs]
    if not long:
        raise ValueError(f"data: no test document has {cfg.adapt_len} tokens")
    return long


def pretrained_dir(cfg: LCATControlConfig, store: CellStore) -> Path:
    cell = store.get("pretrain")
    if cell is None:
        raise FileNotFoundError("lcat_control: the pretrain cell has not finished")
    final = Path(cell["final_dir"])
    if not (final / "config.json").is_file():
        raise FileNotFoundError(f"lcat_control: the pretrained model {final} is missing (runs/ is not kept); "
                                "delete cells/pretrain.json to retrain it")
    return final


def arm_model(cfg: LCATControlConfig, pretrained, attention: str):
    """The pretrained model converted for an LCAT arm (its weights cloned)."""
    from ..modeling import convert_to_zebra

    kw = {"max_position_embeddings": max(cfg.adapt_len, int(pretrained.config.max_position_embeddings))}
    if cfg.rope_theta is not None:
        kw["rope_parameters"] = {**dict(pretrained.config.rope_parameters or {}), "rope_theta": float(cfg.rope_theta)}
    if attention == "group":
        return convert_to_zebra(pretrained, attention="group", layer_group_size=cfg.layer_group_size,
                                window=cfg.window, **kw)
    return convert_to_zebra(pretrained, attention="global", window=cfg.window, **kw)


def load_pretrained(final: Path):
    from ..modeling import ZebraForCausalLM

    return ZebraForCausalLM.from_pretrained(final, dtype=torch.float32).eval()


def eval_rows(cfg: LCATControlConfig, model, docs, variant: str) -> list[dict]:
    """Short- and long-context perplexity and the loss by position at ``adapt_len`` of one model."""
    from .position_loss import position_rows

    base = {"experiment": EXPERIMENT, "variant": variant, "model": variant.removesuffix("_dca"),
            "method": "dca" if variant.endswith("_dca") else "none"}
    rows = []
    for length, what in ((cfg.pretrain_len, "short"), (cfg.adapt_len, "long")):
        pos = position_rows(model, docs, length, base, first=cfg.position_first)
        tokens = sum(r["tokens"] for r in pos)
        nll = sum(r["value"] * r["tokens"] for r in pos) / tokens
        rows.append({**base, "split": "test", "metric": "ppl", "context": what, "length": length,
                     "value": math.exp(nll), "nll": nll, "tokens": tokens, "docs": pos[0]["docs"]})
        if what == "long":
            rows += pos
    return rows


# ----------------------------------------------------------------------------- cells


def pretrain_cell(cfg: LCATControlConfig, data, runs_dir: Path) -> dict:
    """The grid's global cell at ``pretrain_len`` (trained, resumed or reused in ``pretrain_run_dir``)."""
    from .strategies import train_run

    g = grid_cfg(cfg)
    run_dir = Path(cfg.pretrain_run_dir) if cfg.pretrain_run_dir else runs_dir / "pretrain"
    torch.manual_seed(cfg.seed)
    result = train_run(g, "global", cfg.pretrain_len, data, run_dir, cfg.seed)
    for r in result["rows"]:
        r["experiment"], r["variant"] = EXPERIMENT, "pretrain_run"  # the grid cell's own rows
    return result


def eval_cell(cfg: LCATControlConfig, store: CellStore, data, variant: str) -> dict:
    from ..dca import apply_dca

    model = load_pretrained(pretrained_dir(cfg, store))
    if variant == "converted":
        model = arm_model(cfg, model, "group").eval()
    if variant == "pretrained_dca":
        apply_dca(model, pretraining_length=cfg.pretrain_len)
    return {"rows": eval_rows(cfg, model, eval_docs(cfg, data), variant)}


def _adapt_train_cfg(cfg: LCATControlConfig, run_dir: Path):
    from .strategies import _train_cfg

    g = dataclasses.replace(grid_cfg(cfg), train_lengths=[cfg.adapt_len], tokens_per_step=cfg.tokens_per_step,
                            steps=cfg.steps, lr=cfg.lr, warmup_steps=cfg.warmup_steps, eval_every=cfg.save_every,
                            device=cfg.device, precision=cfg.precision)
    return _train_cfg(g, cfg.adapt_len, run_dir, cfg.seed)


def adapt_cell(cfg: LCATControlConfig, store: CellStore, data, attention: str, runs_dir: Path) -> dict:
    """One LCAT arm: the pretrained model (converted for ``attention``) trained at ``adapt_len``."""
    from ..data.packing import pack_documents
    from ..flops import training_flops
    from ..train.batches import Stage
    from ..train.metrics import read_metrics
    from ..train.runner import run_training

    variant = f"adapt_{attention}"
    run_dir = runs_dir / variant
    run_dir.mkdir(parents=True, exist_ok=True)
    clock = RunClock(run_dir)
    pretrained = load_pretrained(pretrained_dir(cfg, store))
    tcfg = _adapt_train_cfg(cfg, run_dir)
    holder = {}

    def build_model(tok):
        holder["model"] = arm_model(cfg, pretrained, attention)
        return holder["model"]

    def on_step(step: int, record: dict) -> None:
        clock.save()
        if step % cfg.save_every == 0 or step == cfg.steps:
            log(f"  {variant} step {step}/{cfg.steps} loss {record['loss']:.3f} {record['tokens_per_s']:.0f} tok/s")

    pad = data.tokenizer.pad_token_id
    result = run_training(
        tcfg, build_tokenizer=lambda: data.tokenizer,
        build_stages=lambda tok, env: [Stage(0, pack_documents(data.train_ids, cfg.adapt_len, mode="concat",
                                                                pad_id=pad), cfg.adapt_len)],
        build_model=build_model, callbacks=[on_step])
    if result.interrupted:
        raise KeyboardInterrupt(f"{variant} stopped at step {result.step}; rerun to resume")
    model = result.model.eval()
    batch = cfg.tokens_per_step // cfg.adapt_len
    flops = training_flops(model.config, cfg.adapt_len, batch_size=batch)
    base = {"experiment": EXPERIMENT, "variant": variant, "model": variant, "method": "none"}
    rows = [{**base, "split": "train", "metric": "loss", "value": r["loss"], "step": r["step"],
             "tokens_seen": r["step"] * cfg.tokens_per_step, "tflops": r["step"] * flops / 1e12}
            for r in read_metrics(run_dir)]
    speeds = [r["tokens_per_s"] for r in read_metrics(run_dir) if "tokens_per_s" in r]
    rows.append({**base, "split": "efficiency", "metric": "train_tokens_per_s", "value": statistics.median(speeds),
                 "note": "median over the run's steps (machine shared; the speed cell has the side-by-side ratio)"})
    rows.append({**base, "split": "efficiency", "metric": "train_tflops_total", "value": cfg.steps * flops / 1e12})
    rows.append({**base, "split": "efficiency", "metric": "train_tokens", "value": cfg.steps * cfg.tokens_per_step})
    rows += eval_rows(cfg, model, eval_docs(cfg, data), variant)
    times = clock.save()
    rows.append({**base, "split": "efficiency", "metric": "cell_cpu_s", "value": times["cpu_s"]})
    return {"rows": rows, "run_dir": str(run_dir), "final_dir": str(result.final_dir), **times}


def speed_cell(cfg: LCATControlConfig, store: CellStore) -> dict:
    """A training step (forward, backward, AdamW) of both arms at ``adapt_len``, timed in interleaved rounds."""
    from ..flops import training_flops

    pretrained = load_pretrained(pretrained_dir(cfg, store))
    batch = cfg.tokens_per_step // cfg.adapt_len
    ids = torch.randint(3, pretrained.config.vocab_size, (batch, cfg.adapt_len),
                        generator=torch.Generator().manual_seed(cfg.seed))
    arms = {}
    for attention in ("group", "global"):
        m = arm_model(cfg, pretrained, attention).train()
        arms[attention] = (m, torch.optim.AdamW(m.parameters(), lr=1e-5))
    times: dict[str, list[float]] = {a: [] for a in arms}

    def step(a: str) -> float:
        m, opt = arms[a]
        t = time.perf_counter()
        m(input_ids=ids, labels=ids, use_cache=False).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return time.perf_counter() - t

    for a in arms:  # warm-up
        step(a)
    for _ in range(cfg.speed_rounds):
        for a in arms:
            times[a].append(step(a))
    ref = statistics.median(times["global"])
    ref_flops = training_flops(arms["global"][0].config, cfg.adapt_len, batch_size=batch)
    rows = []
    for a, t in times.items():
        med = statistics.median(t)
        flops = training_flops(arms[a][0].config, cfg.adapt_len, batch_size=batch)
        rows.append({"experiment": EXPERIMENT, "variant": f"adapt_{a}", "attention": a, "split": "speed",
                     "metric": "train_tokens_per_s", "length": cfg.adapt_len, "value": batch * cfg.adapt_len / med,
                     "step_s": med, "speedup_vs_global": ref / med, "rounds": cfg.speed_rounds,
                     "tflops_per_step": flops / 1e12, "flops_vs_global": flops / ref_flops})
    return {"rows": rows}


def run_lcat_control(cfg: LCATControlConfig, out, *, runs_dir="runs/lcat_control", only=None) -> dict:
    """Run every unfinished cell (or those named in ``only``); returns the results dict."""
    out, runs_dir = Path(out), Path(runs_dir)
    store = CellStore(out, experiment=EXPERIMENT, config=stored_config(cfg), planned=cell_names(cfg))
    todo = [c for c in store.planned if store.get(c) is None and (not only or c in only)]
    log(f"{EXPERIMENT}: {len(store.planned) - len(todo)} of {len(store.planned)} cells done, {len(todo)} to run")
    data = None
    for name in todo:
        if data is None and name != "speed":
            data = load_grid_data(cfg)
        if name == "pretrain":
            store.run(name, lambda: pretrain_cell(cfg, data, runs_dir))
        elif name.startswith("eval_"):
            store.run(name, lambda: eval_cell(cfg, store, data, name.removeprefix("eval_")))
        elif name.startswith("adapt_"):
            torch.manual_seed(cfg.seed)
            store.run(name, lambda: adapt_cell(cfg, store, data, name.removeprefix("adapt_"), runs_dir))
        else:
            store.run(name, lambda: speed_cell(cfg, store))
    return store.write_results()


# ----------------------------------------------------------------------------- tables and figures


def _ppl(rows, variant, context):
    from .markdown import value_where

    return value_where(rows, variant=variant, split="test", metric="ppl", context=context)


def lcat_control_tables(data: dict) -> dict[str, str]:
    from .markdown import PENDING, fmt, markdown_table, rows_where, value_where
    from .position_loss import position_table
    from .positions import band_nll

    cfg, rows = data["config"], data["rows"]
    short, long = cfg["pretrain_len"], cfg["factor"] * cfg["pretrain_len"]
    base_short, conv_short = _ppl(rows, "pretrained", "short"), _ppl(rows, "converted", "short")
    body = []
    for v in VARIANTS:
        s, lg = _ppl(rows, v, "short"), _ppl(rows, v, "long")
        pos = rows_where(rows, variant=v, split="position")
        beyond = band_nll(pos, short, long) if pos else None
        kept = None if s is None or base_short is None else 100 * (s / base_short - 1)
        recovered = ""  # the share of the conversion's short-context loss (log ppl) that training won back
        if v.startswith("adapt") and None not in (s, base_short, conv_short):
            recovered = ("conversion lost nothing" if conv_short <= base_short else
                         fmt(100 * math.log(conv_short / s) / math.log(conv_short / base_short), ".0f"))
        tokens = value_where(rows, variant=v, metric="train_tokens")
        tfl = value_where(rows, variant=v, metric="train_tflops_total")
        body.append([LABELS[v], fmt(s), fmt(kept, "+.1f"), recovered, fmt(lg),
                     fmt(beyond, ".3f"), fmt(tokens, ",.0f", "") if tokens else "",
                     fmt(tfl, ".2f", "") if tfl else ""])
    out = {"summary": markdown_table(
        ["model", f"ppl at {short} (short)", "vs pretrained %", "conversion loss recovered % (log ppl)",
         f"ppl at {long} (long)", f"loss at positions > {short}", "LCAT tokens", "LCAT TFLOPs"], body)}
    pos_rows = [r | {"strategy": r["variant"], "train_len": short} for r in rows if r.get("split") == "position"]
    out["positions"] = position_table(pos_rows, strategies=list(VARIANTS), train_len=short, length=long)
    speed = [r for r in rows if r.get("split") == "speed"]
    sbody = [[f"`{r['attention']}`", fmt(r["value"], ".0f"), fmt(r["step_s"], ".2f"), fmt(r["speedup_vs_global"], ".2f"),
              fmt(r["tflops_per_step"], ".3f"), fmt(r["flops_vs_global"], ".2f")] for r in speed] or [[PENDING] * 6]
    out["speed"] = markdown_table(["arm", f"train tok/s at {long} (side by side)", "s / step", "x global",
                                   "TFLOPs / step", "FLOPs x global"], sbody)
    cpu = data.get("cell_cpu_s", {})
    out["cost"] = markdown_table(["cell", "CPU s (all parts)"],
                                 [[f"`{c}`", f"{cpu[c]:.0f}" if c in cpu else PENDING] for c in data.get("cells", {})])
    return out


def lcat_control_figures(data: dict, out_dir) -> list[Path]:
    from ..eval.plots import _figure, _save

    cfg, rows = data["config"], data["rows"]
    short = cfg["pretrain_len"]
    fig, axes = _figure(10, 3.6, ncols=2)
    ax = axes[0][0]
    for k, v in enumerate(VARIANTS):
        pos = sorted((r for r in rows if r.get("variant") == v and r.get("split") == "position"), key=lambda r: r["lo"])
        if pos:
            xs = [math.sqrt((r["lo"] + 1) * r["hi"]) for r in pos]
            ys = [r["value"] for r in pos]
            se = [0.0 if math.isnan(r["se"]) else r["se"] for r in pos]
            ax.plot(xs, ys, marker=".", color=f"C{k}", label=v)
            ax.fill_between(xs, [y - e for y, e in zip(ys, se)], [y + e for y, e in zip(ys, se)], color=f"C{k}",
                            alpha=0.2, linewidth=0)
    ax.axvline(cfg["window"], color="grey", linestyle="--", linewidth=0.8)
    ax.axvline(short, color="grey", linestyle="-", linewidth=0.8)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("token position (bucket)")
    ax.set_ylabel("test loss (nats/token), ± se over documents")
    ax.set_title(f"scored at {cfg['factor'] * short} tokens", fontsize=9)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)
    ax = axes[0][1]
    for k, v in enumerate(VARIANTS):
        pts = sorted((r["step"], r["value"]) for r in rows if r.get("variant") == v and r.get("split") == "train"
                     and r.get("metric") == "loss")
        if pts:
            xs, ys = zip(*pts)
            ax.plot(xs, ys, color=f"C{k}", label=v, linewidth=0.8)
    ax.set_xlabel("LCAT step")
    ax.set_ylabel("training loss")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)
    return [_save(fig, Path(out_dir) / "lcat_control.png")]


__all__ = ["LCATControlConfig", "cell_names", "lcat_control_figures", "lcat_control_tables", "run_lcat_control"]
