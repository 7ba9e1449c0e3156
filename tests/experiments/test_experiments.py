"""The experiments of issue 9 end to end at toy size: results.json schema, figures, and that a rerun
recomputes nothing (the compute functions are replaced by ones that fail) and reprints the same tables."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from zebra_llm.experiments import lcat as lcat_mod
from zebra_llm.experiments import lit as lit_mod
from zebra_llm.experiments import strategies
from zebra_llm.experiments.corpus import file_split, split_corpus
from zebra_llm.experiments.runner import run_experiment

STRATEGY_TOY = [
    "train_lengths=[64]", "vocab_size=512", "tokens_per_step=128", "steps=2", "eval_every=1", "valid_tokens=256",
    "test_max_docs=2", "first_split=128", "max_files=30", "speed_rounds=1", "extrapolation=[2,4]",
    "model={hidden_size: 32, intermediate_size: 64, num_hidden_layers: 4, num_attention_heads: 2, "
    "num_key_value_heads: 2, tie_word_embeddings: true}",
]


def _check_rows(data: dict, experiment: str) -> None:
    assert data["experiment"] == experiment
    assert data["rows"], "no rows"
    assert set(data["cells"].values()) == {"done"}
    for row in data["rows"]:
        assert row["experiment"] == experiment
        assert {"metric", "value", "cell"} <= set(row)
        # flat records: pandas reads them as columns
        assert all(not isinstance(v, (dict, list)) for v in row.values()), row
        assert isinstance(row["value"], (int, float)) and row["value"] == row["value"]


def _no_compute(*args, **kwargs):
    raise AssertionError("a finished cell was recomputed")


def test_file_split_is_by_file_and_deterministic():
    names = [f"pkg/mod{i}.py" for i in range(400)]
    splits = [file_split(n) for n in names]
    assert splits == [file_split(n) for n in names]
    assert {"train", "valid", "test"} == set(splits)
    corpus = split_corpus(max_files=30)
    seen = [d.name for s in ("train", "valid", "test") for d in getattr(corpus, s)]
    assert len(seen) == len(set(seen))  # no file in two splits


def test_split_segments_follow_the_paper():
    from zebra_llm.eval.corpus import TokenDocs

    lengths = [5, 100, 128, 129, 256, 257, 512, 600]
    docs = TokenDocs("t", [f"d{i}" for i in range(len(lengths))], [torch.zeros(n, dtype=torch.long) for n in lengths])
    segs = strategies.split_segments(docs, [128, 256, 512], max_docs=None)
    got = {(s.name, s.group) for s in segs}
    assert got == {("d0", 128), ("d1", 128), ("d2", 128), ("d3", 256), ("d4", 256), ("d5", 512), ("d6", 512)}


def test_strategy_grid_end_to_end(tmp_path, monkeypatch):
    out, runs = tmp_path / "out", tmp_path / "runs"
    text, figures = run_experiment("zebra_strategies", out=out, runs_dir=runs, overrides=STRATEGY_TOY)
    data = json.loads((out / "results.json").read_text())
    _check_rows(data, "zebra_strategies")
    metrics = {(r["split"], r["metric"]) for r in data["rows"]}
    assert {("train", "loss"), ("valid", "ppl"), ("test", "ppl"), ("efficiency", "kv_cache_bytes"),
            ("efficiency", "train_tokens_per_s"), ("speed", "train_tokens_per_s")} <= metrics
    assert {r["method"] for r in data["rows"] if r["split"] == "test"} == {"none", "dca"}
    assert {r["strategy"] for r in data["rows"]} == set(strategies.STRATEGIES)
    kv = {r["strategy"]: r["value"] for r in data["rows"] if r["metric"] == "kv_cache_bytes"}
    assert kv["local"] < kv["group4"] < kv["group2"] < kv["global"]  # local layers keep only the window
    valid = [r for r in data["rows"] if r["split"] == "valid" and r["strategy"] == "global"]
    assert [r["step"] for r in valid] == [1, 2] and valid[1]["tflops"] == pytest.approx(2 * valid[0]["tflops"])
    assert {p.name for p in figures} == {"fig2_gap_to_global.png", "fig3_valid_ppl_vs_tflops.png",
                                         "fig4_test_ppl.png"}
    assert all(p.stat().st_size > 0 for p in figures)
    assert "### gap" in text and "### efficiency" in text and "pending" not in text

    monkeypatch.setattr(strategies, "train_run", _no_compute)
    monkeypatch.setattr(strategies, "speed_cell", _no_compute)
    again, _ = run_experiment("zebra_strategies", out=out, runs_dir=runs, overrides=STRATEGY_TOY)
    assert again == text
    with pytest.raises(ValueError, match="another zebra_strategies config"):
        run_experiment("zebra_strategies", out=out, runs_dir=runs, overrides=STRATEGY_TOY + ["steps=3"])


def test_pending_cells_are_shown_as_pending(tmp_path):
    out = tmp_path / "out"
    run_experiment("zebra_strategies", out=out, runs_dir=tmp_path / "runs",
                   overrides=STRATEGY_TOY + ["strategies=[global, group2]"], only=["train_64_global"], figures=False)
    text, _ = run_experiment("zebra_strategies", out=out, report_only=True, figures=False)
    assert "pending: train_64_group2, speed_64" in text
    assert "| 64 | `group2` | pending |" in text


def test_cli_report_only_and_errors(tmp_path):
    from zebra_llm.cli import main

    with pytest.raises(SystemExit) as e:
        main(["experiment", "nope", "--out", str(tmp_path), "--report-only"])
    assert e.value.code == 2
    with pytest.raises(SystemExit) as e:
        main(["experiment", "lit", "--out", str(tmp_path / "missing"), "--report-only"])
    assert e.value.code == 2


def test_lcat_end_to_end(tmp_path, tiny_model_dir, monkeypatch):
    sets = [f"source={tiny_model_dir}", "layer_group_size=2", "window=16", "train_len=64", "eval_lengths=[64]",
            "dca_pretraining_length=32", "steps=2", "save_every=1", "eval_docs=1", "max_files=30",
            "train_min_chars=1000", "speed_rounds=1", "rope_theta=20000"]
    out, runs = tmp_path / "out", tmp_path / "runs"
    text, figures = run_experiment("lcat_smollm2", out=out, runs_dir=runs, overrides=sets)
    data = json.loads((out / "results.json").read_text())
    _check_rows(data, "lcat_smollm2")
    ppl = {r["variant"]: r["value"] for r in data["rows"] if r["metric"] == "ppl"}
    assert set(ppl) == set(lcat_mod.VARIANTS)
    assert ppl["lcat"] != ppl["converted"]  # training changed the model
    assert len([r for r in data["rows"] if r["split"] == "train"]) == 2
    assert {r["attention"] for r in data["rows"] if r["split"] == "speed"} == {"group", "global"}
    assert figures and figures[0].is_file()
    monkeypatch.setattr(lcat_mod, "ppl_cell", _no_compute)
    monkeypatch.setattr(lcat_mod, "train_cell", _no_compute)
    monkeypatch.setattr(lcat_mod, "speed_cell", _no_compute)
    assert run_experiment("lcat_smollm2", out=out, runs_dir=runs, overrides=sets)[0] == text


def test_lit_end_to_end(tmp_path, tiny_model_dir, monkeypatch):
    sets = [f"source={tiny_model_dir}", "layer_group_size=2", "window=16", "doc_tokens=96", "distances=[16,64]",
            "train_records=4", "test_records_per_distance=2", "steps=2", "max_files=30", "max_new_tokens=3"]
    out, runs = tmp_path / "out", tmp_path / "runs"
    text, figures = run_experiment("lit", out=out, runs_dir=runs, overrides=sets)
    data = json.loads((out / "results.json").read_text())
    _check_rows(data, "lit")
    acc = [r for r in data["rows"] if r["metric"] == "accuracy"]
    assert {r["model"] for r in acc} == set(lit_mod.MODELS)
    assert all(0 <= r["value"] <= 1 and r["records"] == (4 if r["distance"] == "all" else 2) for r in acc)
    train = (runs / "train.jsonl").read_text().splitlines()
    assert len(train) == 4 and all("access code of project" in json.loads(x)["prompt"] for x in train)
    assert figures and figures[0].is_file()
    monkeypatch.setattr(lit_mod, "accuracy_rows", _no_compute)
    monkeypatch.setattr(lit_mod, "train_cell", _no_compute)
    assert run_experiment("lit", out=out, runs_dir=runs, overrides=sets)[0] == text
    # a Zebra source (an LCAT result) is used as it is, with its own layout, never converted again
    zebra = runs / "converted"
    same = lit_mod.LITExperimentConfig(source=str(zebra), layer_group_size=2, window=16)
    assert lit_mod.converted_dir(same, tmp_path / "other") == zebra
    with pytest.raises(ValueError, match="LIT keeps its layout, so set layer_group_size and window to match"):
        lit_mod.converted_dir(lit_mod.LITExperimentConfig(source=str(zebra), layer_group_size=4, window=16),
                              tmp_path / "other")


def test_lit_records_place_the_fact_at_the_distance():
    from zebra_llm.train.models import load_tokenizer

    cfg = lit_mod.LITExperimentConfig(doc_tokens=256, distances=[32, 192], max_files=30)
    tok = load_tokenizer("smollm2")
    recs = lit_mod.build_records(cfg, tok, "test", 4, seed=3)
    for r in recs:
        doc, question = r["prompt"].rsplit("\n\n", 1)
        fact = lit_mod.FACT.format(name=question.split("project ")[1].split("?")[0], code=r["answer"])
        after = doc.split(fact, 1)[1]
        n_after = len(tok(after, add_special_tokens=False)["input_ids"])
        assert abs(n_after - r["distance"]) <= 0.15 * r["distance"] + 4


def test_results_page_blocks_are_generated(tmp_path):
    from zebra_llm.experiments.page import fill

    results = tmp_path / "results"
    (results / "lit").mkdir(parents=True)
    data = {"experiment": "lit", "config": {"distances": [64], "source": "m"},
            "cells": {"eval_original": "done", "eval_converted": "pending"},
            "rows": [{"experiment": "lit", "model": "original", "split": "test", "distance": 64,
                      "metric": "accuracy", "value": 0.5, "correct": 1, "records": 2}]}
    (results / "lit" / "results.json").write_text(json.dumps(data))
    page = ("x\n<!-- BEGIN lit:accuracy -->\nold\n<!-- END lit:accuracy -->\n"
            "<!-- BEGIN lit:status -->\n<!-- END lit:status -->\n"
            "<!-- BEGIN lcat_smollm2:ppl -->\n<!-- END lcat_smollm2:ppl -->\n")
    out = fill(page, results)
    assert "old" not in out and "50% (1/2)" in out and "| converted to Zebra, before LIT | pending |" in out
    assert "pending: eval_converted" in out
    assert "Pending: no cell of `lcat_smollm2`" in out
    assert fill(out, results) == out  # idempotent


def test_zebra_report_reads_experiment_results(tmp_path):
    from zebra_llm.cli.report import build_report as report

    data = {"experiment": "lit", "config": {"distances": [64], "source": "m", "window": 16},
            "cells": {"eval_original": "done"},
            "rows": [{"experiment": "lit", "model": "original", "split": "test", "distance": 64,
                      "metric": "accuracy", "value": 1.0, "correct": 2, "records": 2}]}
    path = tmp_path / "results.json"
    path.write_text(json.dumps(data))
    text, figures = report([path], figures=True)
    assert "## lit" in text and "100% (2/2)" in text
    assert [p.name for p in figures] == ["lit_accuracy.png"] and figures[0].is_file()


def test_zebra_report_puts_experiments_first_then_evaluations():
    """``zebra report`` with both kinds of results: each experiment's section, then the evaluation kinds;
    the evaluation report alone refuses an experiment's file."""
    from zebra_llm.cli.report import build_report
    from zebra_llm.eval.report import report as eval_report
    from zebra_llm.experiments.cells import load_results
    from zebra_llm.experiments.tables import experiment_report

    docs = Path(__file__).resolve().parents[2] / "docs" / "results"
    experiment, evaluation = docs / "lit" / "results.json", docs / "demo" / "ppl.json"
    text, figures = build_report([evaluation, experiment], figures=False)
    expected = experiment_report(load_results(experiment))[0].rstrip("\n") + "\n\n"
    assert text == expected + eval_report([evaluation], figures=False)[0] and figures == []
    assert build_report([evaluation], figures=False) == eval_report([evaluation], figures=False)
    with pytest.raises(ValueError, match="is not a zebra results file"):
        eval_report([experiment], figures=False)
    with pytest.raises(ValueError, match="give at least one results file"):
        build_report([])
