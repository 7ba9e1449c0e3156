"""Multi-query associative recall: the generator, the answer-only loss, a tiny resumable grid, the tables."""

from __future__ import annotations

import json
import math

import pytest
import torch

from zebra_llm.data.packing import IGNORE
from zebra_llm.data.recall import RecallTask, accuracy_by_distance, answer_predictions, make_recall
from zebra_llm.experiments import recall as rc


def test_generator_is_deterministic_and_seeded():
    task = RecallTask(vocab_size=64, num_pairs=4, seq_len=48)
    a, b, c = make_recall(task, 20, 7), make_recall(task, 20, 7), make_recall(task, 20, 8)
    for name in ("input_ids", "labels", "query_pos", "key_pos", "values"):
        assert torch.equal(getattr(a, name), getattr(b, name))
    assert not torch.equal(a.input_ids, c.input_ids)
    assert a.fingerprint() == b.fingerprint() != c.fingerprint()


def test_layout_vocab_split_and_labels():
    task = RecallTask(vocab_size=64, num_pairs=5, seq_len=60)
    d = make_recall(task, 50, 3)
    half = 32
    for row in range(50):
        ids, labels = d.input_ids[row], d.labels[row]
        keys, values = ids[0:10:2], ids[1:10:2]
        assert ((keys >= 1) & (keys < half)).all() and len(set(keys.tolist())) == 5
        assert ((values >= half) & (values < 64)).all() and len(set(values.tolist())) == 5
        # each key occurs exactly twice: in its pair and as its query, at an even offset after the block
        for i, k in enumerate(keys.tolist()):
            where = (ids == k).nonzero().flatten().tolist()
            assert where == [2 * i, int(d.query_pos[row, i])]
            assert (where[1] - 10) % 2 == 0 and where[1] <= 58
        # labels: the value right after its query (transformers' shift), nothing else
        assert int((labels != IGNORE).sum()) == 5
        for i in range(5):
            assert int(labels[d.query_pos[row, i] + 1]) == int(values[i]) == int(d.values[row, i])
        filler = torch.ones(60, dtype=torch.bool)
        filler[:10] = False
        filler[d.query_pos[row]] = False
        assert (ids[filler] >= half).all()  # filler never repeats a key
    assert (d.distance > 0).all() and torch.equal(d.distance, d.query_pos - d.key_pos)


def test_power_law_places_queries_early_and_uniform_spreads_them():
    near = make_recall(RecallTask(64, 4, 256, power_a=0.01), 400, 0)
    flat = make_recall(RecallTask(64, 4, 256, power_a=1.0), 400, 0)
    p = RecallTask(64, 4, 256, power_a=0.01).gap_probabilities()
    assert math.isclose(float(p.sum()), 1.0) and (p[:-1] >= p[1:]).all()
    assert float(near.distance.float().median()) < 0.5 * float(flat.distance.float().median())
    # uniform: mean gap index close to half the slots
    gaps = (flat.query_pos - 8) / 2
    assert abs(float(gaps.float().mean()) - 124 / 2) < 6


@pytest.mark.parametrize("bad, match", [
    (dict(seq_len=31), "even"), (dict(seq_len=12, num_pairs=4), "too short"), (dict(power_a=0), "power_a"),
    (dict(vocab_size=8, num_pairs=4), "num_pairs"), (dict(num_pairs=0), "num_pairs"),
])
def test_task_errors_name_the_field(bad, match):
    kw = dict(vocab_size=64, num_pairs=4, seq_len=32) | bad
    with pytest.raises(ValueError, match=match):
        RecallTask(**kw)


def _tiny_model(pattern="GL", vocab=32, window=3, seed=0):
    from zebra_llm.modeling import ZebraConfig, ZebraForCausalLM

    torch.manual_seed(seed)
    cfg = ZebraConfig(vocab_size=vocab, hidden_size=16, intermediate_size=32, num_hidden_layers=len(pattern),
                      num_attention_heads=2, layer_types=[rc.LAYER_LETTERS[c] for c in pattern], window=window,
                      approx_chunk_size=2, max_position_embeddings=32, bos_token_id=None, eos_token_id=None,
                      pad_token_id=None)
    return ZebraForCausalLM(cfg).eval()


def test_loss_counts_only_answers_and_predictions_match_full_logits():
    from zebra_llm.train.loss import token_loss_sum

    d = make_recall(RecallTask(32, 3, 24), 6, 1)
    model = _tiny_model()
    logits = model(input_ids=d.input_ids, use_cache=False).logits
    at = logits.gather(1, d.query_pos.unsqueeze(-1).expand(-1, -1, 32))  # [N, P, V]
    manual = torch.nn.functional.cross_entropy(at.reshape(-1, 32), d.values.reshape(-1), reduction="sum")
    assert torch.allclose(token_loss_sum(logits, d.labels), manual, rtol=1e-5)
    assert d.num_targets(range(6)) == 18 == int((d.labels != IGNORE).sum())
    assert torch.equal(answer_predictions(model, d, batch_size=4), at.argmax(-1))


def test_accuracy_by_distance_against_counting():
    g = torch.Generator().manual_seed(0)
    dist = torch.randint(1, 100, (40, 5), generator=g)
    correct = torch.rand(40, 5, generator=g) > 0.5
    edges = [3, 6, 12, 100]
    got = accuracy_by_distance(correct, dist, edges)
    lo = 0
    for hi, row in zip(edges, got):
        pairs = [(c, x) for c, x in zip(correct.flatten().tolist(), dist.flatten().tolist()) if lo < x <= hi]
        assert (row["lo"], row["hi"], row["n"], row["correct"]) == (lo, hi, len(pairs), sum(c for c, _ in pairs))
        lo = hi
    assert sum(r["n"] for r in got) == 200


def test_dca_changes_a_global_layer_beyond_the_training_length():
    from zebra_llm.extensions import apply_extension, remove_extension

    model = _tiny_model("GL")
    ids = torch.randint(0, 32, (1, 64), generator=torch.Generator().manual_seed(0))
    plain = model(input_ids=ids, use_cache=False).logits
    apply_extension(model, "dca", pretraining_length=16)
    with_dca = model(input_ids=ids, use_cache=False).logits
    remove_extension(model)
    assert torch.allclose(with_dca[:, :12], plain[:, :12], atol=1e-5)  # inside one chunk: ordinary attention
    assert not torch.allclose(with_dca[:, 40:], plain[:, 40:], atol=1e-4)


TINY = dict(train_lengths=[16, 24], strategies={"global": "GG", "local": "LL"}, window=3, approx_chunk_size=2,
            model=dict(hidden_size=16, intermediate_size=32, num_attention_heads=1, num_key_value_heads=1,
                       tie_word_embeddings=True),
            vocab_size=16, num_pairs=2, steps=4, eval_every=2, warmup_steps=1, lr_sweep=[1e-3, 3e-3],
            sweep_lengths=[16], seeds=[0, 1], valid_examples=4, test_examples=4, extension_factors=[2],
            extension_methods=["none", "dca"], extension_examples=4, eval_batch=4, device="cpu")


def _cfg(**kw):
    from zebra_llm.experiments.config import load_config

    return load_config(rc.RecallGridConfig, None, TINY | kw)


def test_config_errors_name_the_field():
    with pytest.raises(ValueError, match="strategies.bad"):
        _cfg(strategies={"bad": "GX"})
    with pytest.raises(ValueError, match="window"):
        _cfg(window=1)
    with pytest.raises(ValueError, match="sweep_lengths"):
        _cfg(sweep_lengths=[99])
    with pytest.raises(ValueError, match="extension_methods"):
        _cfg(extension_methods=["yarn"])


def test_cell_plan_and_names_round_trip():
    cfg = _cfg()
    names = rc.cell_names(cfg)
    assert names[:4] == ["train_16_global_seed0_lr0.001", "train_16_global_seed0_lr0.003",
                         "train_16_local_seed0_lr0.001", "train_16_local_seed0_lr0.003"]
    assert names[4:6] == ["train_24_global_seed0", "train_24_local_seed0"] and names[-1] == "extend_24_local_seed1"
    assert rc.parse_cell("train_16_global_approx_seed2_lr0.003") == {
        "kind": "train", "n": 16, "strategy": "global_approx", "seed": 2, "lr": 0.003}
    assert cfg.sweep_length_for(24) == 16 and cfg.reach("local") == 4
    assert cfg.distance_edges(24) == [2, 4, 8, 16, 24]


def test_tiny_grid_runs_resumes_and_reports(tmp_path, monkeypatch):
    cfg = _cfg(train_lengths=[16], seeds=[0, 1])
    out, runs = tmp_path / "out", tmp_path / "runs"
    # kill the first training run after step 3 (its checkpoint of step 2 survives), then resume
    calls = {"n": 0}
    real_save = rc.RunClock.save

    def failing_save(self):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("killed")
        return real_save(self)

    monkeypatch.setattr(rc.RunClock, "save", failing_save)
    with pytest.raises(RuntimeError, match="killed"):
        rc.run_recall(cfg, out, runs_dir=runs)
    monkeypatch.setattr(rc.RunClock, "save", real_save)
    data = rc.run_recall(cfg, out, runs_dir=runs)
    assert all(s == "done" for s in data["cells"].values()), data["cells"]
    first = json.loads((out / "cells" / "train_16_global_seed0_lr0.001.json").read_text())
    assert first["parts"] == 2 and first["wall_s"] > 0 and first["cpu_s"] > 0
    valid = [r["step"] for r in first["rows"] if r["split"] == "valid"]
    assert valid == [2, 4]  # the record redone after the resume is not duplicated
    # the resumed run equals an uninterrupted one (same data order and initialisation)
    fresh = rc.train_run(cfg, "global", 16, 0, 1e-3, tmp_path / "fresh")
    key = lambda rows: [(r["split"], r.get("band"), r.get("bucket"), r.get("step"), r["value"])
                        for r in rows if r["split"] in ("test", "valid")]
    assert key(first["rows"]) == key(fresh["rows"])
    # rerunning computes nothing; the tables and figures come from results.json alone
    again = rc.run_recall(cfg, out, runs_dir=runs)
    assert again["rows"] == data["rows"]
    tables = rc.recall_tables(again)
    assert {"accuracy", "distance", "sweep", "extension", "cost", "assessment"} <= set(tables)
    assert "pending" not in tables["accuracy"]
    drawn = rc.recall_figures(again, out)
    assert all(p.is_file() for p in drawn)


def _fake_results(beyond: dict[str, list[float]]) -> dict:
    """results.json of a one-length grid whose test cells say ``beyond[strategy][seed]``."""
    cfg = _cfg(train_lengths=[16], strategies={"global": "GG", "local": "LL", "group2": "GL"})
    rows, cells = [], {}
    for name in rc.cell_names(cfg):
        p = rc.parse_cell(name)
        s, seed = p["strategy"], p["seed"]
        if p["kind"] == "extend":
            continue
        lr = p["lr"] or 1e-3
        acc = beyond[s][seed] if lr == 1e-3 else 0.0  # the sweep picks lr 0.001 (its final valid acc is higher)
        base = rc.base_row(cfg, s, 16, seed, lr) | {"cell": name}
        rows += [base | {"split": "valid", "metric": "accuracy", "step": 4, "value": acc},
                 base | {"split": "test", "metric": "accuracy", "band": "beyond_reach", "n": 10,
                         "correct": round(10 * acc), "value": acc},
                 base | {"split": "test", "metric": "accuracy", "band": "inside_reach", "n": 5, "correct": 5,
                         "value": 1.0},
                 base | {"split": "test", "metric": "accuracy", "bucket": "1-2", "lo": 0, "hi": 2, "n": 5,
                         "correct": 5, "value": 1.0}]
        cells[name] = "done"
    for name in rc.cell_names(cfg):
        cells.setdefault(name, "pending")
    from zebra_llm.experiments.config import as_dict

    return {"experiment": "recall", "config": as_dict(cfg), "cells": cells, "rows": rows,
            "cell_cpu_s": {c: 10.0 for c, s in cells.items() if s == "done"}}


def test_tables_and_assessment_from_fake_cells():
    data = _fake_results({"global": [0.9, 0.95], "local": [0.2, 0.3], "group2": [0.25, 0.28]})
    t = rc.recall_tables(data)
    assert "| 16 | `global` | GG | 0.001 | 4 | 2 | 100.0 ± 0.0 | 92.5 ± 3.5 | 90, 95 |" in t["accuracy"]
    assert "not separated from local at 2 vs 2 seeds" in t["assessment"]  # 2 vs 2: p = 1/6
    assert "global 92.5 ± 3.5 % vs local 25.0 ± 7.1 %" in t["assessment"]
    assert "| 16 | `global` | 90.0 | 0.0 | 0.001 |" in t["sweep"]
    assert "pending" in t["extension"]


def test_separation_test_and_spread():
    assert rc.separated([0.9, 0.8, 0.95], [0.1, 0.2, 0.3]) == pytest.approx(0.05)
    assert rc.separated([0.9, 0.2], [0.3]) is None
    assert rc.mean_sd([0.5]) == "50.0 (n=1)" and rc.mean_sd([]) == "pending"
    assert rc.mean_sd([0.5, 0.7]) == "60.0 ± 14.1"


def test_an_extension_cell_whose_checkpoint_is_gone_retrains_it_and_says_whether_it_matches(tmp_path):
    """The runs/ folder is not committed: a training cell finished on another machine has no checkpoint
    here, so its extension cell retrains the model from the same seed and records the comparison."""
    import shutil

    cfg = _cfg(train_lengths=[16], seeds=[0], strategies={"global": "GG"})
    out, runs = tmp_path / "out", tmp_path / "runs"
    only = [n for n in rc.cell_names(cfg) if n.startswith("train_")]
    rc.run_recall(cfg, out, runs_dir=runs, only=only)
    shutil.rmtree(runs)  # a fresh machine: the cells are committed, the checkpoints are not
    data = rc.run_recall(cfg, out, runs_dir=runs)
    assert all(s == "done" for s in data["cells"].values()), data["cells"]
    ext = json.loads((out / "cells" / "extend_16_global_seed0.json").read_text())
    assert ext["retrained"]["matches_recorded"] is True  # training is deterministic from the seed
    assert ext["retrained"]["test_correct_recorded"] == ext["retrained"]["test_correct_retrained"]
    assert all(r["retrained"] for r in ext["rows"]) and ext["cpu_s"] >= ext["retrained"]["cpu_s"]
    for r in ext["rows"]:  # each answer's outcome, for the methods' paired tests
        assert len(r["outcomes"]) == r["n"] and r["outcomes"].count("1") == r["correct"]


def test_the_contest_table_pairs_the_methods_on_the_same_answers():
    """recall_contest against a count by hand: pooled accuracy over seeds, the discordant pairs of the
    McNemar test, Holm over the row's methods, and the verdict rule (adjusted p < 0.05)."""
    from zebra_llm.eval.stats import holm, mcnemar_exact, wilson

    cfg = _cfg(train_lengths=[16], strategies={"global": "GG"}, extension_factors=[2],
               extension_methods=["none", "dca", "rerope"], seeds=[0, 1])
    none = ["1" * 5 + "0" * 15, "1" * 4 + "0" * 16]
    dca = ["1" * 20, "1" * 18 + "00"]          # right everywhere none was, and on 29 more
    rerope = ["1" * 4 + "0" * 16, "1" * 5 + "0" * 15]  # one answer fewer than none, then one more

    def rows(i):
        return [{"split": "extend", "factor": 2, "method": m, "band": "beyond_train", "n": 20,
                 "correct": o[i].count("1"), "outcomes": o[i]} for m, o in (("none", none), ("dca", dca),
                                                                            ("rerope", rerope))]

    table = rc.recall_contest(cfg, {(16, "global"): {"extend": {0: rows(0), 1: rows(1)}}})
    lines = {ln.split("|")[4].strip(): [c.strip() for c in ln.split("|")[1:-1]] for ln in table.splitlines()[2:]}
    p = holm([mcnemar_exact(29, 0), mcnemar_exact(1, 1)])
    lo, hi = wilson(38, 40)
    assert lines["dca"][4] == f"{95.0:.1f} [{100 * lo:.1f}, {100 * hi:.1f}]" and lines["dca"][5] == "40"
    assert lines["dca"][7] == "29 / 0" and lines["dca"][8] == f"{p[0]:.3g}" and lines["dca"][9] == "better"
    assert lines["rerope"][7] == "1 / 1" and lines["rerope"][8] == f"{p[1]:.3g}" and lines["rerope"][9] == "tied"
    assert lines["none"][9] == "reference"
