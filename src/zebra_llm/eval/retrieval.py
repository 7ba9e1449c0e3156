"""Retrieval evaluations (passkey, needle in a haystack): prompts of exact token
lengths with a fact hidden at a chosen depth, greedy decoding, exact-match scoring.

A task (:mod:`.passkey`, :mod:`.needle`) builds one :class:`RetrievalPrompt`
per (length, depth, trial) and scores the model's continuation. This module
runs the grid for each method and stores one item per trial.

Cost on a CPU is dominated by prefill, so two things are shared where exact:

* **The prefix's KV cache.** The trials of one (length, depth) differ only from
  the needle on (the haystack before it is the same), so the prefix is
  prefilled once and each trial continues from a copy of its cache. For a
  causal model this gives the same logits as a full prefill; it is not exact
  for dynamic NTK, whose frequencies depend on each call's length, so methods
  declare it (``MethodSpec.prefix_cache_exact``) and dynamic NTK prefills in full.
* **Batches.** With ``batch_size > 1`` trials of equal length decode together.
"""

from __future__ import annotations

import copy
import gc
import random
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from dataclasses import field as dc_field
from typing import Protocol

import torch

from ..hf import CACHE_KWARG
from .loaded import LoadedModel, item_records, load_for_run
from .method_spec import MethodSpec, check_plan, parse_methods
from .progress import progress_bar
from .results import ResultsFile, group_rows

DEFAULT_DEPTHS = (0.0, 0.25, 0.5, 0.75, 1.0)


def check_run_sizes(lengths, trials: int, max_new_tokens: int | None) -> None:
    """The checks every generation task's config makes (passkey, needle, RULER)."""
    if not lengths:
        raise ValueError("lengths: give at least one length")
    for n in lengths:
        if n < 2:
            raise ValueError(f"lengths must be >= 2, got {n}")
    if trials < 1:
        raise ValueError(f"trials must be >= 1, got {trials}")
    if max_new_tokens is not None and max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")


@dataclass
class RetrievalPrompt:
    """Prompt ids (``prefix + rest``): ``prefix`` is shared by all trials of one (length, depth)."""

    prefix: list[int]
    rest: list[int]
    answer: str
    needle_position: int  # index of the first needle token

    @property
    def ids(self) -> list[int]:
        return self.prefix + self.rest

    def __len__(self) -> int:
        return len(self.prefix) + len(self.rest)


class RetrievalTask(Protocol):
    name: str

    def build(self, tokenizer, length: int, depth: float, rng: random.Random) -> RetrievalPrompt: ...

    def score(self, output: str, answer: str) -> bool: ...

    def describe(self) -> dict: ...


def first_number_matches(output: str, answer: str) -> bool:
    """Exact match: the first run of digits in ``output`` is exactly ``answer``.

    "12345." and " 12345 is the key" match 12345; "1234", "123456", "12354"
    and "1 2345" do not.
    """
    found = re.search(r"\d+", output)
    return found is not None and found.group(0) == answer


def number_in_answer(output: str, answer: str) -> bool:
    """String match as RULER scores it: ``answer`` appears in ``output`` as a whole number.

    "The access code of project sparrow-921 is 18271." matches 18271 (the first-number rule of
    :func:`first_number_matches` would read 921); "182710" and "118271" do not match 18271.
    """
    return re.search(rf"(?<!\d){re.escape(answer)}(?!\d)", output) is not None


def split_filler(total: int, unit: list[int], depth: float) -> tuple[list[int], list[int]]:
    """``total`` filler tokens made of whole repetitions of ``unit``, split at ``depth``.

    The ``total % len(unit)`` leftover tokens (the end of one unit) open the
    filler so that every sentence around the needle is whole; the whole units
    are divided ``round(depth * n)`` before the needle and the rest after.
    """
    if total < 0:
        raise ValueError(f"filler size must be >= 0, got {total}")
    n, r = divmod(total, len(unit))
    before = round(depth * n)
    head = unit[len(unit) - r :] if r else []
    return head + unit * before, unit * (n - before)


def encode(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def bos(tokenizer) -> list[int]:
    return [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []


def check_depths(depths: Sequence[float]) -> list[float]:
    depths = [float(d) for d in depths]
    if not depths:
        raise ValueError("depths: give at least one depth")
    for d in depths:
        if not 0.0 <= d <= 1.0:
            raise ValueError(f"depths must be in [0, 1], got {d}")
    return depths


# ----------------------------------------------------------------- decoding


@torch.no_grad()
def greedy_continuations(
    model,
    tokenizer,
    prompts: Sequence[list[int]],
    *,
    max_new_tokens: int,
    prefix_len: int = 0,
    prefix_cache=None,
) -> list[str]:
    """Greedy continuations of equal-length prompts, decoded as text (special tokens dropped).

    With ``prefix_cache`` (the KV cache of the prompts' first ``prefix_len``
    tokens, batch 1) each prompt continues from a copy of it.
    """
    device = next(model.parameters()).device
    ids = torch.tensor(prompts, dtype=torch.long, device=device)  # [B, T]
    kwargs = {}
    if prefix_cache is not None:
        cache = copy.deepcopy(prefix_cache)
        if ids.shape[0] > 1:
            cache.batch_repeat_interleave(ids.shape[0])
        kwargs[CACHE_KWARG] = cache
    out = model.generate(
        input_ids=ids,
        attention_mask=torch.ones_like(ids),
        max_new_tokens=max_new_tokens,
        do_sample=False,
        num_beams=1,
        temperature=None,
        top_p=None,
        top_k=None,
        pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
        **kwargs,
    )
    return tokenizer.batch_decode(out[:, ids.shape[1] :], skip_special_tokens=True)


@torch.no_grad()
def prefill_cache(model, prefix: list[int]):
    """KV cache of ``prefix`` (batch 1), computing logits for the last position only."""
    from transformers import DynamicCache

    device = next(model.parameters()).device
    ids = torch.tensor([prefix], dtype=torch.long, device=device)
    cache = DynamicCache(config=model.config)
    model(input_ids=ids, use_cache=True, logits_to_keep=1, **{CACHE_KWARG: cache})
    return cache


def _common_prefix(seqs: Sequence[list[int]]) -> int:
    n = min(len(s) for s in seqs)
    for i in range(n):
        t = seqs[0][i]
        if any(s[i] != t for s in seqs[1:]):
            return i
    return n


# ----------------------------------------------------------------- the run


@dataclass
class RetrievalConfig:
    """A retrieval grid: methods x lengths x depths x trials."""

    model: str = "smollm2"
    methods: list[str] = dc_field(default_factory=lambda: ["none"])
    lengths: list[int] = dc_field(default_factory=lambda: [4096])
    depths: list[float] = dc_field(default_factory=lambda: list(DEFAULT_DEPTHS))
    trials: int = 2
    seed: int = 0
    batch_size: int = 1
    max_new_tokens: int | None = None
    reuse_prefix: bool = True
    dtype: str = "float32"
    device: str | None = None

    def __post_init__(self):
        self.methods = [str(m) for m in parse_methods(self.methods)]
        check_run_sizes(self.lengths, self.trials, self.max_new_tokens)
        self.depths = check_depths(self.depths)
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")

    def identity(self) -> dict:
        return {k: v for k, v in asdict(self).items()
                if k not in ("methods", "lengths", "depths", "trials", "batch_size", "device", "reuse_prefix")}


def trial_rng(seed: int, length: int, depth: float, trial: int) -> random.Random:
    """The same keys for every method and every resumed run."""
    return random.Random(f"{seed}/{length}/{depth:.6f}/{trial}")


def summarize_retrieval(items: list[dict]) -> list[dict]:
    def reduce(members):
        correct = sum(bool(m["correct"]) for m in members)
        return {"accuracy": correct / len(members), "correct": correct, "trials": len(members)}

    by_depth = group_rows(items, ("method", "length", "depth"), reduce)
    overall = group_rows(items, ("method", "length"), reduce)
    for row in overall:
        row["depth"] = "all"
    return by_depth + overall


def run_retrieval(
    task: RetrievalTask,
    config: RetrievalConfig,
    output=None,
    *,
    resume: bool = True,
    progress: bool = True,
    model_objects: dict | None = None,
    task_config: dict | None = None,
) -> dict:
    """Run ``task`` over ``config``'s grid; returns the results dict (also written to ``output``)."""
    identity = {**config.identity(), "task": task.describe()}
    results = ResultsFile(
        output,
        kind=task.name,
        config={**asdict(config), **(task_config or {}), "task": task.describe()},
        identity=identity,
        key_fields=("method", "length", "depth", "trial"),
        resume=resume,
    )
    methods = [MethodSpec.parse(m) for m in config.methods]
    if not model_objects:
        check_plan(config.model, methods, config.lengths)  # fail fast, before any work
    for i, spec in enumerate(methods):
        loaded = load_for_run(config, spec, model_objects, lengths=config.lengths)
        spec = methods[i] = loaded.method  # as it runs: a saved method's settings in the label (issue 25.2)
        results.set_model(str(spec), loaded.description)
        record = item_records(config, loaded, model_objects)  # what produced each item (issue 25.1)
        made, cells = {}, []
        for n in config.lengths:
            for d in config.depths:
                for t in range(config.trials):
                    prompt = task.build(loaded.tokenizer, n, d, trial_rng(config.seed, n, d, t))
                    made[n, d, t] = record(prompt.ids)
                todo = [t for t in range(config.trials)
                        if results.reuse(made[n, d, t], method=str(spec), length=n, depth=d, trial=t) is None]
                if todo:
                    cells.append((n, d, todo))
        bar = progress_bar(total=sum(len(c[2]) for c in cells), desc=f"{task.name} {spec}", enable=progress)
        for n, d, todo in cells:
            for item in _run_cell(task, loaded, config, n, d, todo):
                results.add({**item, "produced_by": made[n, d, item["trial"]]})
                bar.update(1)
        bar.close()
        del loaded
        gc.collect()
    keep = {str(m) for m in methods}
    return results.finish(task.name, [r for r in summarize_retrieval(results.items)
                                      if r["method"] in keep and r["length"] in config.lengths])


def _run_cell(task, loaded: LoadedModel, config: RetrievalConfig, length: int, depth: float, trials: list[int]):
    tok = loaded.tokenizer
    prompts = {t: task.build(tok, length, depth, trial_rng(config.seed, length, depth, t)) for t in trials}
    for p in prompts.values():
        if len(p) != length:  # a bug in a task, never the user's input
            raise RuntimeError(f"{task.name} built a prompt of {len(p)} tokens for length {length}")
    answers_len = max(len(encode(tok, p.answer)) for p in prompts.values())
    max_new = config.max_new_tokens or answers_len + 4
    prefix_len, cache = 0, None
    if config.reuse_prefix and loaded.method.prefix_cache_exact:
        # Shared by every trial (capped so that each prompt keeps at least one token to feed).
        prefix_len = min(_common_prefix([p.ids for p in prompts.values()]), length - 1)
        if prefix_len >= 1:
            cache = prefill_cache(loaded.model, prompts[trials[0]].ids[:prefix_len])
    for start in range(0, len(trials), config.batch_size):
        batch = trials[start : start + config.batch_size]
        outputs = greedy_continuations(
            loaded.model, tok, [prompts[t].ids for t in batch], max_new_tokens=max_new,
            prefix_len=prefix_len, prefix_cache=cache,
        )
        for t, text in zip(batch, outputs):
            p = prompts[t]
            yield {
                "method": str(loaded.method),
                "length": length,
                "depth": depth,
                "trial": t,
                "answer": p.answer,
                "output": text,
                "correct": bool(task.score(text, p.answer)),
                "needle_position": p.needle_position,
                "needle_depth": p.needle_position / length,
            }

