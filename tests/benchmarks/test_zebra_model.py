"""benchmarks/zebra_model.py's split of a forward's time by part, at a toy size: every part of both models
is timed, the parts add up to no more than the whole forward, and the FLOPs per part add up to the
model's forward FLOPs."""

from __future__ import annotations

from helpers import ListQueue, load_benchmark


def test_breakdown_splits_both_models_forward_by_part():
    from zebra_llm import flops

    bench = load_benchmark("zebra_model")
    args = {"preset": "debug", "overrides": {}, "dtype": "float32",
            "device": "cpu", "repeats": 1, "warmup": 0, "threads": 0}
    q = ListQueue()
    bench._breakdown_case(64, args, q)
    (measured,) = q.items
    assert set(measured["zebra"]) == {"attention (global)", "attention (local)", "mlp", "lm_head", "total"}
    assert set(measured["global"]) == {"attention (global)", "mlp", "lm_head", "total"}
    zebra_cfg, dense_cfg = bench._configs(args)
    rows = bench.breakdown_rows(64, measured, zebra_cfg, dense_cfg)
    for name, cfg in (("zebra", zebra_cfg), ("global", dense_cfg)):
        mine = {r["part"]: r for r in rows if r["model"] == name}
        assert mine["other"]["seconds"] >= 0 and all(r["seconds"] > 0 for p, r in mine.items() if p != "other")
        parts = sum(r["flops"] for p, r in mine.items() if p not in ("other", "total"))
        assert parts == mine["total"]["flops"] == flops.forward_flops(cfg, 64)
    text = bench.report({"command": "x", "device": "cpu", "torch": "t", "date": "d",
                         "model": {"preset": "debug", "parameters": 1, "layers": 4, "hidden": 64, "heads": 4,
                                   "kv_heads": 2, "group": 2, "window": 16},
                         "args": {"dtype": "float32", "repeats": 1, "warmup": 0}, "rows": [], "saved": [],
                         "kv": {"seq": 64, "zebra_bytes": 1, "global_bytes": 2, "ratio": 0.5, "bound": 0.75},
                         "exponents": [], "breakdown": rows})
    assert "| 64 | zebra | attention (local) |" in text
