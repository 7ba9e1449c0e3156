"""docs/serving.md's load table is generated from docs/results/serve/ (benchmarks/serve_load.py), and the
benchmark's measuring code runs end to end at a toy size."""

from __future__ import annotations

import json

import pytest

from helpers import load_benchmark


def test_serving_load_table_matches_its_json():
    module = load_benchmark("serve_load")
    text = module.PAGE.read_text(encoding="utf-8")
    assert module.fill_page(text, module.docs_block()) == text, (
        "docs/serving.md: the load table differs from docs/results/serve/load_*.json; run "
        "python benchmarks/serve_load.py --write-docs")


def test_load_table_ratios_come_from_the_rows():
    module = load_benchmark("serve_load")
    row = {"requests": 4, "ttft_p50_s": 0.1, "ttft_p95_s": 0.2, "latency_p50_s": 1.0, "latency_p95_s": 1.5,
           "peak_rss_mib": 900.0, "decode_batch_sizes": {"1": 3}}
    data = {"settings": {"model": "m", "prompt_tokens": 10, "max_tokens": 4, "requests": 4, "threads": 1,
                         "methods": ["none", "dca"]},
            "device": "cpu", "dtype": "float32", "cpus": 2, "torch": "t", "transformers": "x",
            "rows": [{**row, "method": "none", "concurrency": 1, "requests_per_s": 1.0, "output_tokens_per_s": 10.0},
                     {**row, "method": "none", "concurrency": 4, "requests_per_s": 3.0, "output_tokens_per_s": 30.0},
                     {**row, "method": "dca", "concurrency": 4, "requests_per_s": 2.7, "output_tokens_per_s": 27.0}]}
    lines = module.table(data).splitlines()
    assert "| none | 4 | 3.000 | 30.0 | 3.00x | - | - | - |" in lines[5]
    assert "| dca | 4 | 2.700 | 27.0 | - | 0.90x | - | - |" in lines[6]


def test_benchmark_runs_end_to_end_at_toy_size(tiny_model_dir, tmp_path):
    pytest.importorskip("fastapi")
    pytest.importorskip("openai")
    module = load_benchmark("serve_load")
    out = tmp_path / "load.json"
    argv = ["--model", str(tiny_model_dir), "--methods", "dca", "--concurrency", "1,2", "--requests", "2",
            "--prompt-tokens", "20", "--max-tokens", "3", "--output", str(out)]
    args = module.parse_args(argv)
    data = {"settings": {k: getattr(args, k) for k in ("model", "methods", "concurrency", "requests",
                                                       "prompt_tokens", "max_tokens", "source", "threads",
                                                       "prefix_cache")},
            "rows": [], "device": "cpu", "dtype": "float32", "cpus": 2, "torch": "t", "transformers": "x"}
    out.write_text(json.dumps(data))
    import torch

    threads = torch.get_num_threads()
    try:
        module.child(module.parse_args(argv + ["--child", "dca"]))  # in this process: no child interpreter
    finally:
        torch.set_num_threads(threads)
    result = json.loads(out.read_text())
    assert [(r["method"], r["concurrency"]) for r in result["rows"]] == [("dca", 1), ("dca", 2)]
    for r in result["rows"]:
        assert r["requests"] == 2 and r["output_tokens"] == 2 * 3  # ignore_eos: every request its max_tokens
        assert r["ttft_p50_s"] <= r["latency_p50_s"] and r["peak_rss_mib"] > 0 and r["cpu_s"] > 0
    assert result["prefix_cache"]["dca"]["hits"] >= 4  # the warm-up prefilled the shared prompt
    assert "| dca | 2 |" in module.table(result)
