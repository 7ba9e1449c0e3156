"""Eval resume trusts contents, not paths (issue 25, item 1): each item records what produced it (the
model's files, the method as applied, the tokens it scored, the library version); a rerun reuses an item
only when all of them match, recomputes the others, and says how many of each."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from zebra_llm.eval import PerplexityConfig, run_perplexity
from zebra_llm.eval.results import ResultsFile, model_fingerprint, produced_by, tokens_hash


@pytest.fixture
def setup(tiny_model_dir, tmp_path):
    model = Path(shutil.copytree(tiny_model_dir, tmp_path / "model"))
    data = tmp_path / "corpus.txt"
    data.write_text("the cat sat on a mat while green birds sang about long context windows and rotary positions. " * 8)
    config = PerplexityConfig(model=str(model), data=str(data), lengths=[16, 32])
    return model, data, config, tmp_path / "ppl.json"


def _ppl(result) -> list[float]:
    return [row["ppl"] for row in result["summary"]]


def _scale_a_weight(model: Path) -> None:
    from safetensors.torch import load_file, save_file

    weights = load_file(model / "model.safetensors")
    weights["model.norm.weight"] = weights["model.norm.weight"] * 3
    save_file(weights, model / "model.safetensors", metadata={"format": "pt"})


def test_unchanged_inputs_are_reused_and_counted(setup, capfd):
    model, data, config, out = setup
    first = run_perplexity(config, out, progress=False)
    assert all(set(i["produced_by"]) == {"model", "method", "tokens", "zebra_llm"} for i in first["items"])
    capfd.readouterr()
    again = run_perplexity(config, out, progress=False)
    assert _ppl(again) == _ppl(first)
    assert f"ppl: reused 2 finished item(s) of {out}" in capfd.readouterr().err


def test_changed_weights_at_the_same_path_are_recomputed(setup, capfd):
    model, data, config, out = setup
    first = run_perplexity(config, out, progress=False)
    _scale_a_weight(model)
    capfd.readouterr()
    again = run_perplexity(config, out, progress=False)
    err = capfd.readouterr().err
    assert "reused 0 finished item(s)" in err and "recomputed 2 (the model's files changed)" in err
    assert _ppl(again) != _ppl(first)
    # the numbers are those of the new weights: a fresh file gives the same
    fresh = run_perplexity(config, out.with_name("fresh.json"), progress=False)
    assert _ppl(again) == pytest.approx(_ppl(fresh), rel=1e-12)


def test_changed_tokens_recompute_only_the_items_that_read_them(setup, capfd):
    model, data, config, out = setup
    run_perplexity(config, out, progress=False)
    text = data.read_text()
    data.write_text(text[:100] + "DIFFERENT" + text[109:])  # past the first 16 tokens, inside the first 32
    capfd.readouterr()
    run_perplexity(config, out, progress=False)
    err = capfd.readouterr().err
    assert "reused 1 finished item(s)" in err and "recomputed 1 (the scored tokens changed)" in err


def test_items_without_a_record_are_recomputed(setup, capfd):
    model, data, config, out = setup
    run_perplexity(config, out, progress=False)
    saved = json.loads(out.read_text())
    for item in saved["items"]:
        del item["produced_by"]  # as written before the record existed
    out.write_text(json.dumps(saved))
    capfd.readouterr()
    run_perplexity(config, out, progress=False)
    assert "recomputed 2 (written before results recorded what produced them)" in capfd.readouterr().err


def test_fingerprints_follow_contents(setup, tmp_path):
    model, data, config, out = setup
    before = model_fingerprint(str(model))
    assert model_fingerprint(str(model)) == before
    _scale_a_weight(model)
    assert model_fingerprint(str(model)) != before
    st = (model / "config.json").stat()
    changed = model_fingerprint(str(model))
    os.utime(model / "config.json", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # touched: counted as changed
    assert model_fingerprint(str(model)) != changed
    assert tokens_hash([1, 2, 3]) == tokens_hash(torch.tensor([1, 2, 3])) != tokens_hash([1, 2, 4])
    a, b = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    assert model_fingerprint(a) != model_fingerprint(b)  # model objects: by their values


def test_results_file_reuse_in_memory():
    results = ResultsFile(None, kind="ppl", config={}, identity={}, key_fields=("k",))
    made = produced_by(model="m", tokens="t")
    results.add({"k": 1, "v": 0.5, "produced_by": made})
    assert results.reuse(made, k=1)["v"] == 0.5
    assert results.reuse(produced_by(model="other", tokens="t"), k=1) is None
    assert results.reuse(made, k=2) is None  # never computed: not counted
    assert results.resume_note() == "reused 1 finished item(s) of memory; recomputed 1 (the model's files changed)"


def test_passkey_items_are_keyed_by_the_model_files_too(setup, capfd):
    from zebra_llm.eval.passkey import run_passkey
    from zebra_llm.eval.retrieval import RetrievalConfig

    model, data, config, out = setup
    cfg = RetrievalConfig(model=str(model), lengths=[130], depths=[0.5], trials=2, max_new_tokens=2)
    run_passkey(cfg, out.with_name("pk.json"), progress=False)
    capfd.readouterr()
    run_passkey(cfg, out.with_name("pk.json"), progress=False)
    assert "passkey: reused 2 finished item(s)" in capfd.readouterr().err
    _scale_a_weight(model)
    run_passkey(cfg, out.with_name("pk.json"), progress=False)
    assert "recomputed 2 (the model's files changed)" in capfd.readouterr().err


def test_ruler_items_are_keyed_by_the_model_files_too(setup, capfd):
    from zebra_llm.eval.ruler import RulerConfig, run_ruler

    model, data, config, out = setup
    cfg = RulerConfig(model=str(model), methods=["none"], tasks=["niah_single_1"], lengths=[160], trials=2,
                      max_new_tokens=2)
    path = out.with_name("ruler.json")
    run_ruler(cfg, path, progress=False)
    capfd.readouterr()
    run_ruler(cfg, path, progress=False)
    assert "ruler: reused 2 finished item(s)" in capfd.readouterr().err
    _scale_a_weight(model)
    run_ruler(cfg, path, progress=False)
    assert "recomputed 2 (the model's files changed)" in capfd.readouterr().err


def test_bench_items_are_keyed_by_the_model_files_too(setup, capfd):
    from zebra_llm.eval.efficiency import BenchConfig, run_bench

    model, data, config, out = setup
    cfg = BenchConfig(model=str(model), lengths=[24], decode_tokens=1, isolate=False)
    path = out.with_name("bench.json")
    run_bench(cfg, path, progress=False)
    capfd.readouterr()
    run_bench(cfg, path, progress=False)
    assert "bench: reused 1 finished item(s)" in capfd.readouterr().err
    _scale_a_weight(model)
    run_bench(cfg, path, progress=False)
    assert "recomputed 1 (the model's files changed)" in capfd.readouterr().err
