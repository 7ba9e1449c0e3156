"""Multi-query associative recall (MQAR, :mod:`zebra_llm.data.recall`) trained from scratch for every
attention layout, the small-scale test of what each layout can retrieve (issue 19, item 1).

Grid: every strategy (a layer pattern of ``G`` global, ``L`` local, ``A`` local with global
approximation) at every training length, ``steps`` optimizer steps each (equal for all), several seeds.
The learning rate is chosen per (strategy, length) from ``lr_sweep`` on the first seed by validation
accuracy (Zoology sweeps it the same way, so no layout loses to a bad rate), then used for the other
seeds; the first seed's cell of the chosen rate is that seed's grid cell. A seed sets the model's
initialisation, the training examples and their order; validation and test examples are the same for
every strategy and seed (their own seeds), so strategies are compared on shared examples.

Per run: validation accuracy every ``eval_every`` steps, test accuracy by key-query distance (buckets of
``(window - 1) * 2^k``: one local layer moves information at most ``window - 1`` positions, so a model with
``m`` local layers and no global one reaches at most ``m (window - 1)``), and inside / beyond the local
reach of the model's depth. Then (``extend_*`` cells) the same trained models at ``extension_factors`` x
their training length, queries placed uniformly (``extension_power_a``) so that most fall beyond the
training length, with no method and with each training-free extension method on the global layers
(``zebra_llm.extensions.apply_extension``).

Every cell is resumable: a training run continues from its newest checkpoint under ``runs/recall``, and
a cell's ``wall_s`` / ``cpu_s`` add up every part a resumed run took (``time.json`` in the run directory).
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

EXPERIMENT = "recall"
LAYER_LETTERS = {"G": "full_attention", "L": "sliding_attention", "A": "global_approx"}
# name -> layer pattern. Zoology's attention baselines have 2 layers; a Zebra group of L=4 needs 4.
DEFAULT_STRATEGIES = {
    "global": "GG",
    "local": "LL",
    "global_approx": "AA",
    "group2": "GL",  # Zebra's order (the first layer of each group global)
    "group2_local_first": "LG",
    "group4": "GLLL",
}
EXTENSION_METHODS = ("none", "dca", "self_extend", "rerope", "string")
VALID_SEED, TEST_SEED, EXTEND_SEED = 1_000_003, 2_000_003, 3_000_003


@dataclass
class RecallGridConfig:
    """One grid; see ``experiments/configs/recall_*.yaml`` for the sizes and why."""

    train_lengths: list[int] = field(default_factory=lambda: [128, 256, 512])
    strategies: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_STRATEGIES))
    window: int = 4
    approx_chunk_size: int = 4
    model: dict = field(default_factory=lambda: dict(
        hidden_size=64, intermediate_size=128, num_attention_heads=1, num_key_value_heads=1,
        tie_word_embeddings=True))
    vocab_size: int = 128
    num_pairs: int = 8
    power_a: float = 0.01
    batch_size: int = 16
    steps: int = 800
    lr_sweep: list[float] = field(default_factory=lambda: [1e-3, 3e-3, 1e-2])
    sweep_lengths: list[int] | None = None  # None: the sweep at every training length
    warmup_steps: int = 50
    weight_decay: float = 0.0
    beta2: float = 0.999  # torch's AdamW default, as Zoology trains; the LM configs use 0.95
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    valid_examples: int = 256
    test_examples: int = 256
    eval_every: int = 100
    extension_factors: list[int] = field(default_factory=lambda: [2, 4])
    extension_methods: list[str] = field(default_factory=lambda: list(EXTENSION_METHODS))
    extension_power_a: float = 1.0
    extension_examples: int = 128
    eval_batch: int = 32
    device: str = "auto"
    precision: str = "auto"

    def __post_init__(self):
        from ..data.recall import RecallTask

        if not self.strategies:
            raise ValueError("strategies: give at least one name: layer pattern")
        for name, pattern in self.strategies.items():
            if not name.replace("_", "").isalnum():
                raise ValueError(f"strategies: {name!r} must be letters, digits and underscores")
            if not pattern or set(pattern) - set(LAYER_LETTERS):
                raise ValueError(f"strategies.{name}: {pattern!r} must be a string of G (global), L (local) "
                                 "and A (global approximation), one letter per layer")
        if self.window < 2:
            raise ValueError(f"window must be >= 2 (a local layer must see the previous token), got {self.window}")
        for n in self.train_lengths:
            RecallTask(self.vocab_size, self.num_pairs, n, self.power_a)  # checks the task at every length
        for x in self.extension_factors:
            if isinstance(x, bool) or not isinstance(x, int) or x < 2:
                raise ValueError(f"extension_factors: {x!r} must be an integer >= 2")
        for m in self.extension_methods:
            if m not in EXTENSION_METHODS:
                raise ValueError(f"extension_methods: {m!r} is not one of {', '.join(EXTENSION_METHODS)}")
        if not self.lr_sweep or any(not lr > 0 for lr in self.lr_sweep):
            raise ValueError(f"lr_sweep must hold positive learning rates, got {self.lr_sweep}")
        if self.sweep_lengths is not None:
            bad = [n for n in self.sweep_lengths if n not in self.train_lengths]
            if bad or not self.sweep_lengths:
                raise ValueError(f"sweep_lengths must be training lengths ({self.train_lengths}), got "
                                 f"{self.sweep_lengths}")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds must be distinct and at least one, got {self.seeds}")
        for name in ("steps", "batch_size", "eval_every", "valid_examples", "test_examples", "extension_examples",
                     "eval_batch"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")

    def task(self, n: int, power_a: float | None = None):
        from ..data.recall import RecallTask

        return RecallTask(self.vocab_size, self.num_pairs, n, self.power_a if power_a is None else power_a)

    def sweep_length_for(self, n: int) -> int:
        """The training length whose sweep chooses the rate at length ``n`` (itself, or the nearest swept)."""
        swept = self.sweep_lengths or self.train_lengths
        return n if n in swept else min(swept, key=lambda m: (abs(math.log(m / n)), m))

    def reach(self, strategy: str) -> int:
        """Distance an all-local stack of this model's depth can bridge: (window - 1) x layers."""
        return (self.window - 1) * len(self.strategies[strategy])

    def distance_edges(self, longest: int) -> list[int]:
        edges, e = [], self.window - 1
        while e < longest:
            edges.append(e)
            e *= 2
        return edges + [longest]


def lr_tag(lr: float) -> str:
    return f"lr{lr:g}"


def train_cell(n: int, strategy: str, seed: int, lr: float | None = None) -> str:
    return f"train_{n}_{strategy}_seed{seed}" + (f"_{lr_tag(lr)}" if lr is not None else "")


def cell_names(cfg: RecallGridConfig) -> list[str]:
    """The learning-rate sweep first (the other cells need its choice), then the first seed at the
    other lengths, then seed by seed, then the extension evaluations."""
    first, rest = cfg.seeds[0], cfg.seeds[1:]
    swept = [n for n in cfg.train_lengths if cfg.sweep_length_for(n) == n]
    out = [train_cell(n, s, first, lr) for n in swept for s in cfg.strategies for lr in cfg.lr_sweep]
    out += [train_cell(n, s, first) for n in cfg.train_lengths if n not in swept for s in cfg.strategies]
    for seed in rest:
        out += [train_cell(n, s, seed) for n in cfg.train_lengths for s in cfg.strategies]
    out += [f"extend_{n}_{s}_seed{seed}" for seed in cfg.seeds for n in cfg.train_lengths for s in cfg.strategies]
    return out


def parse_cell(name: str) -> dict:
    kind, n, rest = name.split("_", 2)
    lr = None
    if "_lr" in rest:
        rest, tag = rest.rsplit("_lr", 1)
        lr = float(tag)
    strategy, seed = rest.rsplit("_seed", 1)
    return {"kind": kind, "n": int(n), "strategy": strategy, "seed": int(seed), "lr": lr}


# ----------------------------------------------------------------------------- model and data


def model_config(cfg: RecallGridConfig, strategy: str, n: int):
    from ..modeling import ZebraConfig

    pattern = cfg.strategies[strategy]
    kwargs = dict(cfg.model)
    kwargs.update(
        vocab_size=cfg.vocab_size, num_hidden_layers=len(pattern), layer_types=[LAYER_LETTERS[c] for c in pattern],
        window=cfg.window, approx_chunk_size=cfg.approx_chunk_size, max_position_embeddings=n,
        rope_parameters=kwargs.get("rope_parameters", {"rope_type": "default", "rope_theta": 10000.0}),
        bos_token_id=None, eos_token_id=None, pad_token_id=None,
    )
    return ZebraConfig(**kwargs)


def base_row(cfg: RecallGridConfig, strategy: str, n: int, seed: int, lr: float) -> dict:
    return {"experiment": EXPERIMENT, "strategy": strategy, "layers": cfg.strategies[strategy], "train_len": n,
            "window": cfg.window, "reach": cfg.reach(strategy), "seed": seed, "lr": lr}


@torch.no_grad()
def recall_accuracy(model, data, batch: int) -> torch.Tensor:
    """``[N, P]`` booleans: the greedy answer at each query is its value."""
    from ..data.recall import answer_predictions

    was = model.training
    model.eval()
    correct = answer_predictions(model, data, batch_size=batch) == data.values
    model.train(was)
    return correct


def distance_rows(correct: torch.Tensor, distance: torch.Tensor, edges: list[int], reach: int, base: dict,
                  **extra) -> list[dict]:
    """Rows of accuracy per distance bucket and per band (inside / beyond the local reach)."""
    from ..data.recall import accuracy_by_distance

    rows = []
    for b in accuracy_by_distance(correct, distance, edges):
        rows.append({**base, **extra, "metric": "accuracy", "bucket": f"{b['lo'] + 1}-{b['hi']}", "lo": b["lo"],
                     "hi": b["hi"], "n": b["n"], "correct": b["correct"], "value": b["correct"] / b["n"]})
    bands = {"inside_reach": distance <= reach, "beyond_reach": distance > reach, "all": distance > 0}
    for band, sel in bands.items():
        k = int(sel.sum())
        if k:
            rows.append({**base, **extra, "metric": "accuracy", "band": band, "n": k, "correct": int(correct[sel].sum()),
                         "value": float(correct[sel].float().mean())})
    return rows


# ----------------------------------------------------------------------------- one training run


def _train_cfg(cfg: RecallGridConfig, lr: float, seed: int, run_dir: Path):
    from ..train import PretrainConfig

    return PretrainConfig.from_dict({
        "model": {"preset": "debug"},  # unused: the model is built by train_run's build_model
        "data": {"seq_len": 2},  # unused: the stages are the recall examples
        "optim": {"lr": lr, "warmup_steps": cfg.warmup_steps, "decay": "cosine", "min_lr_ratio": 0.1,
                  "weight_decay": cfg.weight_decay, "beta2": cfg.beta2},
        "train": {"steps": cfg.steps, "batch_size": cfg.batch_size, "seed": seed, "output_dir": str(run_dir),
                  "save_every": cfg.eval_every, "keep_checkpoints": 1, "resume": True, "progress": False,
                  "log_every": 1},
        "engine": {"device": cfg.device, "precision": cfg.precision},
    })


def train_run(cfg: RecallGridConfig, strategy: str, n: int, seed: int, lr: float, run_dir: Path) -> dict:
    """Train one strategy on MQAR at length ``n`` with the project's engine (resumable from ``run_dir``),
    then score it on the shared test examples; returns the cell."""
    from ..data.recall import make_recall
    from ..io import write_text_atomic
    from ..train import checkpoint as ckpt
    from ..train.batches import Stage
    from ..train.metrics import read_metrics
    from ..train.models import build_from_config
    from ..train.runner import run_training

    run_dir.mkdir(parents=True, exist_ok=True)
    clock = RunClock(run_dir)
    task = cfg.task(n)
    train = make_recall(task, cfg.steps * cfg.batch_size, seed)  # every step sees new examples
    valid = make_recall(task, cfg.valid_examples, VALID_SEED)
    config = model_config(cfg, strategy, n)
    holder: dict = {}
    valid_file = run_dir / "valid.jsonl"
    name = f"{strategy}@{n} seed {seed} lr {lr:g}"

    def build_model(tok):
        holder["model"] = build_from_config(config)
        return holder["model"]

    def on_step(step: int, record: dict) -> None:
        clock.save()
        if step % cfg.eval_every == 0 or step == cfg.steps:
            acc = float(recall_accuracy(holder["model"], valid, cfg.eval_batch).float().mean())
            with valid_file.open("a") as f:
                f.write(json.dumps({"step": step, "accuracy": acc}) + "\n")
            log(f"  {name} step {step}/{cfg.steps} loss {record['loss']:.3f} valid acc {acc:.3f}")

    latest = ckpt.latest_checkpoint(run_dir)
    start = int(json.loads((latest / ckpt.STATE_FILE).read_text())["step"]) if latest is not None else 0
    if valid_file.is_file():  # records after the checkpoint are redone by the resumed run
        kept = [line for line in valid_file.read_text().splitlines() if line and json.loads(line)["step"] <= start]
        write_text_atomic(valid_file, "".join(k + "\n" for k in kept))
    result = run_training(
        _train_cfg(cfg, lr, seed, run_dir),
        build_tokenizer=lambda: None,
        build_stages=lambda tok, env: [Stage(0, train, n)],
        build_model=build_model,
        callbacks=[on_step],
    )
    if result.interrupted:
        raise KeyboardInterrupt(f"{name} stopped by a signal at step {result.step}; rerun to resume")
    model = result.model
    test = make_recall(task, cfg.test_examples, TEST_SEED)
    correct = recall_accuracy(model, test, cfg.eval_batch)
    base = base_row(cfg, strategy, n, seed, lr)
    rows = distance_rows(correct, test.distance, cfg.distance_edges(n), cfg.reach(strategy), base, split="test")
    for r in (json.loads(line) for line in valid_file.read_text().splitlines() if line):
        rows.append({**base, "split": "valid", "metric": "accuracy", "step": r["step"], "value": r["accuracy"]})
    metrics = read_metrics(run_dir)
    for lo in range(0, cfg.steps, cfg.eval_every):  # training loss, mean per interval of eval_every steps
        part = [r["loss"] for r in metrics if lo < r["step"] <= lo + cfg.eval_every]
        if part:
            rows.append({**base, "split": "train", "metric": "loss", "step": lo + cfg.eval_every,
                         "value": statistics.fmean(part)})
    rows.append({**base, "split": "efficiency", "metric": "params", "value": sum(p.numel() for p in model.parameters())})
    times = clock.save()
    rows.append({**base, "split": "efficiency", "metric": "train_cpu_s", "value": times["cpu_s"]})
    return {"rows": rows, "run_dir": str(run_dir), "final_dir": str(result.final_dir),
            "examples_seen": cfg.steps * cfg.batch_size, **times}


# ----------------------------------------------------------------------------- the learning-rate choice


def chosen_lr(cfg: RecallGridConfig, rows_of, n: int, strategy: str) -> float | None:
    """The swept rate with the best final validation accuracy (ties: the smaller rate) on the first seed,
    at ``cfg.sweep_length_for(n)``; None until every sweep cell there has finished. ``rows_of(cell)`` is
    a finished cell's rows or None."""
    m, first = cfg.sweep_length_for(n), cfg.seeds[0]
    scored = []
    for lr in cfg.lr_sweep:
        rows = rows_of(train_cell(m, strategy, first, lr))
        if rows is None:
            return None
        scored.append((-final_valid(rows), lr))
    return min(scored)[1]


def grid_cell(cfg: RecallGridConfig, n: int, strategy: str, seed: int, lr: float) -> str:
    """The training cell that is (n, strategy, seed)'s grid run at the chosen rate ``lr``."""
    swept_here = seed == cfg.seeds[0] and cfg.sweep_length_for(n) == n
    return train_cell(n, strategy, seed, lr if swept_here else None)


def final_valid(rows: list[dict]) -> float:
    valid = sorted((r for r in rows if r.get("split") == "valid"), key=lambda r: r["step"])
    return valid[-1]["value"] if valid else float("nan")


# ----------------------------------------------------------------------------- extension evaluations


def extend_run(cfg: RecallGridConfig, strategy: str, n: int, seed: int, model_dir: Path) -> dict:
    """The trained model at ``factor x n`` with each extension method on its global layers."""
    from ..data.recall import make_recall
    from ..extensions import apply_extension, remove_extension
    from ..modeling import ZebraForCausalLM

    if not (model_dir / "config.json").is_file():
        raise FileNotFoundError(f"recall: {model_dir} holds no trained model; rerun its train cell (delete that "
                                "cell's JSON to retrain)")
    t, c = time.perf_counter(), time.process_time()
    model = ZebraForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model.eval()
    has_global = "G" in cfg.strategies[strategy]
    rows = []
    reach = cfg.reach(strategy)
    for factor in [1, *cfg.extension_factors]:
        length = factor * n
        data = make_recall(cfg.task(length, cfg.extension_power_a), cfg.extension_examples, EXTEND_SEED + length)
        methods = ["none"] if factor == 1 else [m for m in cfg.extension_methods if m == "none" or has_global]
        for method in methods:
            if method != "none":
                settings = {"pretraining_length": n} if method == "dca" else {"trained_length": n}
                apply_extension(model, method, **settings)
            try:
                correct = recall_accuracy(model, data, max(1, cfg.eval_batch // factor))
            finally:
                if method != "none":
                    remove_extension(model)
            d = data.distance
            base = {**base_row(cfg, strategy, n, seed, None), "split": "extend", "eval_len": length,
                    "factor": factor, "method": method}
            bands = {"inside_reach": d <= reach, "reach_to_train": (d > reach) & (d <= n), "beyond_train": d > n,
                     "all": d > 0}
            for band, sel in bands.items():
                k = int(sel.sum())
                if k:
                    rows.append({**base, "metric": "accuracy", "band": band, "n": k, "correct": int(correct[sel].sum()),
                                 "value": float(correct[sel].float().mean()),
                                 # every answer's outcome, in the data's order: the methods' paired tests
                                 "outcomes": "".join("1" if c else "0" for c in correct[sel].tolist())})
            log(f"  {strategy}@{n} seed {seed} at {length} ({method}): accuracy "
                f"{float(correct.float().mean()):.3f}, beyond the training length "
                f"{float(correct[d > n].float().mean()) if (d > n).any() else float('nan'):.3f}")
    return {"rows": rows, "model_dir": str(model_dir), "wall_s": time.perf_counter() - t,
            "cpu_s": time.process_time() - c}


def _grid_train(cfg: RecallGridConfig, strategy: str, n: int, seed: int, lr: float, runs_dir: Path) -> dict:
    """``train_run`` in the grid's run folder of (n, strategy, seed, lr), from the seed's initialisation."""
    torch.manual_seed(seed)
    return train_run(cfg, strategy, n, seed, lr, runs_dir / f"{n}_{strategy}_seed{seed}_{lr_tag(lr)}")


def _test_correct(rows: list[dict]) -> int:
    return sum(r["correct"] for r in rows if r.get("split") == "test" and r.get("metric") == "accuracy")


def _extend_cell(cfg: RecallGridConfig, strategy: str, n: int, seed: int, lr: float, train: dict,
                 runs_dir: Path) -> dict:
    """``extend_run`` on the training cell's model. A checkpoint that is gone (the cell was trained on
    another machine: ``runs/`` is not committed) is retrained from the same seed into its run folder
    first, and the cell records whether the retrained model answers the test examples exactly as the
    recorded one did (``retrained``), so a model that is not the recorded one is never silently used."""
    model_dir = Path(train["final_dir"])
    retrained = None
    if not (model_dir / "config.json").is_file():
        log(f"{EXPERIMENT}: {model_dir} is gone; retraining {strategy}@{n} seed {seed} lr {lr:g} for the extension")
        again = _grid_train(cfg, strategy, n, seed, lr, runs_dir)
        model_dir = Path(again["final_dir"])
        recorded, now = _test_correct(train["rows"]), _test_correct(again["rows"])
        retrained = {"test_correct_recorded": recorded, "test_correct_retrained": now,
                     "matches_recorded": recorded == now, "cpu_s": again["cpu_s"], "wall_s": again["wall_s"]}
    out = extend_run(cfg, strategy, n, seed, model_dir)
    if retrained is not None:
        out["retrained"] = retrained
        for row in out["rows"]:
            row["retrained"] = True
        out["cpu_s"] += retrained["cpu_s"]
        out["wall_s"] += retrained["wall_s"]
    return out


# ----------------------------------------------------------------------------- the grid


def run_recall(cfg: RecallGridConfig, out: str | Path, *, runs_dir: str | Path = "runs/recall",
               only: list[str] | None = None) -> dict:
    """Run every unfinished cell (or those named in ``only``); returns the results dict."""
    from .config import as_dict

    out, runs_dir = Path(out), Path(runs_dir)
    store = CellStore(out, experiment=EXPERIMENT, config=as_dict(cfg), planned=cell_names(cfg))
    if only:
        unknown = [c for c in only if c not in store.planned]
        if unknown:
            raise ValueError(f"--only: {unknown[0]!r} is not a cell of recall; cells look like "
                             f"{store.planned[0]}, {store.planned[-1]}")
    todo = [c for c in store.planned if store.get(c) is None and (not only or c in only)]
    def rows_of(cell):
        found = store.get(cell)
        return None if found is None else found["rows"]

    log(f"{EXPERIMENT}: {len(store.planned) - len(todo)} of {len(store.planned)} cells done, {len(todo)} to run")
    for name in todo:
        p = parse_cell(name)
        n, s, seed = p["n"], p["strategy"], p["seed"]
        if p["kind"] == "extend":
            lr = chosen_lr(cfg, rows_of, n, s)
            train = store.get(grid_cell(cfg, n, s, seed, lr)) if lr is not None else None
            if train is None:
                log(f"{EXPERIMENT}: {name} waits for its training cell")
                continue
            store.run(name, lambda: _extend_cell(cfg, s, n, seed, lr, train, runs_dir))
            continue
        lr = p["lr"] if p["lr"] is not None else chosen_lr(cfg, rows_of, n, s)
        if lr is None:
            log(f"{EXPERIMENT}: {name} waits for the learning-rate sweep of {s} at {cfg.sweep_length_for(n)}")
            continue
        store.run(name, lambda: _grid_train(cfg, s, n, seed, lr, runs_dir))
    return store.write_results()


# ----------------------------------------------------------------------------- tables and figures


def _config(data: dict) -> RecallGridConfig:
    from .config import load_config

    return load_config(RecallGridConfig, None, data["config"])


def _by_cell(data: dict) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for r in data["rows"]:
        out.setdefault(r["cell"], []).append(r)
    return out


def grid_runs(data: dict) -> dict[tuple[int, str], dict]:
    """``(n, strategy) -> {"lr", "runs": {seed: rows}, "extend": {seed: rows}}`` of the finished grid cells."""
    cfg, cells = _config(data), _by_cell(data)
    out = {}
    for n in cfg.train_lengths:
        for s in cfg.strategies:
            lr = chosen_lr(cfg, cells.get, n, s)
            runs, ext = {}, {}
            for seed in cfg.seeds:
                if lr is not None and grid_cell(cfg, n, s, seed, lr) in cells:
                    runs[seed] = cells[grid_cell(cfg, n, s, seed, lr)]
                if f"extend_{n}_{s}_seed{seed}" in cells:
                    ext[seed] = cells[f"extend_{n}_{s}_seed{seed}"]
            out[n, s] = {"lr": lr, "runs": runs, "extend": ext}
    return out


def _pick(rows, **kw) -> dict | None:
    found = [r for r in rows if all(r.get(k) == v for k, v in kw.items())]
    return found[-1] if found else None


def _pooled(rows, bands, **kw) -> float | None:
    """Accuracy over the union of ``bands`` (counts added) among rows matching ``kw``."""
    picked = [r for b in bands if (r := _pick(rows, band=b, **kw)) is not None]
    n = sum(r["n"] for r in picked)
    return sum(r["correct"] for r in picked) / n if n else None


def _seed_values(runs: dict, fn) -> list[float]:
    return [v for rows in runs.values() if (v := fn(rows)) is not None]


def mean_sd(values: list[float], scale: float = 100.0) -> str:
    """``mean ± sd`` over seeds in percent (``sd`` the sample standard deviation), ``(n=1)`` for one."""
    if not values:
        return "pending"
    m = statistics.fmean(values) * scale
    if len(values) == 1:
        return f"{m:.1f} (n=1)"
    return f"{m:.1f} ± {statistics.stdev(values) * scale:.1f}"


def separated(a: list[float], b: list[float]) -> float | None:
    """One-sided exact rank-test p value when every value of ``a`` exceeds every value of ``b``
    (Mann-Whitney U = its maximum: p = 1 / C(|a| + |b|, |a|)); None when they overlap."""
    if not a or not b or min(a) <= max(b):
        return None
    return 1 / math.comb(len(a) + len(b), len(a))


def recall_tables(data: dict) -> dict[str, str]:
    from .markdown import markdown_table

    cfg = _config(data)
    grid = grid_runs(data)
    cells = _by_cell(data)
    out = {}
    body = []
    for n in cfg.train_lengths:
        for s, pattern in cfg.strategies.items():
            g = grid[n, s]

            def band(b):
                return lambda rows: (r["value"] if (r := _pick(rows, split="test", band=b)) else None)

            beyond = _seed_values(g["runs"], band("beyond_reach"))
            body.append([str(n), f"`{s}`", pattern, "pending" if g["lr"] is None else f"{g['lr']:g}",
                         str(cfg.reach(s)), str(len(g["runs"])), mean_sd(_seed_values(g["runs"], band("inside_reach"))),
                         mean_sd(beyond), ", ".join(f"{v * 100:.0f}" for v in beyond) or "pending"])
    out["accuracy"] = markdown_table(
        ["train len", "strategy", "layers", "chosen lr", "local reach R", "seeds", "accuracy % at d <= R",
         "accuracy % at d > R", "d > R per seed"], body)

    parts = []
    for n in cfg.train_lengths:
        edges = cfg.distance_edges(n)
        buckets = [f"{lo + 1}-{hi}" for lo, hi in zip([0, *edges[:-1]], edges)]
        body = []
        for s in cfg.strategies:
            runs = grid[n, s]["runs"]
            row = [f"`{s}`"]
            for b in buckets:
                vals = _seed_values(runs, lambda rows, b=b: (r["value"] if (r := _pick(rows, split="test", bucket=b))
                                                             else None))
                row.append(mean_sd(vals))
            body.append(row)
        counts = [_pick(next(iter(grid[n, s]["runs"].values()), []), split="test", bucket=b) for b in buckets
                  for s in [next(iter(cfg.strategies))]]
        n_row = ["answers per run"] + [str(c["n"]) if c else "" for c in counts]
        parts.append(f"Trained at {n} tokens (distance d = query position - key position):\n\n"
                     + markdown_table(["strategy"] + [f"d {b}" for b in buckets], body + [n_row]))
    out["distance"] = "\n\n".join(parts)

    body = []
    for n in cfg.train_lengths:
        if cfg.sweep_length_for(n) != n:
            continue
        for s in cfg.strategies:
            row = [str(n), f"`{s}`"]
            for lr in cfg.lr_sweep:
                rows = cells.get(train_cell(n, s, cfg.seeds[0], lr))
                row.append("pending" if rows is None else f"{final_valid(rows) * 100:.1f}")
            lr = grid[n, s]["lr"]
            row.append("pending" if lr is None else f"{lr:g}")
            body.append(row)
    out["sweep"] = markdown_table(["train len", "strategy"] + [f"lr {lr:g}" for lr in cfg.lr_sweep] + ["chosen"], body)

    body = []
    for n in cfg.train_lengths:
        for s in cfg.strategies:
            ext = grid[n, s]["extend"]
            methods = [m for m in cfg.extension_methods if m == "none" or "G" in cfg.strategies[s]]
            for m in methods:
                row = [str(n), f"`{s}`", m,
                       mean_sd(_seed_values(ext, lambda rows: _pooled(rows, ["all"], factor=1, method="none")))
                       if m == "none" else ""]
                for x in cfg.extension_factors:
                    for bands in (["inside_reach", "reach_to_train"], ["beyond_train"]):
                        row.append(mean_sd(_seed_values(ext, lambda rows: _pooled(rows, bands, factor=x, method=m))))
                row.append(str(len(ext)))
                body.append(row)
    header = ["train len", "strategy", "method", "1x, all d"]
    for x in cfg.extension_factors:
        header += [f"{x}x, d <= train len", f"{x}x, d > train len"]
    out["extension"] = markdown_table(header + ["seeds"], body)

    done = [c for c in data.get("cells", {}) if data["cells"][c] == "done"]
    cpu = data.get("cell_cpu_s", {})
    body = []
    for n in cfg.train_lengths:
        train = [cpu[c] for c in done if c.startswith(f"train_{n}_") and c in cpu]
        body.append([str(n), str(len(train)), f"{statistics.fmean(train):.0f}" if train else "pending",
                     f"{sum(train) / 3600:.2f}"])
    ext = [cpu[c] for c in done if c.startswith("extend_") and c in cpu]
    body.append(["extension evals", str(len(ext)), f"{statistics.fmean(ext):.0f}" if ext else "pending",
                 f"{sum(ext) / 3600:.2f}"])
    out["cost"] = markdown_table(["cells", "finished", "CPU s per cell (mean)", "CPU hours"], body)
    out["contest"] = recall_contest(cfg, grid)
    out["assessment"] = recall_assessment(cfg, grid)
    return out


def _outcomes(ext: dict, factor: int, method: str, band: str = "beyond_train") -> dict | None:
    """``{(seed, answer): 0/1}`` of one method at one factor over every seed's model, or None if a seed's
    cell lacks it (the answers are the same examples for every method, so the keys pair them)."""
    out = {}
    for seed, rows in ext.items():
        row = _pick(rows, factor=factor, method=method, band=band)
        if row is None or "outcomes" not in row:
            return None
        out.update({(seed, i): int(c) for i, c in enumerate(row["outcomes"])})
    return out


def recall_contest(cfg: RecallGridConfig, grid: dict) -> str:
    """The extension contest on genuinely short-trained models: for each layout with global layers, at each
    factor, every method's accuracy on the answers beyond the training length (pooled over the seeds'
    models, with its Wilson 95% interval), and the exact McNemar test against no method on the same
    answers, Holm-adjusted over the methods of the row. Verdict: ``better`` / ``worse`` than no method when
    the adjusted p < 0.05, else ``tied``."""
    from ..eval.stats import holm, paired_test, wilson
    from .markdown import PENDING, markdown_table

    body = []
    for n in cfg.train_lengths:
        for s in cfg.strategies:
            ext = grid[n, s]["extend"]
            if not ext or "G" not in cfg.strategies[s]:
                continue
            for x in cfg.extension_factors:
                base = _outcomes(ext, x, "none")
                if base is None:
                    continue
                found = {m: o for m in cfg.extension_methods if m != "none" and (o := _outcomes(ext, x, m))}
                tests = {m: paired_test(o, base) for m, o in found.items()}
                adjusted = dict(zip(tests, holm([t["p"] for t in tests.values()])))
                for m, o in [("none", base), *found.items()]:
                    k, total = sum(o.values()), len(o)
                    lo, hi = wilson(k, total)
                    cells = [str(n), f"`{s}`", f"{x}x", m, f"{100 * k / total:.1f} [{100 * lo:.1f}, {100 * hi:.1f}]",
                             str(total), str(len(ext))]
                    if m == "none":
                        cells += ["", "", "reference"]
                    else:
                        t, p = tests[m], adjusted[m]
                        verdict = ("better" if t["a_better"] > t["b_better"] else "worse") if p < 0.05 else "tied"
                        cells += [f"{t['a_better']} / {t['b_better']}", f"{p:.3g}", verdict]
                    body.append(cells)
    if not body:
        return PENDING
    return markdown_table(["train len", "strategy", "eval", "method", "accuracy % [95% CI], d > train len",
                           "answers", "seeds", "only method / only none right", "Holm p vs none", "verdict"], body)


def recall_assessment(cfg: RecallGridConfig, grid: dict) -> str:
    """Sentences generated from the numbers: each strategy's accuracy beyond the local reach against
    global's and local's, called different only when every seed of one is above every seed of the other
    (one-sided exact rank test, p = 0.05 with 3 seeds each)."""

    def beyond(n, s):
        return _seed_values(grid[n, s]["runs"],
                            lambda rows: (r["value"] if (r := _pick(rows, split="test", band="beyond_reach")) else None))

    lines = []
    for n in cfg.train_lengths:
        ref = {k: beyond(n, k) for k in ("global", "local") if k in cfg.strategies}
        if not all(ref.values()) or len(ref) < 2:
            lines.append(f"- {n} tokens: pending (global and local need finished cells).")
            continue
        g, loc = ref["global"], ref["local"]
        p = separated(g, loc)
        lines.append(f"- {n} tokens, the check that the quantity moves: global {mean_sd(g)} % vs local {mean_sd(loc)} % "
                     f"beyond the local reach ({len(g)} vs {len(loc)} seeds"
                     + (f", every global seed above every local one, p = {p:.2f})." if p else ", overlapping)."))
        for s in cfg.strategies:
            if s in ("global", "local"):
                continue
            vals = beyond(n, s)
            if not vals:
                lines.append(f"- {n} tokens, `{s}`: pending.")
                continue
            verdict = []
            for k, v in ref.items():
                p_hi, p_lo = separated(vals, v), separated(v, vals)
                if p_hi is not None and p_hi <= 0.05:
                    verdict.append(f"above {k} (p = {p_hi:.2f})")
                elif p_lo is not None and p_lo <= 0.05:
                    verdict.append(f"below {k} (p = {p_lo:.2f})")
                else:
                    verdict.append(f"not separated from {k} at {len(vals)} vs {len(v)} seeds")
            lines.append(f"- {n} tokens, `{s}` ({cfg.strategies[s]}): {mean_sd(vals)} % beyond the local reach "
                         f"(R = {cfg.reach(s)}), global {mean_sd(g)} %, local {mean_sd(loc)} %: "
                         + "; ".join(verdict) + ".")
    for n in cfg.train_lengths:
        for s in cfg.strategies:
            ext = grid[n, s]["extend"]
            if not ext or "G" not in cfg.strategies[s]:
                continue
            x = max(cfg.extension_factors)
            scores = {m: _seed_values(ext, lambda rows, m=m: _pooled(rows, ["beyond_train"], factor=x, method=m))
                      for m in cfg.extension_methods}
            scores = {m: v for m, v in scores.items() if v}
            if "none" not in scores or len(scores) < 2:
                continue
            best = max(scores, key=lambda m: statistics.fmean(scores[m]))
            p = separated(scores[best], scores["none"]) if best != "none" else None
            lines.append(f"- `{s}` trained at {n}, evaluated at {x * n} on answers beyond the training length: no "
                         f"method {mean_sd(scores['none'])} %, best {best} {mean_sd(scores[best])} %"
                         + (f" (above no method, p = {p:.2f})" if p is not None and p <= 0.05 else
                            " (not separated from no method)" if best != "none" else "") + ".")
    return "\n".join(lines)


def recall_figures(data: dict, out_dir) -> list[Path]:
    from ..eval.plots import _figure, _length_axis, _save

    cfg, grid, out_dir = _config(data), grid_runs(data), Path(out_dir)
    lengths = cfg.train_lengths
    fig, axes = _figure(4.2 * len(lengths), 3.4, ncols=len(lengths))
    for ax, n in zip(axes[0], lengths):
        edges = cfg.distance_edges(n)
        for k, s in enumerate(cfg.strategies):
            xs, ys, es = [], [], []
            for lo, hi in zip([0, *edges[:-1]], edges):
                vals = _seed_values(grid[n, s]["runs"], lambda rows: (
                    r["value"] if (r := _pick(rows, split="test", bucket=f"{lo + 1}-{hi}")) else None))
                if vals:
                    xs.append(hi)
                    ys.append(100 * statistics.fmean(vals))
                    es.append(100 * statistics.stdev(vals) if len(vals) > 1 else 0.0)
            if xs:
                ax.errorbar(xs, ys, yerr=es, marker="o", capsize=2, color=f"C{k}",
                            label=f"{s} ({cfg.strategies[s]})")
        for reach in sorted({cfg.reach(s) for s in cfg.strategies}):
            ax.axvline(reach, color="grey", linewidth=0.8, linestyle=":")
        _length_axis(ax, edges)
        ax.set_ylim(-2, 102)
        ax.set_title(f"trained at {n} tokens (window {cfg.window})")
        ax.set_xlabel("key-query distance (bucket upper edge)")
        ax.set_ylabel("recall accuracy % (mean ± sd over seeds)")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=6)
    drawn = [_save(fig, out_dir / "fig_recall_by_distance.png")]

    x = max(cfg.extension_factors)
    fig, axes = _figure(4.2 * len(lengths), 3.4, ncols=len(lengths))
    with_global = [s for s in cfg.strategies if "G" in cfg.strategies[s]]
    width = 0.8 / max(1, len(with_global))
    for ax, n in zip(axes[0], lengths):
        for k, s in enumerate(with_global):
            ext = grid[n, s]["extend"]
            for j, m in enumerate(cfg.extension_methods):
                vals = _seed_values(ext, lambda rows: _pooled(rows, ["beyond_train"], factor=x, method=m))
                if vals:
                    ax.bar(j + k * width, 100 * statistics.fmean(vals), width,
                           yerr=100 * statistics.stdev(vals) if len(vals) > 1 else 0, color=f"C{k}",
                           label=s if j == 0 else None, capsize=2)
        ax.set_xticks([j + width * (len(with_global) - 1) / 2 for j in range(len(cfg.extension_methods))],
                      cfg.extension_methods, fontsize=7)
        ax.set_ylim(0, 100)
        ax.set_title(f"trained at {n}, evaluated at {x * n}")
        ax.set_ylabel(f"accuracy % at d > {n}")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=6)
    drawn.append(_save(fig, out_dir / "fig_recall_extension.png"))
    return drawn
