"""benchmarks/peers.py's report: the per-pair cost rows divide each kernel's time by the (query, key) pairs
it attends (``zebra_llm.flops``) against causal SDPA's, and the profile section lists the ops it was given."""

from __future__ import annotations

from helpers import load_benchmark


def _data(profile=None):
    n, w = 4096, 512
    causal_pairs = n * (n + 1) // 2
    local_pairs = w * (w + 1) // 2 + (n - w) * w
    return {
        "command": "x", "device": "cpu", "torch": "t", "date": "d", "exponents": [], "profile": profile,
        "args": {"heads": 8, "head_dim": 64, "window": w, "chunk_size": 512, "dtype": "float32", "repeats": 1,
                 "variants": ["causal_sdpa", "local"]},
        # local costs exactly twice causal SDPA's time per pair
        "rows": [{"seq": n, "mode": "fwd", "results": {"causal_sdpa": {"seconds": 1.0, "peak_bytes": 1},
                                                       "local": {"seconds": 2.0 * local_pairs / causal_pairs,
                                                                 "peak_bytes": 1}}}],
    }


def test_pair_cost_is_time_per_attended_pair_relative_to_causal():
    peers = load_benchmark("peers")
    lines = peers._pair_cost_lines(_data())
    assert lines[-1] == "| 4096 | fwd | `local` 2.00 |"


def test_profile_section_lists_the_ops():
    peers = load_benchmark("peers")
    prof = {"seq": 4096, "ops": {"fwd": [{"op": "aten::foo", "share": 0.75, "self_ms_per_call": 3.0}]}}
    text = peers.report(_data(prof))
    assert "| fwd | `aten::foo` | 75.0% | 3.0 |" in text
    assert "Where `local`'s time goes at 4096" in text
    assert "Where `local`'s time goes" not in peers.report(_data())
