"""``zebra dca``: positions and settings."""

from __future__ import annotations

import json

from zebra_llm.cli import app
from zebra_llm.cli._common import run_guarded


def test_positions_prints_figure_2c(capsys):
    assert run_guarded(app, ["dca", "positions", "12", "--chunk-size", "6", "--pretraining-length", "10"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[10].split(":")[1].split()[:11] == "9 8 7 6 5 4 4 3 2 1 0".split()
    assert lines[11].split(":")[1].split() == "9 8 7 6 5 4 5 4 3 2 1 0".split()


def test_settings_for_the_embedded_model(capsys, smollm2_dir):
    assert run_guarded(app, ["dca", "settings", "smollm2", "--no-temperature"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert (out["pretraining_length"], out["chunk_size"], out["temperature"]) == (8192, 6144, False)
    assert out["vllm"] == {"chunk_size": 8191, "local_size": 2047, "original_max_position_embeddings": 0}


def test_bad_setting_is_a_one_line_error(capsys, smollm2_dir):
    assert run_guarded(app, ["dca", "settings", "smollm2", "--chunk-size", "9000"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: chunk_size") and len(err.strip().splitlines()) == 1


def test_rule_prints_any_method(capsys):
    args = ["dca", "rule", "self_extend", "12", "--trained-length", "16", "-s", "group_size=2", "-s", "neighbor_window=4"]
    assert run_guarded(app, args) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[11].split(":")[1].split() == "7 7 6 6 5 5 4 4 3 2 1 0".split()
    assert run_guarded(app, ["dca", "rule", "rerope", "8", "--trained-length", "64", "-s", "window=3",
                             "-s", "leak=2"]) == 0
    assert capsys.readouterr().out.splitlines()[7].split(":")[1].split() == "5 4.5 4 3.5 3 2 1 0".split()
    assert run_guarded(app, ["dca", "rule", "dca", "12", "--trained-length", "10", "-s", "chunk_size=6"]) == 0
    assert capsys.readouterr().out.splitlines()[11].split(":")[1].split() == "9 8 7 6 5 4 5 4 3 2 1 0".split()


def test_rule_errors_are_one_line(capsys):
    assert run_guarded(app, ["dca", "rule", "string", "100000", "--trained-length", "16"]) == 2
    assert "seq_len must be in 1..512" in capsys.readouterr().err
    assert run_guarded(app, ["dca", "rule", "string", "10", "--trained-length", "16", "-s", "shift=3"]) == 2
    assert "unknown string setting(s) ['shift']" in capsys.readouterr().err
