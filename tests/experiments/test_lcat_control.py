"""LCAT with its all-global control (issue 19, item 3) end to end at toy size: a grid's global cell is the
pretrained model, both arms start from it and train on the same rows, the tables and the figure."""

from __future__ import annotations

import json

import pytest

from zebra_llm.experiments import lcat_control
from zebra_llm.experiments.runner import run_experiment

GRID = """train_lengths: [64]
strategies: [global, group2]
vocab_size: 512
tokens_per_step: 128
steps: 2
eval_every: 1
valid_tokens: 256
test_max_docs: 2
first_split: 128
max_files: 30
speed_rounds: 1
extrapolation: [2, 4]
seeds: [0]
position_factors: [1]
position_first: 8
position_docs: 2
model: {hidden_size: 32, intermediate_size: 64, num_hidden_layers: 2, num_attention_heads: 2,
        num_key_value_heads: 2, tie_word_embeddings: true}
"""


def _sets(tmp_path):
    (tmp_path / "grid.yaml").write_text(GRID)
    return [f"grid_config={tmp_path / 'grid.yaml'}", f"grid_out={tmp_path / 'grid_out'}", "pretrain_len=64",
            "pretrain_run_dir=null", "factor=2", "window=8", "steps=2", "tokens_per_step=256", "save_every=1",
            "warmup_steps=1", "eval_docs=2", "position_first=8", "speed_rounds=1"]


def test_lcat_control_end_to_end(tmp_path, monkeypatch):
    out, runs = tmp_path / "out", tmp_path / "runs"
    text, figures = run_experiment("lcat_control", out=out, runs_dir=runs, overrides=_sets(tmp_path))
    data = json.loads((out / "results.json").read_text())
    assert set(data["cells"].values()) == {"done"}
    assert data["config"]["grid"]["seeds"] == [0]
    ppl = {(r["variant"], r["context"]): r for r in data["rows"] if r.get("metric") == "ppl" and r["split"] == "test"
           and r.get("context")}
    assert set(ppl) == {(v, c) for v in lcat_control.VARIANTS for c in ("short", "long")}
    assert {r["length"] for r in ppl.values()} == {64, 128}
    # DCA with pretraining_length 64 changes nothing inside 64 tokens
    assert ppl["pretrained_dca", "short"]["value"] == pytest.approx(ppl["pretrained", "short"]["value"], rel=1e-5)
    # both arms saw the same training rows: their first losses come from the same pretrained weights
    first = {r["variant"]: r["value"] for r in data["rows"] if r["split"] == "train" and r.get("step") == 1
             and r["variant"].startswith("adapt")}
    assert set(first) == {"adapt_group", "adapt_global"}
    group = json.loads((runs / "adapt_group" / "final" / "config.json").read_text())
    control = json.loads((runs / "adapt_global" / "final" / "config.json").read_text())
    assert group["layer_types"] == ["full_attention", "sliding_attention"]
    assert control["layer_types"] == ["full_attention", "full_attention"]
    assert group["rope_parameters"]["rope_theta"] == control["rope_parameters"]["rope_theta"] == 40000.0
    speed = {r["attention"]: r for r in data["rows"] if r["split"] == "speed"}
    assert speed["global"]["flops_vs_global"] == 1.0 and speed["group"]["flops_vs_global"] < 1.0
    cell = json.loads((out / "cells" / "adapt_group.json").read_text())
    assert cell["cpu_s"] == pytest.approx(json.loads((runs / "adapt_group" / "time.json").read_text())["cpu_s"])
    assert "### summary" in text and "### positions" in text and "### speed" in text and "pending" not in text
    assert [p.name for p in figures] == ["lcat_control.png"]

    monkeypatch.setattr(lcat_control, "adapt_cell", lambda *a, **k: pytest.fail("a finished cell was recomputed"))
    again, _ = run_experiment("lcat_control", out=out, runs_dir=runs, overrides=_sets(tmp_path))
    assert again == text


@pytest.mark.parametrize("bad, field", [("factor=1", "factor"), ("window=4096", "window"),
                                        ("tokens_per_step=1000", "tokens_per_step"),
                                        ("layer_group_size=1", "layer_group_size")])
def test_bad_settings_name_the_field(bad, field):
    from zebra_llm.experiments.config import load_config

    with pytest.raises(ValueError, match=field):
        load_config(lcat_control.LCATControlConfig, None, [bad])


def test_pretrain_len_must_be_a_grid_length(tmp_path):
    from zebra_llm.experiments.config import load_config

    cfg = load_config(lcat_control.LCATControlConfig, None, _sets(tmp_path) + ["pretrain_len=32"])
    with pytest.raises(ValueError, match="pretrain_len: 32"):
        lcat_control.stored_config(cfg)


def _ppl_rows(short: dict) -> list[dict]:
    return [{"variant": v, "split": "test", "metric": "ppl", "context": "short", "value": x} for v, x in short.items()]


def test_recovered_share_is_in_log_perplexity():
    data = {"config": {"pretrain_len": 64, "factor": 2, "window": 8}, "cells": {},
            "rows": _ppl_rows({"pretrained": 10.0, "converted": 40.0, "adapt_group": 20.0, "adapt_global": 10.0})}
    summary = lcat_control.lcat_control_tables(data)["summary"]
    # ln(40/20) / ln(40/10) = 50%; the control back at the pretrained model: 100%
    assert "| LCAT: group attention, trained long | 20.00 | +100.0 | 50 |" in summary
    assert "| control: all global, trained long | 10.00 | +0.0 | 100 |" in summary
    data["rows"] = _ppl_rows({"pretrained": 10.0, "converted": 9.0, "adapt_group": 8.0})
    assert "| 8.00 | -20.0 | conversion lost nothing |" in lcat_control.lcat_control_tables(data)["summary"]
