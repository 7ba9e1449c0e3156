"""The extension contest command end to end at toy size: cells, the flat JSON, figures, and resuming."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from zebra_llm.experiments import contest
from zebra_llm.experiments import contest_decide as decide
from zebra_llm.experiments import contest_plan as plan
from zebra_llm.experiments import contest_report as report


def _argv(model_dir: Path, out: Path) -> list[str]:
    return ["--no-report", "--model", str(model_dir), "--out-dir", str(out), "--heldout-dir", str(out / "heldout"),
            "--multiples", "2", "--methods", "none", "yarn", "yarn+dca", "string",
            "--tasks", "ppl", "passkey", "niah_single_1", "--ppl-docs", "2", "--passkey-trials", "1",
            "--passkey-depths", "0.5", "--ruler-trials", "2"]


def test_contest_runs_reports_and_resumes(tiny_model_dir, tmp_path):
    out = tmp_path / "contest"
    assert contest.main(_argv(tiny_model_dir, out)) == 0
    data = json.loads((out / "contest.json").read_text())
    rows = data["rows"]
    assert len(rows) == 4 * 3  # methods x tasks at one length
    for row in rows:
        assert {"model", "task", "method", "spec", "length", "value", "n", "ci_low", "ci_high", "metric",
                "past_nominal"} <= set(row)
        assert row["length"] == 128 and row["multiple"] == 2
        if row["metric"] == "ppl":
            assert row["n"] == 2 and row["ci_low"] < row["value"] < row["ci_high"]
        else:
            assert 0 <= row["ci_low"] <= row["value"] <= row["ci_high"] <= 1
    by = {(r["task"], r["method"]): r for r in rows}
    assert by[("passkey", "none")]["n"] == 1 and by[("niah_single_1", "string")]["n"] == 2
    assert by[("ppl", "yarn+dca")]["base"] == "yarn:factor=2"
    assert by[("ppl", "yarn")]["spec"].startswith("yarn:factor=2")
    # DCA at pretraining_length 2c = 128 on the yarn model: at 128 tokens every position is intra- or
    # successive-chunk at its own distance (DCA's plain reach, min(c, 2s)), so it is the yarn model itself
    assert by[("ppl", "yarn+dca")]["spec"] != by[("ppl", "yarn")]["spec"]
    assert abs(by[("ppl", "yarn+dca")]["value"] - by[("ppl", "yarn")]["value"]) <= 1e-9 * by[("ppl", "yarn")]["value"]
    for task in ("ppl", "passkey", "niah_single_1"):
        [figure] = [p for p in out.glob(f"heatmap_*_{task}.png") if not p.name.startswith("heatmap_depth_")]
        assert figure.stat().st_size > 1000
    [by_depth] = out.glob("heatmap_depth_*_passkey.png")
    assert by_depth.stat().st_size > 1000
    assert "`yarn+dca`" in (out / "contest.md").read_text()

    cells = sorted((out / "cells").rglob("*.json"))
    stamps = {p: p.stat().st_mtime_ns for p in cells}
    assert contest.run_grid(contest.parse_args(_argv(tiny_model_dir, out))) == 0  # nothing recomputed
    assert {p: p.stat().st_mtime_ns for p in cells} == stamps

    (out / "contest.json").unlink()
    contest.main(["--report-only", "--no-figures", "--out-dir", str(out)])
    assert json.loads((out / "contest.json").read_text())["rows"] == rows


def test_wilson_interval():
    lo, hi = plan.wilson(0, 10)
    assert lo == 0 and 0.27 < hi < 0.28  # the textbook 0/10 Wilson upper bound, 0.2775
    lo, hi = plan.wilson(5, 10)
    assert abs(lo - 0.2366) < 1e-3 and abs(hi - 0.7634) < 1e-3


def test_readme_block_is_generated_from_the_committed_results():
    rows, scores = decide.load_cells(plan.OUT_DIR)
    text = report.README.read_text(encoding="utf-8")
    assert report.fill_readme(text, report.readme_text(rows, None, scores)) == text, (
        "README's contest block differs from docs/results/extensions/contest; run "
        "zebra experiment contest --report-only --write-docs")


def test_docs_block_is_generated_from_the_committed_results():
    rows, scores = decide.load_cells(plan.OUT_DIR)
    text = report.DOCS.read_text(encoding="utf-8")
    assert report.fill_docs(text, report.docs_text(rows, scores)) == text, (
        "docs/extensions.md's recommendation block differs from docs/results/extensions/contest; run "
        "zebra experiment contest --report-only --write-docs")


def test_readme_block_reports_no_retrieval_honestly():
    base = {"model": "m", "trained_context": 256, "length": 2048, "n": 8}
    rows = [{**base, "method": "none", "metric": "ppl", "ratio_vs_none": 1.0, "ratio_ci": [1.0, 1.0]},
            {**base, "method": "dca", "metric": "ppl", "ratio_vs_none": 0.99, "ratio_ci": [0.98, 1.01]},
            {**base, "method": "dca", "metric": "accuracy", "value": 0.0, "n": 10}]
    text = report.readme_block(rows, model="m")
    assert "0 of 1 paired" in text and "no method retrieves" in text and "0 of 10 prompts" in text


def _synthetic(found: dict, model="smollm2-135m-c2048", length=8192, depths=(0.1, 0.3, 0.5, 0.7, 0.9), trials=6,
               past=("string",), fail_depth: dict | None = None):
    """Rows and per-prompt scores of passkey cells: ``found[m]`` keys found out of depths x trials, the
    misses placed at the deepest depths first (or all at ``fail_depth[m]``)."""
    rows, scores = [], {}
    keys = [(d, t) for d in depths for t in range(trials)]
    for m, k in found.items():
        order = sorted(keys, key=lambda x: (-x[0], x[1]))
        missing = set(order[: len(keys) - k])
        if fail_depth and m in fail_depth:
            missing = {x for x in keys if x[0] == fail_depth[m]}
        per = {x: 0.0 if x in missing else 1.0 for x in keys}
        row = {"model": model, "task": "passkey", "method": m, "length": length, "metric": "accuracy",
               "n": len(keys), "value": sum(per.values()) / len(keys), "trained_context": 2048,
               "ceiling": m == "none", "past_nominal": m in past}
        rows.append(row)
        scores[(model, "passkey", m, length)] = per
    return rows, scores


SPEED = {16384: {"dca": {"prefill": 1.01, "decode": 1.0}, "rerope": {"prefill": 1.16, "decode": 1.58},
                 "string": {"prefill": 1.1, "decode": 1.08}, "self_extend": {"prefill": 1.1, "decode": 1.54}},
         4096: {"dynamic": {"prefill": 0.9, "decode": 0.9}}}


def test_recommendation_names_the_tied_set_and_its_cheapest_member_when_no_lead_is_significant():
    rows, scores = _synthetic({"none": 30, "rerope": 30, "dca": 29, "yarn": 10, "dynamic": 29, "string": 0})
    rec = decide.recommendation(rows, scores, SPEED, "smollm2-135m-c2048")
    dec = rec["retrieval"]
    assert dec["best"] == "rerope" and not dec["significant"]
    assert dec["tied"] == ["rerope", "dynamic", "dca"] and dec["cheapest"] == "dca" and dec["unmeasured"] == ["dynamic"]
    assert dec["tests"]["yarn"]["p_holm"] < 0.05 and "string" not in dec["tests"] and "none" not in dec["tests"]
    text = report.recommendation_text(rec, SPEED)
    assert "no method's lead is significant (passkey at 8192; n = 30 prompts per method; no cells yet for " \
           "`linear`, `dca:temperature=true`" in text
    assert "the best, `rerope` 30/30, ties with `dynamic` 29/30, `dca` 29/30" in text
    assert ("`dca` is the cheapest by measured speed (prefill 1.01x, decoding 1.00x the unmodified model at "
            "16384") in text
    assert "(`dynamic` had no speed run)" in text  # measured at another length only: not compared
    # a run that measures more of the tied methods wins: there dynamic is the cheapest
    both = {**SPEED, 4096: {"dynamic": {"prefill": 0.9, "decode": 0.9}, "dca": {"prefill": 1.0, "decode": 1.0},
                            "rerope": {"prefill": 1.0, "decode": 1.2}}}
    dec = decide.recommendation(rows, scores, both, "smollm2-135m-c2048")["retrieval"]
    assert dec["speed_seq"] == 4096 and dec["cheapest"] == "dynamic" and dec["unmeasured"] == []
    assert "significantly behind: `yarn` 10/30" in text
    assert "Past their nominal reach and so not ranked: `string` (at 8192)" in text
    assert "The ceiling, the unmodified model at its own positions, scores 100%" in text


def test_recommendation_names_a_method_only_when_its_lead_survives_holm():
    rows, scores = _synthetic({"none": 30, "dca": 30, "rerope": 22, "yarn": 5})
    dec = decide.recommendation(rows, scores, SPEED, "smollm2-135m-c2048")["retrieval"]
    # dca against rerope: 8 discordant prompts all dca's, exact p = 2 / 2^8; Holm over two comparisons:
    # the smaller p (yarn's, 2 / 2^25) doubled, the larger one as it is
    assert dec["significant"] and dec["tied"] == ["dca"]
    assert dec["tests"]["rerope"]["p"] == 2 / 2**8 and dec["tests"]["rerope"]["p_holm"] == 2 / 2**8
    assert dec["tests"]["yarn"]["p_holm"] == 2 * 2 / 2**25
    text = report.decision_text(dec, True, SPEED)
    assert text.startswith("For retrieval use `dca`: `dca` 30/30 (passkey at 8192; n = 30")
    # 5 discordant prompts: p = 0.0625 alone is not significant, so no method is named
    rows, scores = _synthetic({"dca": 30, "rerope": 25})
    dec = decide.recommendation(rows, scores, SPEED, "smollm2-135m-c2048")["retrieval"]
    assert not dec["significant"] and dec["tied"] == ["dca", "rerope"]


def test_systematic_misses_are_depths_where_a_method_always_fails_and_another_does_not():
    rows, scores = _synthetic({"dca": 24, "rerope": 30, "string": 0}, fail_depth={"dca": 0.9})
    misses = decide.systematic_misses(rows, scores, "smollm2-135m-c2048")
    assert misses == [{"method": "dca", "length": 8192, "depth": 0.9, "trials": 6}]  # string: not ranked
    text = report.recommendation_text(decide.recommendation(rows, scores, SPEED, "smollm2-135m-c2048"), SPEED)
    assert "`dca` at depth 0.9 of 8192 (0/6)" in text


def test_committed_recommendation_follows_from_the_cells():
    """Recompute, straight from the committed cell files and the stats module, the retrieval and perplexity
    decisions that contest.json (and so the README) states: the pooled prompts, the exact tests, Holm."""
    from zebra_llm.eval import stats

    data = json.loads((plan.OUT_DIR / "contest.json").read_text())
    cells = {}
    for path in (plan.OUT_DIR / "cells").glob("*/*/*.json"):
        cell = json.loads(path.read_text())
        r = cell["row"]
        cells[(r["model"], r["task"], r["method"], r["length"])] = cell["items"]
    checked = 0
    for model, rec in data["recommendations"].items():
        for kind in ("retrieval", "perplexity"):
            dec = rec[kind]
            if dec is None:
                continue
            per = {}
            for m in [dec["best"], *dec["tests"]]:
                per[m] = {}
                for task, length in dec["combos"]:
                    for i in cells[(model, task, m, length)]:
                        if task == "ppl":
                            per[m][(task, length, i["doc"], i["start"])] = i["nll_sum"] / i["tokens"]
                        elif task == "passkey":
                            per[m][(task, length, i["depth"], i["trial"])] = float(bool(i["correct"]))
                        else:
                            per[m][(task, length, i["trial"])] = float(i["score"])
            best, others = dec["best"], list(dec["tests"])
            means = {m: sum(v.values()) / len(v) for m, v in per.items()}
            assert means[best] == (max if kind == "retrieval" else min)(means.values())
            if kind == "retrieval":
                ps = [stats.paired_test(per[best], per[m])["p"] for m in others]
            else:
                ps = [stats.paired_t([per[m][k] - per[best][k] for k in per[best]])["p"] for m in others]
            adjusted = stats.holm(ps)
            tied = [best] + [m for m, p in zip(others, adjusted) if p >= 0.05]
            assert dec["tied"] == tied and dec["significant"] == (tied == [best])
            checked += 1
    assert checked >= 2


def test_speed_ratios_read_the_committed_runs():
    speed = report.speed_ratios()
    assert {"dca", "self_extend", "rerope", "string"} <= set(speed[16384])
    assert all(0.5 < r["prefill"] < 3 and 0.5 < r["decode"] < 3 for by in speed.values() for r in by.values())


def _sim_argv(model_dir: Path, out: Path, methods=("none", "dca", "rerope", "string")) -> list:
    return ["--no-report", "--model", str(model_dir), "--out-dir", str(out), "--heldout-dir", str(out / "heldout"),
            "--trained-length", "64", "--multiples", "2", "4", "--methods", *methods,
            "--tasks", "passkey", "ppl", "--ppl-docs", "2", "--passkey-trials", "2",
            "--passkey-depths", "0.2", "0.8"]


def _longer_tiny_model(tiny_model_dir: Path, target: Path, context: int = 256) -> Path:
    """The tiny model with a real trained context of ``context`` tokens (a passkey prompt needs ~70)."""
    shutil.copytree(tiny_model_dir, target)
    config = json.loads((target / "config.json").read_text())
    config["max_position_embeddings"] = context
    (target / "config.json").write_text(json.dumps(config))
    return target


def test_simulated_protocol_sets_every_method_up_for_the_simulated_trained_length(tiny_model_dir, tmp_path):
    """--trained-length C: cells of model '<name>-cC', settings derived from C, `none` the real model
    (ceiling, not ranked), STRING past its reach at C; the cells differ from the real protocol's."""
    out = tmp_path / "contest"
    model = _longer_tiny_model(tiny_model_dir, tmp_path / "tiny256")
    assert contest.main(_sim_argv(model, out)) == 0
    rows = json.loads((out / "contest.json").read_text())["rows"]
    assert {r["model"] for r in rows} == {f"{plan.model_name(str(model))}-c64"}
    by = {(r["task"], r["method"], r["length"]): r for r in rows}
    assert len(by) == 4 * 2 * 2
    for r in rows:
        assert r["trained_context"] == 64 and r["model_trained_context"] == 256 and r["protocol"] == "simulated"
        assert r["multiple"] in (2, 4)
    assert by[("passkey", "none", 256)]["ceiling"] and not by[("passkey", "none", 256)]["past_nominal"]
    assert by[("passkey", "string", 128)]["past_nominal"]  # c' + S - W = 64 + 21 - 10 = 75 < 128
    assert not by[("passkey", "rerope", 256)]["past_nominal"]
    assert set(by[("ppl", "dca", 256)]["spec"].split(":")[1].split(",")) == {"pretraining_length=64", "max_length=256"}
    assert by[("ppl", "rerope", 128)]["applied"].startswith("apply_extension(rerope, trained_length=64)")
    # DCA for c' = 64 is not the model itself at 256 tokens (it would be, at the real trained length)
    assert by[("ppl", "dca", 256)]["value"] != by[("ppl", "none", 256)]["value"]
    assert by[("ppl", "rerope", 256)]["value"] != by[("ppl", "none", 256)]["value"]  # applied, and kept
    assert by[("passkey", "dca", 128)]["n"] == 4
    # the real protocol's cells are elsewhere and unaffected
    assert not (out / "cells" / plan.model_name(str(model))).exists()
    # pairwise tests against the best in-reach method, on the shared prompts (2 depths x 2 trials)
    ranked = [r for r in rows if r["task"] == "passkey" and r["length"] == 128 and "vs_best" in r]
    assert ranked and all(r["vs_best"]["n_shared"] == 4 for r in ranked)


def test_simulated_plans_derive_every_setting_from_the_simulated_trained_length():
    """SmolLM2 (trained at 8192) as if trained at 2048: each method's plan at 4096 and 8192, and its reach."""
    from zebra_llm.extensions.config import SelfExtendConfig, StringConfig
    from zebra_llm.loading import load_config

    config = load_config("smollm2")
    sim = plan.simulated_config(config, 2048)
    plans = {m: plan.method_plan(m, 8192, 8192, 2048) for m in plan.METHODS}
    assert plans["none"].spec == "none:max_length=8192" and plans["none"].extension is None
    for m in ("linear", "dynamic", "yarn"):
        assert plans[m].spec == f"{m}:factor=4,original_max_position_embeddings=2048,max_length=8192"
    assert plans["dca"].spec == "dca:pretraining_length=2048,max_length=8192"
    assert plans["dca:temperature=true"].spec == "dca:pretraining_length=2048,temperature=true,max_length=8192"
    assert plans["dca:preset=chunkllama"].spec == "dca:pretraining_length=1537,chunk_size=1280,max_length=8192"
    assert plans["yarn+dca"].base == "yarn:factor=2,original_max_position_embeddings=2048"
    assert plans["yarn+dca"].spec == "dca:pretraining_length=4096,max_length=8192"
    for m in ("self_extend", "rerope", "string"):
        assert plans[m].extension == (m, 2048) and plans[m].spec.startswith("none:")
        assert "max_length=8192" in plans[m].spec
    assert plan.method_plan("dynamic", 4096, 8192, 2048).spec.startswith("dynamic:factor=2,")
    # reach at c' = 2048: STRING c' + S - W, SelfExtend (c' - W) G + W; DCA, ReRoPE and rope factors: any
    s = StringConfig(2048)
    assert plan.nominal_reach("string", sim) == 2048 + s.shifted_offset - s.local_value == 2595
    assert plan.past_nominal("string", 4096, sim) and not plan.past_nominal("string", 4096, config)
    assert plan.nominal_reach("self_extend", sim) == SelfExtendConfig(2048).max_length == 12800
    assert [m for m in plan.BASE_METHODS if m != "none" and plan.past_nominal(m, 8192, sim)] == ["string"]
    # the real protocol is as before: the model's own trained length
    assert plan.method_plan("yarn+dca", 16384, 8192) == plan.Plan("dca:pretraining_length=16384,max_length=16384",
                                                                         "yarn:factor=2")


def test_command_is_zebra_experiment_contest_and_refuses_lengths_past_the_real_context(tiny_model_dir, tmp_path,
                                                                                         capsys):
    """`zebra experiment contest` takes the script's options; the simulated protocol stays inside the model's
    real context (64 tokens here), a one-line error with exit 2 otherwise."""
    from zebra_llm.cli import main

    with pytest.raises(SystemExit) as e:
        main(["experiment", "contest", "--model", str(tiny_model_dir), "--out-dir", str(tmp_path / "c"),
              "--trained-length", "16", "--multiples", "8", "--no-report"])
    assert e.value.code == 2
    assert "error: --multiples: the simulated protocol evaluates inside the model's real context (64 tokens), " \
           "got 128 (= 8 x 16)" in capsys.readouterr().err
    assert not (tmp_path / "c" / "cells").exists()


def test_other_dtypes_are_their_own_model_folder_and_recorded(tiny_model_dir, tmp_path):
    """--dtype bfloat16: the cells go to '<name>-bfloat16' (never mixed with float32 cells) and each row says
    which dtype and device computed it; the float32 folder is untouched."""
    out = tmp_path / "contest"
    argv = ["--no-report", "--no-figures", "--model", str(tiny_model_dir), "--out-dir", str(out), "--heldout-dir",
            str(out / "heldout"), "--multiples", "2", "--methods", "none", "dca", "--tasks", "passkey",
            "--passkey-trials", "1", "--passkey-depths", "0.5", "--dtype", "bfloat16", "--batch-size", "2"]
    assert contest.main(argv) == 0
    name = plan.model_name(str(tiny_model_dir))
    assert plan.model_name(str(tiny_model_dir), dtype="bfloat16") == f"{name}-bfloat16"
    cells = sorted((out / "cells").rglob("*.json"))
    assert cells and all(p.relative_to(out / "cells").parts[0] == f"{name}-bfloat16" for p in cells)
    for p in cells:
        row = json.loads(p.read_text())["row"]
        assert row["dtype"] == "bfloat16" and row["device"] == "cpu" and row["model"] == f"{name}-bfloat16"


@pytest.mark.parametrize("extra, message", [(["--batch-size", "0"], "--batch-size must be >= 1"),
                                            (["--dtype", "float8"], "invalid choice")])
def test_run_options_are_checked(extra, message, capsys):
    with pytest.raises(SystemExit):
        contest.parse_args(["--model", "smollm2", *extra])
    assert message in capsys.readouterr().err


def test_a_cuda_device_without_cuda_is_refused_before_any_cell(tiny_model_dir, tmp_path):
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    args = contest.parse_args(["--model", str(tiny_model_dir), "--out-dir", str(tmp_path), "--device", "cuda"])
    with pytest.raises(ValueError, match="--device cuda: this torch has no CUDA device"):
        contest.run_grid(args)
    assert not (tmp_path / "cells").exists()
