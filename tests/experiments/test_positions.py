"""The strategy grid with seeds and per-position loss (issue 19, item 2): the original grid's cells stay
valid, a seeded grid runs end to end at toy size, and its summary statistics against obvious references."""

from __future__ import annotations

import json

import pytest

from zebra_llm.experiments import strategies
from zebra_llm.experiments.cells import config_hash
from zebra_llm.experiments.config import load_config
from zebra_llm.experiments.positions import band_nll, mean_sd, separated
from zebra_llm.experiments.runner import run_experiment

TOY = [
    "train_lengths=[64]", "vocab_size=512", "tokens_per_step=128", "steps=2", "eval_every=1", "valid_tokens=256",
    "test_max_docs=2", "first_split=128", "max_files=30", "speed_rounds=1", "extrapolation=[2, 4]",
    "strategies=[global, local]", "seeds=[0, 1]", "position_factors=[1, 2]", "position_docs=3", "position_first=8",
    "model={hidden_size: 32, intermediate_size: 64, num_hidden_layers: 2, num_attention_heads: 2, "
    "num_key_value_heads: 2, tie_word_embeddings: true}",
]


def test_the_original_grid_keeps_its_config_hash_and_cells():
    cfg = load_config(strategies.StrategyGridConfig, "experiments/configs/zebra_strategies_cpu.yaml")
    committed = json.loads(open("docs/results/zebra_strategies/results.json").read())
    assert config_hash(strategies.grid_config_dict(cfg)) == committed["config_hash"]
    assert strategies.cell_names(cfg) == list(committed["cells"])


def test_cell_names_carry_the_seed():
    cfg = load_config(strategies.StrategyGridConfig, None, ["train_lengths=[64]", "seeds=[3, 4]",
                                                            "strategies=[global_approx, group2]"])
    assert strategies.cell_names(cfg) == ["train_64_global_approx_seed3", "train_64_group2_seed3",
                                          "train_64_global_approx_seed4", "train_64_group2_seed4", "speed_64"]
    assert strategies.parse_train_cell("train_64_global_approx_seed4") == (64, "global_approx", 4)
    assert strategies.parse_train_cell("train_64_global_approx") == (64, "global_approx", None)


@pytest.mark.parametrize("bad, field", [("position_factors=[8]", "position_factors"), ("seeds=[]", "seeds"),
                                        ("seeds=[1, 1]", "seeds"), ("position_first=0", "position_first")])
def test_bad_settings_name_the_field(bad, field):
    with pytest.raises(ValueError, match=field):
        load_config(strategies.StrategyGridConfig, None, [bad])


def test_band_nll_is_the_token_weighted_mean():
    rows = [{"lo": 0, "hi": 16, "tokens": 32, "value": 4.0}, {"lo": 16, "hi": 32, "tokens": 32, "value": 3.0},
            {"lo": 32, "hi": 63, "tokens": 62, "value": 2.0}]
    assert band_nll(rows, 0, 32) == pytest.approx(3.5)
    assert band_nll(rows, 16, 63) == pytest.approx((3 * 32 + 2 * 62) / 94)
    assert band_nll(rows, 40, 63) is None


def test_separated_is_the_exact_rank_test():
    assert separated([1.0, 1.1, 1.2], [2.0, 2.1, 2.2]) == "below (p = 0.05)"
    assert separated([3.0, 3.1], [2.0, 2.1, 2.2]) == "above (p = 0.10)"
    assert separated([1.0, 2.5], [2.0, 2.1]) == "not separated"
    assert mean_sd([1.0, 3.0]) == "2.000 ± 1.414 (n=2)" and mean_sd([]) == "pending"


def test_seeded_grid_with_position_loss_end_to_end(tmp_path, monkeypatch):
    out, runs = tmp_path / "out", tmp_path / "runs"
    text, figures = run_experiment("zebra_strategies", out=out, runs_dir=runs, overrides=TOY)
    data = json.loads((out / "results.json").read_text())
    assert set(data["cells"]) == {"train_64_global_seed0", "train_64_local_seed0", "train_64_global_seed1",
                                  "train_64_local_seed1", "speed_64"}
    pos = [r for r in data["rows"] if r["split"] == "position"]
    assert {(r["strategy"], r["seed"], r["factor"], r["method"]) for r in pos} == {
        (s, k, f, m) for s in ("global", "local") for k in (0, 1) for f, m in ((1, "none"), (2, "none"), (2, "dca"))
        if s == "global" or m == "none"}
    assert {(r["length"], r["bucket"]) for r in pos if r["factor"] == 2} == {
        (128, "1-8"), (128, "9-16"), (128, "17-32"), (128, "33-64"), (128, "65-127")}
    assert all(r["docs"] == 3 for r in pos)
    cell = json.loads((out / "cells" / "train_64_local_seed1.json").read_text())
    times = json.loads((runs / "64_local_seed1" / "time.json").read_text())
    assert cell["cpu_s"] == pytest.approx(times["cpu_s"]) and cell["wall_s"] >= cell["cpu_s"] * 0.0
    tokens = {r["value"] for r in data["rows"] if r["metric"] == "train_tokens"}
    assert tokens == {256}
    # the seeds differ: their training losses are not the same
    first = {r["seed"]: r["value"] for r in data["rows"] if r["split"] == "train" and r["step"] == 2
             and r["strategy"] == "global"}
    assert first[0] != first[1]
    for name in ("### positions", "### position_summary", "### split_ppl", "### position_models",
                 "### position_cost", "### efficiency_first_seed", "### position_assessment"):
        assert name in text
    assert "(n=2)" in text and "pending" not in text
    assert "- 64 tokens, `local` beyond the local reach vs global (loss): " in text
    assert "fig_position_loss.png" in {p.name for p in figures}

    monkeypatch.setattr(strategies, "train_run", lambda *a, **k: pytest.fail("a finished cell was recomputed"))
    monkeypatch.setattr(strategies, "speed_cell", lambda *a, **k: pytest.fail("a finished cell was recomputed"))
    again, _ = run_experiment("zebra_strategies", out=out, runs_dir=runs, overrides=TOY)
    assert again == text
