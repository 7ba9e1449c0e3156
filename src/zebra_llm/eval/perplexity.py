"""Perplexity at fixed lengths, over strided windows, and by length bucket.

Three protocols, each a plan of token segments scored with :func:`token_nll`:

* ``fixed``: the first N tokens of every document with at least N tokens (the
  DCA paper's Table 1 protocol on PG19, An et al. 2024 section 4.1); by default
  (``same_docs``) only the documents long enough for the longest length, at
  every length, so that lengths differ by context only.
* ``windows``: windows of N tokens every ``stride`` tokens through each
  document. With ``stride < N`` the windows overlap and each window scores
  only the tokens the previous one did not (transformers' "perplexity of
  fixed-length models" protocol), so every scored token has at least
  ``N - stride`` tokens of context; only whole windows are used. ``stride``
  must not exceed ``N``: a larger one would skip the tokens between windows.
* ``buckets``: whole documents grouped by length, bucket ``x`` holding the
  documents of ``x/2 + 1 .. x`` tokens (the Zebra paper's Figures 2 and 4,
  Song et al. 2023 section 4).

Perplexity is ``exp(sum of NLL / number of scored tokens)`` over a group (all
documents of one method and length), i.e. token-weighted. Each item also keeps
its NLL sums per block of ``BLOCK`` positions, for perplexity by position, and
the NLL sum and count of its last quarter of positions (``tail_nll``,
``tail_tokens``: the targets at positions ``>= 3 * T // 4`` of a T-token
segment), from which ``ppl_last_quarter`` is computed exactly at any length.
"""

from __future__ import annotations

import gc
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from dataclasses import field as dc_field

import torch

from .corpus import TokenDocs, load_token_docs
from .loss import DEFAULT_LOSS_CHUNK, check_loss_path, token_nll
from .loaded import item_records, load_for_run
from .method_spec import MethodSpec, check_plan, parse_methods
from .progress import progress_bar
from .results import ResultsFile, group_rows

MODES = ("fixed", "windows", "buckets")
BLOCK = 512  # positions per block of the per-position NLL sums


@dataclass(frozen=True)
class Segment:
    """Tokens ``ids[doc][start:end]`` fed to the model; targets ``score_from .. end - 1`` (absolute) scored."""

    doc: int
    name: str
    start: int
    end: int
    score_from: int
    group: int  # the length (fixed, windows) or bucket this segment counts towards

    @property
    def length(self) -> int:
        return self.end - self.start


def fixed_segments(
    docs: TokenDocs, length: int, *, max_docs: int | None = None, min_doc_length: int | None = None
) -> list[Segment]:
    """The first ``length`` tokens of each document that has at least ``min_doc_length``
    (default ``length``) tokens."""
    if length < 2:
        raise ValueError(f"length must be >= 2, got {length}")
    need = max(length, min_doc_length or 0)
    segs = [
        Segment(i, docs.names[i], 0, length, 1, length)
        for i, t in enumerate(docs.ids)
        if len(t) >= need
    ]
    if not segs:
        raise docs.too_short(need, f"perplexity at length {length}" + (
            f" on the documents of the longest length {need}" if need > length else ""))
    return segs[:max_docs] if max_docs else segs


def window_segments(
    docs: TokenDocs, length: int, stride: int, *, max_windows: int | None = None
) -> list[Segment]:
    """Windows of ``length`` tokens every ``stride`` tokens; overlapping tokens are scored once."""
    if length < 2:
        raise ValueError(f"length must be >= 2, got {length}")
    if stride < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")
    if stride > length:
        raise ValueError(
            f"stride ({stride}) must not exceed the window length ({length}): a larger stride leaves the "
            f"{stride - length} tokens between windows unscored"
        )
    segs = []
    for i, t in enumerate(docs.ids):
        start = 0
        while start + length <= len(t):
            # The first window scores all of its targets; later ones only the `stride` new tokens.
            first = start + 1 if start == 0 or stride >= length else start + length - stride
            segs.append(Segment(i, docs.names[i], start, start + length, first, length))
            start += stride
    if not segs:
        raise docs.too_short(length, f"a window of {length} tokens")
    return segs[:max_windows] if max_windows else segs


def bucket_segments(docs: TokenDocs, buckets: Sequence[int], *, max_docs: int | None = None) -> list[Segment]:
    """Whole documents, bucket ``x`` holding those of ``x // 2 + 1 .. x`` tokens (the Zebra paper's protocol)."""
    if not buckets:
        raise ValueError("buckets: give at least one bucket length")
    segs = []
    for x in sorted(set(buckets)):
        if x < 4:
            raise ValueError(f"bucket lengths must be >= 4, got {x}")
        members = [
            Segment(i, docs.names[i], 0, len(t), 1, x)
            for i, t in enumerate(docs.ids)
            if x // 2 < len(t) <= x
        ]
        segs.extend(members[:max_docs] if max_docs else members)
    if not segs:
        lengths = sorted(docs.lengths())
        raise ValueError(
            f"data: no document of {docs.source} falls in any bucket {sorted(set(buckets))} "
            f"(bucket x holds documents of x/2+1..x tokens; the documents have {lengths[0]}..{lengths[-1]} tokens)"
        )
    return segs


def _block_sums(nll: torch.Tensor, first_pos: int) -> tuple[list[float], list[int]]:
    """Sums and counts of ``nll`` (targets at segment positions ``first_pos ..``) per block of BLOCK positions."""
    positions = torch.arange(first_pos, first_pos + nll.numel())
    blocks = positions // BLOCK
    n = int(blocks[-1]) + 1
    sums = torch.zeros(n, dtype=torch.float64).index_add_(0, blocks, nll.double().cpu())
    counts = torch.bincount(blocks, minlength=n)
    return sums.tolist(), counts.tolist()


def score_segments(
    model,
    docs: TokenDocs,
    segments: Sequence[Segment],
    *,
    batch_size: int = 1,
    loss_chunk: int = DEFAULT_LOSS_CHUNK,
    device=None,
):
    """Yield ``(segment, item)`` for each segment, batching segments of equal shape.

    ``item`` holds ``nll_sum``, ``tokens`` (targets scored), ``ppl`` and the per-block sums.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    device = device or next(model.parameters()).device
    pending: list[Segment] = []

    def flush():
        ids = torch.stack([docs.ids[s.doc][s.start : s.end] for s in pending]).to(device)  # [B, T]
        rel = pending[0].score_from - pending[0].start
        nll = token_nll(model, ids, score_from=rel, chunk=loss_chunk)  # [B, T - rel]
        for s, row in zip(pending, nll):
            sums, counts = _block_sums(row, rel)
            total = float(row.double().sum())
            n = row.numel()
            # targets at segment positions rel .. length-1; the last quarter starts at 3 * length // 4
            tail = row[max(0, (3 * s.length) // 4 - rel):]
            yield s, {
                "nll_sum": total,
                "tokens": n,
                "ppl": math.exp(total / n),
                "block": BLOCK,
                "block_nll": sums,
                "block_tokens": counts,
                "tail_nll": float(tail.double().sum()),
                "tail_tokens": tail.numel(),
            }

    for seg in segments:
        if pending and (
            len(pending) >= batch_size
            or seg.length != pending[0].length
            or seg.score_from - seg.start != pending[0].score_from - pending[0].start
        ):
            yield from flush()
            pending = []
        pending.append(seg)
    if pending:
        yield from flush()


def perplexity(
    model, input_ids: torch.Tensor, *, score_from: int = 1, loss_chunk: int = DEFAULT_LOSS_CHUNK
) -> float:
    """Perplexity of ``input_ids`` (``[seq]`` or ``[batch, seq]``), token-weighted over the batch.

    The first ``score_from`` tokens are context only, so at least ``score_from + 1`` tokens are needed.
    """
    if not isinstance(input_ids, torch.Tensor) or input_ids.dim() not in (1, 2):
        raise ValueError("perplexity: input_ids must be a 1D [seq] or 2D [batch, seq] tensor of token ids")
    ids = input_ids if input_ids.dim() == 2 else input_ids[None]
    if ids.shape[0] < 1 or ids.shape[1] <= max(score_from, 0):
        raise ValueError(
            f"perplexity: input_ids has {ids.shape[1]} token(s) per sequence; at least score_from + 1 = "
            f"{max(score_from, 0) + 1} are needed (the first token has no prediction to score)"
        )
    ids = ids.to(next(model.parameters()).device)
    nll = token_nll(model, ids, score_from=score_from, chunk=loss_chunk)
    return math.exp(nll.double().mean().item())


# ------------------------------------------------------------------ the run


@dataclass
class PerplexityConfig:
    """Everything ``zebra eval ppl`` does; validated at construction."""

    model: str = "smollm2"
    methods: list[str] = dc_field(default_factory=lambda: ["none"])
    data: str | None = None
    field: str = "text"
    split: str = "train"
    doc_limit: int | None = None
    concat: bool = False
    mode: str = "fixed"
    lengths: list[int] = dc_field(default_factory=lambda: [4096])
    stride: int | None = None
    buckets: list[int] = dc_field(default_factory=list)
    max_docs: int | None = None
    same_docs: bool = True  # fixed mode: every length on the documents long enough for the longest
    batch_size: int = 1
    loss_chunk: int = DEFAULT_LOSS_CHUNK
    dtype: str = "float32"
    device: str | None = None
    encoding: str = "utf-8"  # of local text files (strict: an undecodable byte is an error naming its offset)
    allow_missing_weights: bool = False  # load a model whose files lack weights (see loading.load_model's strict)

    def __post_init__(self):
        from ..data.sources import check_encoding

        check_encoding(self.encoding)
        self.methods = [str(m) for m in parse_methods(self.methods)]
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if self.mode == "buckets":
            if not self.buckets:
                raise ValueError("mode buckets needs --buckets (e.g. 4096,8192,16384)")
        elif not self.lengths:
            raise ValueError("lengths: give at least one length")
        for n in self.lengths:
            if n < 2:
                raise ValueError(f"lengths must be >= 2, got {n}")
        if self.mode == "windows":
            if self.stride is None:
                raise ValueError("mode windows needs --stride")
            if self.stride < 1:
                raise ValueError(f"stride must be >= 1, got {self.stride}")
            if self.stride > min(self.lengths):
                raise ValueError(
                    f"stride ({self.stride}) must not exceed the window length ({min(self.lengths)}): a larger "
                    "stride leaves the tokens between windows unscored"
                )
        for name in ("batch_size", "loss_chunk"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("max_docs", "doc_limit"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")

    @property
    def groups(self) -> list[int]:
        return sorted(set(self.buckets)) if self.mode == "buckets" else list(self.lengths)

    def identity(self) -> dict:
        """What per-item numbers depend on (methods and lengths may grow between resumed runs)."""
        out = {
            k: v
            for k, v in asdict(self).items()
            if k not in ("methods", "lengths", "buckets", "batch_size", "device", "max_docs", "same_docs",
                         "allow_missing_weights")
        }
        if out.get("encoding") == "utf-8":
            del out["encoding"]  # the default: results files written before the option existed still resume
        return out


def plan_segments(config: PerplexityConfig, docs: TokenDocs) -> list[Segment]:
    if config.mode == "fixed":
        # The same documents at every length (those long enough for the longest), so that the numbers
        # of different lengths differ by context only, as on PG19 in the DCA paper's Table 1.
        floor = max(config.lengths) if config.same_docs else None
        return [s for n in config.lengths
                for s in fixed_segments(docs, n, max_docs=config.max_docs, min_doc_length=floor)]
    if config.mode == "windows":
        return [
            s for n in config.lengths for s in window_segments(docs, n, config.stride, max_windows=config.max_docs)
        ]
    return bucket_segments(docs, config.buckets, max_docs=config.max_docs)


def summarize_perplexity(items: list[dict]) -> list[dict]:
    def reduce(members):
        nll = sum(m["nll_sum"] for m in members)
        n = sum(m["tokens"] for m in members)
        row = {"ppl": math.exp(nll / n), "nll": nll / n, "docs": len(members), "tokens": n}
        # the last quarter of the positions: where extrapolation failures show first. Items written
        # before tail_nll existed are summed from their 512-position blocks, which is exact only when
        # the quarter starts on a block border; otherwise the column is left out rather than mislabelled.
        tail = [_tail_nll(m) for m in members]
        if all(t is not None for t in tail):
            tail_n = sum(t[1] for t in tail)
            if tail_n:
                row["ppl_last_quarter"] = math.exp(sum(t[0] for t in tail) / tail_n)
        return row

    return group_rows(items, ("method", "length"), reduce)


def _tail_nll(item: dict) -> tuple[float, int] | None:
    """NLL sum and count over the last quarter of the item's positions (targets at positions
    ``>= 3 * T // 4`` of its T-token segment); None when the item does not allow it exactly."""
    if "tail_nll" in item:
        return item["tail_nll"], item["tail_tokens"]
    sums, counts = item.get("block_nll"), item.get("block_tokens")
    block = item.get("block", BLOCK)
    length = item.get("end", 0) - item.get("start", 0)
    if not sums or length <= 0 or ((3 * length) // 4) % block:
        return None
    start = (3 * length) // 4 // block
    return sum(sums[start:]), sum(counts[start:])


def run_perplexity(
    config: PerplexityConfig,
    output=None,
    *,
    resume: bool = True,
    progress: bool = True,
    model_objects: dict | None = None,
) -> dict:
    """Run ``config``; returns the results dict (also written to ``output`` when given).

    ``model_objects`` maps a method spec to an already-loaded ``(model, tokenizer)``
    to use instead of loading ``config.model`` (library use).
    """
    results = ResultsFile(
        output,
        kind="ppl",
        config=asdict(config),
        identity=config.identity(),
        key_fields=("method", "length", "doc", "start"),
        resume=resume,
    )
    methods = [MethodSpec.parse(m) for m in config.methods]
    if not model_objects:
        check_plan(config.model, methods, config.groups)  # fail fast, before any work
    docs = None
    segments: list[Segment] | None = None
    for i, spec in enumerate(methods):
        loaded = load_for_run(config, spec, model_objects, lengths=config.groups)
        spec = methods[i] = loaded.method  # as it runs: a saved method's settings in the label (issue 25.2)
        if docs is None:
            docs = load_token_docs(
                loaded.tokenizer, config.data, field=config.field, split=config.split,
                limit=config.doc_limit, concat=config.concat, encoding=config.encoding,
            )
            segments = plan_segments(config, docs)
        results.set_model(str(spec), loaded.description)
        record = item_records(config, loaded, model_objects)  # what produced each item (issue 25.1)
        made = {s: record(docs.ids[s.doc][s.start:s.end]) for s in segments}
        todo = [s for s in segments
                if results.reuse(made[s], method=str(spec), length=s.group, doc=s.name, start=s.start) is None]
        if todo:
            check_loss_path(loaded.model)
            bar = progress_bar(total=sum(s.length for s in todo), desc=f"ppl {spec}", unit="tok", enable=progress)
            for seg, item in score_segments(
                loaded.model, docs, todo, batch_size=config.batch_size, loss_chunk=config.loss_chunk
            ):
                results.add({"method": str(spec), "length": seg.group, "doc": seg.name, "start": seg.start,
                             "end": seg.end, "score_from": seg.score_from, **item, "produced_by": made[seg]})
                bar.update(seg.length)
            bar.close()
        del loaded
        gc.collect()
    # The summary covers this run's plan only (a resumed file may hold items of other plans).
    planned = {(str(m), s.group, s.name, s.start) for m in methods for s in segments}
    return results.finish("ppl", summarize_perplexity(
        [i for i in results.items if (i["method"], i["length"], i["doc"], i["start"]) in planned]
    ))

