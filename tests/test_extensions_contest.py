"""The extension contest command end to end at toy size: cells, the flat JSON, figures, and resuming."""

from __future__ import annotations

import json
from pathlib import Path

from helpers import load_benchmark


def _contest():
    return load_benchmark("extensions_contest")


def _argv(model_dir: Path, out: Path) -> list[str]:
    return ["--no-report", "--model", str(model_dir), "--out-dir", str(out), "--heldout-dir", str(out / "heldout"),
            "--multiples", "2", "--methods", "none", "yarn", "yarn+dca", "string",
            "--tasks", "ppl", "passkey", "niah_single_1", "--ppl-docs", "2", "--passkey-trials", "1",
            "--passkey-depths", "0.5", "--ruler-trials", "2"]


def test_contest_runs_reports_and_resumes(tiny_model_dir, tmp_path):
    contest = _contest()
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
    # DCA on the yarn model is not the yarn model alone
    assert by[("ppl", "yarn+dca")]["value"] != by[("ppl", "yarn")]["value"]
    for task in ("ppl", "passkey", "niah_single_1"):
        [figure] = out.glob(f"heatmap_*_{task}.png")
        assert figure.stat().st_size > 1000
    assert "`yarn+dca`" in (out / "contest.md").read_text()

    cells = sorted((out / "cells").rglob("*.json"))
    stamps = {p: p.stat().st_mtime_ns for p in cells}
    assert contest.run_grid(contest.parse_args(_argv(tiny_model_dir, out))) == 0  # nothing recomputed
    assert {p: p.stat().st_mtime_ns for p in cells} == stamps

    (out / "contest.json").unlink()
    contest.main(["--report-only", "--no-figures", "--out-dir", str(out)])
    assert json.loads((out / "contest.json").read_text())["rows"] == rows


def test_wilson_interval():
    contest = _contest()
    lo, hi = contest.wilson(0, 10)
    assert lo == 0 and 0.27 < hi < 0.28  # the textbook 0/10 Wilson upper bound, 0.2775
    lo, hi = contest.wilson(5, 10)
    assert abs(lo - 0.2366) < 1e-3 and abs(hi - 0.7634) < 1e-3


def test_readme_block_is_generated_from_the_committed_results():
    contest = _contest()
    rows = contest.load_rows(contest.OUT_DIR)
    text = contest.README.read_text(encoding="utf-8")
    assert contest.fill_readme(text, contest.readme_text(rows)) == text, (
        "README's contest block differs from docs/results/extensions/contest; run "
        "python benchmarks/extensions_contest.py --report-only --write-docs")


def test_readme_block_reports_no_retrieval_honestly():
    contest = _contest()
    base = {"model": "m", "trained_context": 256, "length": 2048, "n": 8}
    rows = [{**base, "method": "none", "metric": "ppl", "ratio_vs_none": 1.0, "ratio_ci": [1.0, 1.0]},
            {**base, "method": "dca", "metric": "ppl", "ratio_vs_none": 0.99, "ratio_ci": [0.98, 1.01]},
            {**base, "method": "dca", "metric": "accuracy", "value": 0.0, "n": 10}]
    text = contest.readme_block(rows, model="m")
    assert "0 of 1 paired" in text and "no method retrieves" in text and "0 of 10 prompts" in text


def test_readme_recommends_the_cheapest_method_among_those_that_tie_on_retrieval():
    """The README's two sentences: the real model's passkey counts, best first; then, among the methods
    within one prompt of the best (a tie at n = 3) that have a measured speed, the cheapest to decode."""
    contest = _contest()
    base = {"model": "smollm2-135m", "task": "passkey", "trained_context": 8192, "length": 16384, "n": 3,
            "metric": "accuracy"}
    rows = [{**base, "method": "none", "value": 0.0}, {**base, "method": "dca", "value": 2 / 3},
            {**base, "method": "rerope", "value": 1.0}, {**base, "method": "yarn", "value": 2 / 3},
            {**base, "method": "string", "value": 0.0}]
    speed = {"dca": {"prefill": 1.01, "decode": 1.0}, "rerope": {"prefill": 1.16, "decode": 1.58},
             "string": {"prefill": 1.1, "decode": 1.08}}
    text = contest.readme_text(rows, speed)
    assert "at 16384 tokens (2x its trained 8192) the methods found these passkeys: `rerope` 3/3, `dca` 2/3, " \
           "`yarn` 2/3, `none` 0/3, `string` 0/3" in text
    assert "use `dca`, which found 2/3" in text and "over `rerope` (3/3, decoding 1.58x)" in text
    assert "`string`" not in text.split("choose by the measured cost")[1]  # 0/3: not a candidate
    assert "(`yarn` 2/3 had no speed run)" in text  # within one prompt of the best, but unmeasured
    # without real-model cells the small model's sentences stand
    assert contest.readme_text([{**r, "model": "other"} for r in rows], speed).startswith("The extension contest has")


def test_speed_ratios_read_the_committed_runs():
    contest = _contest()
    speed = contest.speed_ratios()
    assert {"dca", "self_extend", "rerope", "string"} <= set(speed)
    assert all(0.5 < r["prefill"] < 3 and 0.5 < r["decode"] < 3 for r in speed.values())
