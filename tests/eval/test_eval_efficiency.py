import pytest
import torch

from zebra_llm import hf
from zebra_llm.eval.efficiency import BenchConfig, PeakMemory, cache_bytes, measure, run_bench, summarize_bench

from eval_helpers import tiny_llama


def test_cache_bytes_counts_every_layer():
    from transformers import DynamicCache

    model = tiny_llama(100)
    cache = DynamicCache(config=model.config)
    with torch.no_grad():
        model(torch.randint(0, 100, (2, 30)), use_cache=True, **hf.cache_kwargs(cache))
    c = model.config
    head_dim = c.hidden_size // c.num_attention_heads
    expected = c.num_hidden_layers * 2 * (2 * c.num_key_value_heads * 30 * head_dim) * 4  # K and V, float32
    assert cache_bytes(cache) == expected


def test_peak_memory_sees_a_large_allocation():
    with PeakMemory(torch.device("cpu")) as mem:
        x = torch.ones(64, 1024, 1024)  # 256 MiB, touched
        time_spent = x.sum().item()
        del x
    assert time_spent > 0 and mem.peak is not None
    assert mem.peak >= 200 * 2**20


def test_measure_tiny_model():
    model = tiny_llama(100)
    r = measure(model, 40, decode_tokens=5, repeats=2, batch_size=2)
    assert r["prefill_s"] > 0 and r["decode_tokens_per_s"] > 0
    assert r["kv_cache_bytes"] > 0
    # after 5 decode steps the cache holds 45 positions instead of 40
    assert r["kv_cache_bytes_after_decode"] * 40 == r["kv_cache_bytes"] * 45


def test_run_bench_in_process_with_baseline_and_ratios(tiny_model_dir, tmp_path):
    config = BenchConfig(model=str(tiny_model_dir), methods=["yarn:factor=2"], lengths=[32, 300],
                         decode_tokens=3, isolate=False)
    assert config.methods == ["none", "yarn:factor=2"]  # the baseline always comes first
    data = run_bench(config, tmp_path / "bench.json", progress=False)
    rows = {(r["method"], r["length"]): r for r in data["summary"]}
    assert set(rows) == {("none", 32), ("none", 300), ("yarn:factor=2", 32), ("yarn:factor=2", 300)}
    assert rows[("none", 300)]["prefill_time_ratio"] == 1.0
    # same architecture, same cache: the KV-cache ratio is exactly 1
    assert rows[("yarn:factor=2", 300)]["kv_cache_ratio"] == 1.0
    assert rows[("none", 300)]["kv_cache_bytes"] == rows[("none", 32)]["kv_cache_bytes"] * 300 // 32
    # none is exempt from its limit (256 here) in the bench; other methods are not
    with pytest.raises(ValueError, match="above what method linear:factor=1 supports"):
        run_bench(BenchConfig(model=str(tiny_model_dir), methods=["linear:factor=1"], lengths=[300],
                              isolate=False), progress=False)


def test_run_bench_isolated_process(tiny_model_dir):
    data = run_bench(BenchConfig(model=str(tiny_model_dir), lengths=[50], decode_tokens=2), progress=False)
    (row,) = data["summary"]
    assert row["method"] == "none" and row["peak_bytes"] is not None and row["prefill_s"] > 0


def test_summarize_bench_ratios():
    items = [
        {"method": "none", "length": 8, "prefill_s": 2.0, "decode_tokens_per_s": 10.0, "peak_bytes": 100,
         "kv_cache_bytes": 40, "flops": None},
        {"method": "dca", "length": 8, "prefill_s": 3.0, "decode_tokens_per_s": 5.0, "peak_bytes": 150,
         "kv_cache_bytes": 40, "flops": None},
    ]
    dca = summarize_bench(items)[1]
    assert dca["prefill_time_ratio"] == 1.5 and dca["decode_speed_ratio"] == 0.5
    assert dca["peak_memory_ratio"] == 1.5 and dca["kv_cache_ratio"] == 1.0 and dca["flops_ratio"] is None
