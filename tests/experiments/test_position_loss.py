"""Test loss by token position (issue 19, item 2) against a dense per-document computation."""

from __future__ import annotations

import math

import pytest
import torch

from zebra_llm.experiments.position_loss import position_edges, position_nll, position_rows, position_table


def _model():
    from zebra_llm.modeling import ZebraConfig, ZebraForCausalLM

    torch.manual_seed(0)
    cfg = ZebraConfig(vocab_size=40, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                      num_attention_heads=2, attention="group", layer_group_size=2, window=8,
                      max_position_embeddings=64, bos_token_id=None, eos_token_id=None, pad_token_id=None)
    return ZebraForCausalLM(cfg).eval()


def test_edges():
    assert position_edges(64, 16) == [16, 32, 63]
    assert position_edges(40, 16) == [16, 32, 39]
    with pytest.raises(ValueError, match="length"):
        position_edges(1)


def test_position_nll_matches_dense_cross_entropy():
    model = _model()
    g = torch.Generator().manual_seed(1)
    docs = [torch.randint(0, 40, (n,), generator=g) for n in (50, 30, 45, 60)]  # 30 is too short for 40
    got = position_nll(model, docs, 40, [4, 16, 39])
    used = [d[:40] for d in docs if len(d) >= 40]
    per_doc = []
    for d in used:
        with torch.no_grad():
            logits = model(input_ids=d.view(1, -1), use_cache=False).logits[0, :-1]
        per_doc.append(torch.nn.functional.cross_entropy(logits, d[1:], reduction="none").double())
    nll = torch.stack(per_doc)  # [3, 39], column j = position j + 1
    for row, (lo, hi) in zip(got, [(0, 4), (4, 16), (16, 39)]):
        block = nll[:, lo:hi]
        assert (row["lo"], row["hi"], row["docs"], row["tokens"]) == (lo, hi, 3, 3 * (hi - lo))
        assert row["nll"] == pytest.approx(float(block.mean()), rel=1e-5)
        assert row["se"] == pytest.approx(float(block.mean(1).std() / math.sqrt(3)), rel=1e-4)
    with pytest.raises(ValueError, match="no document"):
        position_nll(model, docs, 100, [99])


def test_position_table_spread_over_seeds():
    model = _model()
    docs = [torch.randint(0, 40, (48,), generator=torch.Generator().manual_seed(i)) for i in range(3)]
    rows = []
    for seed in (0, 1):
        base = {"strategy": "group2", "train_len": 16, "seed": seed}
        rows += position_rows(model, docs, 32, base, first=8)
    rows[0] = rows[0] | {"value": rows[0]["value"] + 0.1}  # seeds differ in the first bucket
    text = position_table(rows, strategies=["group2", "global"], train_len=16, length=32)
    assert "| strategy | 1-8 | 9-16 | 17-31* | seeds |" in text
    assert "(n=2)" in text and "± 0.071" in text  # sd of (x, x + 0.1)
    assert "| `global` | pending | pending | pending | 0 |" in text
