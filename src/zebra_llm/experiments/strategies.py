"""The Zebra paper's strategy comparison (Song et al. 2023, arXiv 2312.08618, section 3,
Figures 2-4) pretrained from scratch at small scale.

Grid: every strategy of :data:`STRATEGIES` at every training length, each run with
the same token budget (``tokens_per_step * steps``), the same data order (the rows
of the concatenated train split in the order ``zebra_llm.train.batches`` draws
with ``seed``) and the same initialisation seed. One cell per (length, strategy),
run in the order length-major (the shortest length first, so whole rows of the
figures finish first), plus one ``speed`` cell per length that times a training
step of every strategy side by side (interleaved rounds, so a busy machine
slows them alike).

Per run it records the training loss curve, the validation perplexity every
``eval_every`` steps against the cumulative training FLOPs (``zebra_llm.flops``),
the median measured training tokens/s, the KV-cache bytes after a prefill of the
longest evaluated length, and the test perplexity by length split (the paper's
protocol: split ``x`` holds the test documents of ``x/2+1 .. x`` tokens, the first
split ``<= 128``), up to ``max(extrapolation) x`` the training length; the
splits beyond the training length again with DCA on the global layers
(``apply_dca`` with ``pretraining_length`` = the training length) for the
models that have global layers.

Seeds and per-position loss (issue 19, item 2): with ``seeds`` set, every (length, strategy) is trained
once per seed (a seed sets the initialisation and the data order; cells ``train_<n>_<strategy>_seed<k>``,
seed-major within a length so whole seeds finish first), and with ``position_factors`` set every train
cell also records the test loss by position bucket (:mod:`.position_loss`) at each factor x the training
length, beyond it again with DCA on the global layers. A cell's ``wall_s`` / ``cpu_s`` add up every part
of a resumed run (``time.json`` in its run directory). Without these settings the grid, its cell names
and its config hash are those of the original grid (its committed cells stay valid).
"""

from __future__ import annotations

import json
import math
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .cells import CellStore, RunClock, log

# name -> (ZebraConfig.attention, layer_group_size)
STRATEGIES = {
    "global": ("global", 1),
    "local": ("local", 1),
    "global_approx": ("global_approx", 1),
    "group2": ("group", 2),
    "group4": ("group", 4),
}
HAS_GLOBAL = ("global", "group2", "group4")


# (Fields listed per experiment, as in lcat.py and lit.py: shared names, different defaults.)
@dataclass
class StrategyGridConfig:
    """One grid; see ``experiments/configs/zebra_strategies_*.yaml`` for the sizes and why."""

    train_lengths: list[int] = field(default_factory=lambda: [256, 1024, 4096])
    strategies: list[str] = field(default_factory=lambda: list(STRATEGIES))
    window_divisor: int = 4  # window = train_len / window_divisor
    chunk_divisor: int = 2  # global_approx summary chunk = window / chunk_divisor
    model: dict = field(default_factory=lambda: dict(
        hidden_size=128, intermediate_size=384, num_hidden_layers=4, num_attention_heads=4,
        num_key_value_heads=4, tie_word_embeddings=True))
    preset: str | None = None  # a ZebraConfig preset as the base of `model` (GPU config: paper-117m)
    vocab_size: int = 4096
    tokens_per_step: int = 4096
    steps: int = 256
    lr: float = 2e-3
    warmup_steps: int = 25
    eval_every: int = 32
    valid_tokens: int = 16384
    extrapolation: list[int] = field(default_factory=lambda: [2, 4])
    test_max_docs: int = 16  # per length split
    first_split: int = 128
    dca: bool = True
    speed_rounds: int = 3
    seed: int = 0
    max_files: int | None = None  # per split; toy runs only
    device: str = "auto"
    precision: str = "auto"
    seeds: list[int] | None = None  # one run per seed (None: the single `seed`, the original cell names)
    position_factors: list[int] = field(default_factory=list)  # per-position loss at these x train length
    position_first: int = 16  # first position bucket edge (then powers of two)
    position_docs: int | None = 64  # test documents scored per length (those at least that long)

    def __post_init__(self):
        for s in self.strategies:
            if s not in STRATEGIES:
                raise ValueError(f"strategies: {s!r} is not one of {', '.join(STRATEGIES)}")
        for n in self.train_lengths:
            if n % self.window_divisor or n // self.window_divisor < 2:
                raise ValueError(f"train_lengths: {n} must be a multiple of window_divisor={self.window_divisor}")
            if self.tokens_per_step % n:
                raise ValueError(f"tokens_per_step ({self.tokens_per_step}) must be a multiple of every "
                                 f"training length, not of {n}")
        if self.eval_every < 1 or self.steps < 1:
            raise ValueError("steps and eval_every must be >= 1")
        if self.seeds is not None and (not self.seeds or len(set(self.seeds)) != len(self.seeds)):
            raise ValueError(f"seeds: give distinct seeds (or leave it unset for `seed`), got {self.seeds}")
        top = max([1, *self.extrapolation])
        for f in self.position_factors:
            if not 1 <= f <= top:
                raise ValueError(f"position_factors: {f} must be between 1 and max(extrapolation) = {top}")
        if self.position_first < 1:
            raise ValueError(f"position_first must be >= 1, got {self.position_first}")

    def run_seeds(self) -> list[int]:
        return list(self.seeds) if self.seeds is not None else [self.seed]

    def window(self, n: int) -> int:
        return n // self.window_divisor

    def splits(self, n: int) -> list[int]:
        """The test length splits for training length ``n``: first_split, 2x, ... up to max(extrapolation) n."""
        top = n * max(self.extrapolation or [1])
        out, x = [], self.first_split
        while x <= top:
            out.append(x)
            x *= 2
        return out


# The settings added after the original grid, with the values that leave it unchanged: left out of the
# config dict at those values, so the original grid's config hash (and its committed cells) stay valid.
NEUTRAL = {"seeds": None, "position_factors": [], "position_first": 16, "position_docs": 64}


def grid_config_dict(cfg: StrategyGridConfig) -> dict:
    """The config as stored with the cells (and hashed): the added settings only when they are used."""
    from .config import as_dict

    d = as_dict(cfg)
    if d["seeds"] is None and not d["position_factors"]:
        for k in NEUTRAL:
            d.pop(k)
    return d


def run_name(strategy: str, n: int, seed: int | None = None) -> str:
    return f"{strategy}@{n}" + ("" if seed is None else f" seed {seed}")


def train_cell_name(cfg: StrategyGridConfig, n: int, strategy: str, seed: int) -> str:
    return f"train_{n}_{strategy}" + ("" if cfg.seeds is None else f"_seed{seed}")


def parse_train_cell(name: str) -> tuple[int, str, int | None]:
    """``(n, strategy, seed or None)`` of ``train_<n>_<strategy>[_seed<k>]``."""
    _, n, rest = name.split("_", 2)
    strategy, sep, seed = rest.rpartition("_seed")
    return (int(n), strategy, int(seed)) if sep and seed.isdigit() else (int(n), rest, None)


def cell_names(cfg: StrategyGridConfig) -> list[str]:
    out = []
    for n in cfg.train_lengths:
        out += [train_cell_name(cfg, n, s, k) for k in cfg.run_seeds() for s in cfg.strategies]
        out.append(f"speed_{n}")
    return out


# ----------------------------------------------------------------------------- model and data


def model_config(cfg: StrategyGridConfig, strategy: str, n: int):
    from ..modeling import ZebraConfig

    attention, group = STRATEGIES[strategy]
    w = cfg.window(n)
    kwargs = dict(cfg.model)
    kwargs.update(
        vocab_size=cfg.vocab_size, attention=attention, layer_group_size=group, window=w,
        approx_chunk_size=max(1, w // cfg.chunk_divisor),
        max_position_embeddings=max(n * max(cfg.extrapolation or [1]), kwargs.get("max_position_embeddings", 0)),
        rope_parameters=kwargs.get("rope_parameters", {"rope_type": "default", "rope_theta": 10000.0}),
        bos_token_id=0, eos_token_id=1, pad_token_id=2,
    )
    if cfg.preset:
        return ZebraConfig.from_preset(cfg.preset, **kwargs)
    return ZebraConfig(**kwargs)


@dataclass
class Data:
    tokenizer: object
    train_ids: list[torch.Tensor]
    valid_stream: torch.Tensor
    test: object  # TokenDocs


def load_data(cfg: StrategyGridConfig, out: Path) -> Data:
    from ..data import tokenize_documents
    from ..eval.corpus import TokenDocs
    from .corpus import bpe_tokenizer, split_corpus

    corpus = split_corpus(max_files=cfg.max_files)
    log(f"corpus: files per split {corpus.sizes()}")
    tok = bpe_tokenizer(corpus.train, cfg.vocab_size, out / "tokenizer.json")
    train = tokenize_documents(corpus.train, tok)
    valid = torch.cat(tokenize_documents(corpus.valid, tok))
    test = TokenDocs("stdlib test split", [d.name for d in corpus.test], tokenize_documents(corpus.test, tok))
    log(f"tokens: train {sum(len(t) for t in train)}, valid {len(valid)}, test {sum(test.lengths())}")
    return Data(tok, train, valid, test)


def valid_rows(data: Data, cfg: StrategyGridConfig, n: int) -> torch.Tensor:
    rows = min(cfg.valid_tokens, len(data.valid_stream)) // n
    if rows < 1:
        raise ValueError(f"data: the valid split has {len(data.valid_stream)} tokens, fewer than one row of {n}")
    return data.valid_stream[: rows * n].view(rows, n)


@torch.no_grad()
def valid_ppl(model, rows: torch.Tensor, batch: int) -> float:
    from ..eval.loss import token_nll

    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    total, count = 0.0, 0
    for i in range(0, len(rows), batch):
        nll = token_nll(model, rows[i : i + batch].to(device))
        total += float(nll.double().sum())
        count += nll.numel()
    model.train(was_training)
    return math.exp(total / count)


# ----------------------------------------------------------------------------- one training run


def _train_cfg(cfg: StrategyGridConfig, n: int, run_dir: Path, seed: int):
    from ..train import PretrainConfig

    batch = cfg.tokens_per_step // n
    return PretrainConfig.from_dict({
        "model": {"preset": "debug"},  # unused: the model is built by train_run (run_training's build_model)
        "data": {"seq_len": n, "packing": "concat"},
        "optim": {"lr": cfg.lr, "warmup_steps": cfg.warmup_steps, "decay": "cosine", "min_lr_ratio": 0.1},
        "train": {"steps": cfg.steps, "batch_size": batch, "seed": seed, "output_dir": str(run_dir),
                  "save_every": cfg.eval_every, "keep_checkpoints": 1, "resume": True, "progress": False,
                  "log_every": 1},
        "engine": {"device": cfg.device, "precision": cfg.precision},
    })


def train_run(cfg: StrategyGridConfig, strategy: str, n: int, data: Data, run_dir: Path,
              seed: int | None = None) -> dict:
    """Train one strategy at length ``n`` with the project's engine (resumable from
    ``run_dir``'s checkpoints), then evaluate it; returns the cell's rows. ``seed`` (default
    ``cfg.seed``) sets the initialisation and the data order; rows carry it when ``cfg.seeds`` is set."""
    from ..data.packing import pack_documents
    from ..flops import training_flops
    from ..io import write_text_atomic
    from ..train import checkpoint as ckpt
    from ..train.batches import Stage
    from ..train.metrics import read_metrics
    from ..train.models import build_from_config
    from ..train.runner import run_training

    seeded = cfg.seeds is not None
    seed = cfg.seed if seed is None else seed
    name = run_name(strategy, n, seed if seeded else None)
    tcfg = _train_cfg(cfg, n, run_dir, seed)
    config = model_config(cfg, strategy, n)
    batch = tcfg.train.batch_size
    flops_per_step = training_flops(config, n, batch_size=batch)
    vrows = valid_rows(data, cfg, n)
    holder: dict = {}
    valid_file = run_dir / "valid.jsonl"
    run_dir.mkdir(parents=True, exist_ok=True)
    clock = RunClock(run_dir)  # wall and CPU time over every part of a resumed run

    def build_model(tok):
        holder["model"] = build_from_config(config)
        return holder["model"]

    t_run = time.perf_counter()

    def on_step(step: int, record: dict) -> None:
        clock.save()
        if step % cfg.eval_every == 0 or step == cfg.steps:
            ppl = valid_ppl(holder["model"], vrows, max(1, batch))
            with valid_file.open("a") as f:
                f.write(json.dumps({"step": step, "ppl": ppl}) + "\n")
            eta = (time.perf_counter() - t_run) / max(1, step - holder.get("start", 0)) * (cfg.steps - step)
            log(f"  {name} step {step}/{cfg.steps} loss {record['loss']:.3f} valid ppl {ppl:.2f} "
                f"{record['tokens_per_s']:.0f} tok/s, ETA {eta / 60:.1f} min")

    # A resumed run restarts at its checkpoint: validation records written after it are redone, so drop them.
    latest = ckpt.latest_checkpoint(run_dir)
    start = int(json.loads((latest / ckpt.STATE_FILE).read_text())["step"]) if latest is not None else 0
    holder["start"] = start
    if valid_file.is_file():
        kept = [line for line in valid_file.read_text().splitlines() if line and json.loads(line)["step"] <= start]
        write_text_atomic(valid_file, "".join(k + "\n" for k in kept))
    pad = data.tokenizer.pad_token_id
    result = run_training(
        tcfg,
        build_tokenizer=lambda: data.tokenizer,
        build_stages=lambda tok, env: [Stage(0, pack_documents(data.train_ids, n, mode="concat", pad_id=pad), n)],
        build_model=build_model,
        callbacks=[on_step],
    )
    if result.interrupted:
        raise KeyboardInterrupt(f"{name} stopped by SIGTERM at step {result.step}; rerun to resume")
    model = result.model
    model.eval()
    metrics = read_metrics(run_dir)
    valid = [json.loads(line) for line in valid_file.read_text().splitlines() if line]
    base = _base_row(cfg, strategy, n, config) | ({"seed": seed} if seeded else {})
    rows = []
    for r in metrics:
        rows.append({**base, "split": "train", "metric": "loss", "value": r["loss"], "step": r["step"],
                     "tokens_seen": r["step"] * cfg.tokens_per_step, "tflops": r["step"] * flops_per_step / 1e12})
    for r in valid:
        rows.append({**base, "split": "valid", "metric": "ppl", "value": r["ppl"], "step": r["step"],
                     "tokens_seen": r["step"] * cfg.tokens_per_step, "tflops": r["step"] * flops_per_step / 1e12})
    speeds = [r["tokens_per_s"] for r in metrics if "tokens_per_s" in r]
    rows.append({**base, "split": "efficiency", "metric": "train_tokens_per_s", "value": statistics.median(speeds),
                 "note": "median over this run's steps (machine shared; see the speed cell for side-by-side ratios)"})
    rows.append({**base, "split": "efficiency", "metric": "train_tflops_total", "value": cfg.steps * flops_per_step / 1e12})
    rows.append({**base, "split": "efficiency", "metric": "params",
                 "value": sum(p.numel() for p in model.parameters())})
    longest = n * max(cfg.extrapolation or [1])
    rows.append({**base, "split": "efficiency", "metric": "kv_cache_bytes", "value": kv_bytes(model, longest),
                 "length": longest})
    if seeded or cfg.position_factors:
        rows.append({**base, "split": "efficiency", "metric": "train_tokens", "value": cfg.steps * cfg.tokens_per_step})
    rows += test_rows(cfg, model, data, strategy, n, base)
    clock.save()
    rows += position_loss_rows(cfg, model, data, strategy, n, base)
    times = clock.save()
    if seeded or cfg.position_factors:
        rows.append({**base, "split": "efficiency", "metric": "cell_cpu_s", "value": times["cpu_s"]})
        return {"rows": rows, "run_dir": str(run_dir), "final_dir": str(result.final_dir), **times}
    return {"rows": rows, "run_dir": str(run_dir), "final_dir": str(result.final_dir)}


def _base_row(cfg, strategy: str, n: int, config) -> dict:
    attention, group = STRATEGIES[strategy]
    return {"experiment": "zebra_strategies", "run": run_name(strategy, n), "strategy": strategy,
            "attention": attention, "layer_group_size": group if attention == "group" else None,
            "train_len": n, "window": cfg.window(n),
            "layer_types": ",".join("G" if t == "full_attention" else ("A" if t == "global_approx" else "L")
                                    for t in config.layer_types)}


@torch.no_grad()
def kv_bytes(model, length: int) -> int:
    """Bytes of the KV cache after a prefill of ``length`` tokens (measured, every layer's keys and values)."""
    from transformers import DynamicCache

    from ..eval.efficiency import cache_bytes

    device = next(model.parameters()).device
    ids = torch.randint(3, model.config.vocab_size, (1, length), generator=torch.Generator().manual_seed(0))
    cache = DynamicCache(config=model.config)
    model(input_ids=ids.to(device), past_key_values=cache, use_cache=True, logits_to_keep=1)
    return cache_bytes(cache)


def split_segments(docs, splits: list[int], *, max_docs: int | None):
    """Whole test documents by length split, the paper's protocol: the first split holds every document
    of at most ``splits[0]`` tokens, split ``x`` the documents of ``x/2 + 1 .. x`` tokens; at most
    ``max_docs`` per split (the first ones in file-name order)."""
    from ..eval.perplexity import Segment

    segs = []
    for k, x in enumerate(splits):
        lo = 1 if k == 0 else x // 2
        members = [Segment(i, docs.names[i], 0, len(t), 1, x) for i, t in enumerate(docs.ids) if lo < len(t) <= x]
        segs += members[:max_docs] if max_docs else members
    if not segs:
        raise ValueError(f"data: no test document falls in any length split {splits}")
    return segs


def test_rows(cfg, model, data: Data, strategy: str, n: int, base: dict) -> list[dict]:
    from ..dca import apply_dca, remove_dca
    from ..eval.perplexity import score_segments

    segs = split_segments(data.test, cfg.splits(n), max_docs=cfg.test_max_docs)
    rows = []

    def score(segments, method):
        log(f"  {run_name(strategy, n)} test ppl ({method}): {len(segments)} documents, "
            f"{sum(s.length for s in segments)} tokens")
        sums: dict[int, list] = {}
        for seg, item in score_segments(model, data.test, segments):
            acc = sums.setdefault(seg.group, [0.0, 0, 0])
            acc[0] += item["nll_sum"]
            acc[1] += item["tokens"]
            acc[2] += 1
        for x, (nll, tokens, docs) in sorted(sums.items()):
            rows.append({**base, "split": "test", "length_split": x, "beyond_train": x > n, "method": method,
                         "metric": "ppl", "value": math.exp(nll / tokens), "tokens": tokens, "docs": docs})

    score(segs, "none")
    if cfg.dca and strategy in HAS_GLOBAL:
        apply_dca(model, pretraining_length=n)
        try:
            score([s for s in segs if s.group > n], "dca")
        finally:
            remove_dca(model)
    return rows


def position_loss_rows(cfg, model, data: Data, strategy: str, n: int, base: dict) -> list[dict]:
    """Test loss by position bucket at every ``position_factors`` x ``n``; the factors above 1 again with
    DCA on the global layers (``pretraining_length`` = ``n``) for the strategies that have them."""
    from ..dca import apply_dca, remove_dca
    from .position_loss import position_rows

    rows = []
    for f in cfg.position_factors:
        length = f * n
        rows += position_rows(model, data.test.ids, length, base | {"factor": f}, first=cfg.position_first,
                              max_docs=cfg.position_docs)
        if f > 1 and cfg.dca and strategy in HAS_GLOBAL:
            apply_dca(model, pretraining_length=n)
            try:
                rows += position_rows(model, data.test.ids, length, base | {"factor": f}, method="dca",
                                      first=cfg.position_first, max_docs=cfg.position_docs)
            finally:
                remove_dca(model)
        log(f"  {base['run']} per-position loss at {length} tokens ({rows[-1]['docs']} documents)")
    return rows


# ----------------------------------------------------------------------------- side-by-side speed


def speed_cell(cfg: StrategyGridConfig, n: int) -> dict:
    """Training-step tokens/s of every strategy at length ``n``, timed in interleaved rounds."""
    from ..train.models import build_from_config

    batch = cfg.tokens_per_step // n
    device = torch.device("cuda" if cfg.device in ("auto", "cuda") and torch.cuda.is_available() else "cpu")
    ids = torch.randint(3, cfg.vocab_size, (batch, n), generator=torch.Generator().manual_seed(0)).to(device)
    models = {}
    for s in cfg.strategies:
        torch.manual_seed(cfg.seed)
        m = build_from_config(model_config(cfg, s, n)).to(device)
        models[s] = (m, torch.optim.AdamW(m.parameters(), lr=1e-4))
    times: dict[str, list[float]] = {s: [] for s in cfg.strategies}

    def step(s):
        m, opt = models[s]
        t = time.perf_counter()
        m(input_ids=ids, labels=ids, use_cache=False).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t

    for s in cfg.strategies:  # warm-up
        step(s)
    for r in range(cfg.speed_rounds):
        for s in cfg.strategies:
            times[s].append(step(s))
    rows = []
    ref = statistics.median(times["global"]) if "global" in times else None
    for s in cfg.strategies:
        med = statistics.median(times[s])
        config = model_config(cfg, s, n)
        rows.append({**_base_row(cfg, s, n, config), "split": "speed", "metric": "train_tokens_per_s",
                     "value": batch * n / med, "step_s": med, "rounds": cfg.speed_rounds,
                     "speedup_vs_global": None if ref is None else ref / med})
    return {"rows": rows}


# ----------------------------------------------------------------------------- the grid


def run_grid(cfg: StrategyGridConfig, out: str | Path, *, runs_dir: str | Path = "runs/zebra_strategies",
             only: list[str] | None = None) -> dict:
    """Run every unfinished cell (or those named in ``only``); returns the results dict."""
    out, runs_dir = Path(out), Path(runs_dir)
    store = CellStore(out, experiment="zebra_strategies", config=grid_config_dict(cfg), planned=cell_names(cfg))
    todo = [c for c in store.planned if store.get(c) is None and (not only or c in only)]
    log(f"zebra_strategies: {len(store.planned) - len(todo)} of {len(store.planned)} cells done, {len(todo)} to run")
    data = None
    for name in todo:
        if name.startswith("speed_"):
            store.run(name, lambda: speed_cell(cfg, int(name.split("_")[1])))
            continue
        if data is None:
            data = load_data(cfg, out)
        n, strategy, seed = parse_train_cell(name)
        run_dir = runs_dir / (f"{n}_{strategy}" + ("" if seed is None else f"_seed{seed}"))
        torch.manual_seed(cfg.seed if seed is None else seed)
        store.run(name, lambda: train_run(cfg, strategy, n, data, run_dir, seed))
    return store.write_results()
