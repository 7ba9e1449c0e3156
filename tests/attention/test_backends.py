"""``auto`` picks kernels from measurements recorded in the repo, not guesses (issue 13)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from zebra_llm.attention import backends

PEERS = Path(__file__).resolve().parents[2] / "docs" / "results" / "performance" / "peers.json"
NAMES = {"sdpa": None, "flex": "flex_sliding"}  # backend -> peers.py variant (None: the variant itself)


def test_measured_table_matches_the_recorded_benchmark():
    data = json.loads(PEERS.read_text())
    rows = {(r["seq"], r["mode"]): r["results"] for r in data["rows"]}
    for (device, variant, mode), entry in backends.MEASURED.items():
        assert device == "cpu" and "CPU" in data["device"]  # the only device measured so far
        res = rows[(16384, mode)]
        base = res["causal_sdpa"]["seconds"]
        for backend, ratio in entry.items():
            name = NAMES[backend] or variant
            assert abs(res[name]["seconds"] / base - ratio) < 5e-4, (device, variant, mode, backend)


def test_auto_takes_the_fastest_usable_measured_backend(monkeypatch):
    q = torch.randn(1, 2, 8, 4)
    monkeypatch.setitem(backends.MEASURED, ("cpu", "local", "fwd"), {"reference": 0.01, "sdpa": 0.5})
    assert backends._auto("local", q, padded=False) == "sdpa"  # the oracle is never a fast path
    q.requires_grad_(True)
    monkeypatch.setitem(backends.MEASURED, ("cpu", "local", "fwd+bwd"), {})
    assert backends._auto("local", q, padded=False) == "sdpa"  # unmeasured: the static rule
    monkeypatch.setitem(backends.MEASURED, ("cpu", "local", "fwd"), {"flex": 0.01, "sdpa": 0.5})
    assert backends._auto("local", q.detach(), padded=False) == "sdpa"  # flex is not usable on CPU
