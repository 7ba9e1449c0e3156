"""Test loss by token position, the direct reading of "is long context used" (issue 19, item 2).

A language model that uses its context predicts later tokens of a document better than early ones, so its
loss falls with position; past the window, only layers that see beyond it can keep it falling. For each
test document of at least ``length`` tokens, the first ``length`` tokens are scored in one forward and the
negative log-likelihood of every predicted token (positions ``1 .. length - 1``) is added to its position
bucket (``lo < position <= hi``, powers of two from ``first``). Spread: the standard error over documents
of each document's bucket mean, and across seeds the sample standard deviation of the bucket means
(:func:`position_table`).

Meant for the language-model strategy cells (:mod:`.strategies`): ``position_rows(model, data.test, ...)``
beside ``test_rows`` in ``train_run``, at the training length and beyond it (with and without DCA on the
global layers); :func:`position_table` reads the rows back from ``results.json``.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence

import torch


def position_edges(length: int, first: int = 16) -> list[int]:
    """Bucket upper edges ``first, 2 first, ... , length - 1`` (the last predicted position)."""
    if length < 2:
        raise ValueError(f"length must be >= 2 (one predicted token), got {length}")
    edges, e = [], max(1, first)
    while e < length - 1:
        edges.append(e)
        e *= 2
    return edges + [length - 1]


@torch.no_grad()
def position_nll(model, docs: Sequence[torch.Tensor], length: int, edges: Sequence[int], *,
                 max_docs: int | None = None) -> list[dict]:
    """Per bucket of positions: ``{"lo", "hi", "tokens", "docs", "nll", "se"}``, ``nll`` the mean over
    every token of the bucket, ``se`` the standard error over documents of their bucket means. Only
    documents of at least ``length`` tokens count (their first ``length`` tokens)."""
    from ..eval.loss import token_nll

    long = [d for d in docs if len(d) >= length][: max_docs or None]
    if not long:
        raise ValueError(f"position loss: no document has {length} tokens or more")
    was = model.training
    model.eval()
    device = next(model.parameters()).device
    per_doc = []
    try:
        for d in long:
            per_doc.append(token_nll(model, d[:length].view(1, -1).to(device))[0].double().cpu())  # positions 1..
    finally:
        model.train(was)
    nll = torch.stack(per_doc)  # [docs, length - 1]; column j is the token at position j + 1
    pos = torch.arange(1, length)
    rows, lo = [], 0
    for hi in edges:
        sel = (pos > lo) & (pos <= hi)
        if sel.any():
            means = nll[:, sel].mean(1)
            se = float(means.std(unbiased=True) / math.sqrt(len(means))) if len(means) > 1 else float("nan")
            rows.append({"lo": lo, "hi": int(hi), "tokens": int(sel.sum()) * len(long), "docs": len(long),
                         "nll": float(nll[:, sel].mean()), "se": se})
        lo = hi
    return rows


def position_rows(model, docs, length: int, base: dict, *, method: str = "none", first: int = 16,
                  max_docs: int | None = None) -> list[dict]:
    """Result rows (``split = "position"``) of :func:`position_nll` at ``length`` for a cell's ``base`` row."""
    return [{**base, "split": "position", "metric": "nll", "length": length, "method": method,
             "bucket": f"{r['lo'] + 1}-{r['hi']}", "value": r["nll"], **r}
            for r in position_nll(model, docs, length, position_edges(length, first), max_docs=max_docs)]


def position_table(rows: Sequence[dict], *, strategies: Sequence[str], train_len: int, length: int,
                   method: str = "none") -> str:
    """Markdown: one row per strategy, one column per position bucket, the test loss (nats per token) as
    mean ± sd over the seeds found (± the standard error over documents when there is one seed); buckets
    past ``train_len`` marked ``*``."""
    from .markdown import markdown_table

    mine = [r for r in rows if r.get("split") == "position" and r.get("train_len") == train_len
            and r.get("length") == length and r.get("method", "none") == method]
    buckets = sorted({(r["lo"], r["hi"]) for r in mine})
    body = []
    for s in strategies:
        row = [f"`{s}`"]
        for lo, hi in buckets:
            vals = [r for r in mine if r["strategy"] == s and r["lo"] == lo]
            if not vals:
                row.append("pending")
            elif len(vals) == 1:
                se = vals[0]["se"]
                row.append(f"{vals[0]['value']:.3f}" + ("" if math.isnan(se) else f" ± {se:.3f}"))
            else:
                v = [x["value"] for x in vals]
                row.append(f"{statistics.fmean(v):.3f} ± {statistics.stdev(v):.3f} (n={len(v)})")
        row.append(str(len({r.get('seed') for r in mine if r["strategy"] == s})))
        body.append(row)
    header = ["strategy"] + [f"{lo + 1}-{hi}" + ("*" if hi > train_len else "") for lo, hi in buckets] + ["seeds"]
    return markdown_table(header, body)


__all__ = ["position_edges", "position_nll", "position_rows", "position_table"]
