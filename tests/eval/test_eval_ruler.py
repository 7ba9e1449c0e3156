"""RULER-style tasks: prompts of exactly the asked length for a real tokenizer, deterministic, answers
hidden in them, RULER's scoring, and a run end to end on a tiny model (library and CLI)."""

from __future__ import annotations

import json

import pytest

from zebra_llm.eval.ruler import TASKS, Haystacks, RulerConfig, build_prompt, run_ruler, string_match_all


@pytest.fixture(scope="module")
def tokenizer(smollm2_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smollm2_dir)


@pytest.fixture(scope="module")
def hay(tokenizer):
    return Haystacks.from_corpus(tokenizer)


@pytest.mark.parametrize("task", list(TASKS))
@pytest.mark.parametrize("length", [600, 2048])
def test_prompts_fit_the_length_and_hold_the_answers(task, length, tokenizer, hay):
    p = build_prompt(task, tokenizer, length, hay, seed=3, trial=1)
    if task == "cwe":
        assert length - 30 <= len(p.ids) <= length  # within one rare word's three entries
    else:
        assert len(p.ids) == length
    text = tokenizer.decode(p.ids)
    for a in p.answers:
        assert a in text
    assert build_prompt(task, tokenizer, length, hay, seed=3, trial=1) == p  # deterministic
    assert build_prompt(task, tokenizer, length, hay, seed=3, trial=2).answers != p.answers


def test_task_specific_structure(tokenizer, hay):
    multi = build_prompt("niah_multivalue", tokenizer, 1500, hay)
    assert len(multi.answers) == 4 and all(len(a) == 7 for a in multi.answers)
    query = build_prompt("niah_multiquery", tokenizer, 1500, hay)
    text = tokenizer.decode(query.ids)
    assert len(query.answers) == 4 and text.count("One of the special magic numbers for") == 4
    uuid_p = build_prompt("niah_single_3", tokenizer, 1500, hay)
    assert len(uuid_p.answers[0]) == 36
    vt = build_prompt("vt", tokenizer, 1500, hay)
    text = tokenizer.decode(vt.ids)
    assert [text.index(f"VAR {v} =") for v in vt.answers] == sorted(text.index(f"VAR {v} =") for v in vt.answers)
    cwe = build_prompt("cwe", tokenizer, 3000, hay)
    listed = tokenizer.decode(cwe.ids)
    counts = {w: listed.count(f". {w}\n") for w in cwe.answers}
    assert all(c == 30 for c in counts.values()), counts


def test_string_match_all_is_rulers_score():
    assert string_match_all("The numbers are 1234567 and 7654321.", ["1234567", "7654321"]) == 1.0
    assert string_match_all("only 1234567", ["1234567", "7654321"]) == 0.5
    assert string_match_all("ABCDE, fghij", ["abcde", "FGHIJ", "KLMNO"]) == pytest.approx(2 / 3)


def test_errors_name_the_problem(tokenizer, hay):
    with pytest.raises(ValueError, match="unknown task 'qa'"):
        RulerConfig(tasks=["qa"])
    with pytest.raises(ValueError, match="too short"):
        build_prompt("niah_multikey_1", tokenizer, 40, hay)
    with pytest.raises(ValueError, match="cwe: length 150 is too short"):
        build_prompt("cwe", tokenizer, 150, hay)


def test_run_on_a_tiny_model_resumes_and_the_cli_prints_table(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "ruler.json"
    config = RulerConfig(model=str(tiny_model_dir), methods=["none", "string"], tasks=["niah_single_1", "vt"],
                         lengths=[200], trials=2, max_new_tokens=4)
    data = run_ruler(config, out, progress=False)
    assert len(data["items"]) == 2 * 2 * 2 and all(0 <= i["score"] <= 1 for i in data["items"])
    rows = {(r["method"], r["task"]) for r in data["summary"]}
    assert ("string", "all") in rows and ("none", "vt") in rows
    again = run_ruler(config, out, progress=False)  # resumed: nothing recomputed
    assert again["items"] == data["items"]
    from zebra_llm.cli import app
    from zebra_llm.cli._common import run_guarded

    code = run_guarded(app, ["eval", "ruler", "--model", str(tiny_model_dir), "--tasks", "niah_single_2",
                             "--lengths", "180", "--trials", "1", "--max-new-tokens", "3", "-o",
                             str(tmp_path / "r2.json"), "--no-progress"])
    printed = capsys.readouterr().out
    assert code == 0 and "| method | task |" in printed and (tmp_path / "r2.png").exists()
    assert json.loads((tmp_path / "r2.json").read_text())["kind"] == "ruler"
