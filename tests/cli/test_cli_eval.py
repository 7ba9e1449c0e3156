"""Every evaluation subcommand end to end on a tiny random model and a tiny corpus."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from zebra_llm.cli import app
from zebra_llm.cli._common import run_guarded
from zebra_llm.cli.eval import parse_lengths

SRC = str(Path(__file__).resolve().parents[2] / "src")


def zebra(argv, capsys):
    code = run_guarded(app, [str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def _png_ok(path: Path):
    data = Path(path).read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000


def test_parse_lengths():
    assert parse_lengths("4k, 8k,16384") == [4096, 8192, 16384]
    with pytest.raises(ValueError, match="expected numbers like 4096 or 4k"):
        parse_lengths("4kb")


def test_eval_ppl_cli(tiny_model_dir, tiny_corpus, tmp_path, capsys):
    out = tmp_path / "ppl.json"
    code, stdout, err = zebra(["eval", "ppl", "--model", tiny_model_dir, "--data", tiny_corpus, "--lengths", "32,64",
                               "-m", "none", "-m", "linear:factor=2", "-o", out, "--no-progress"], capsys)
    assert code == 0, err
    assert "| method | 32 | 64 |" in stdout and "| `linear:factor=2` |" in stdout
    assert f"results: {out}" in stdout and f"figure: {out.with_suffix('.png')}" in stdout
    data = json.loads(out.read_text())
    assert data["config"]["lengths"] == [32, 64] and len(data["summary"]) == 4
    _png_ok(out.with_suffix(".png"))
    # windows and buckets modes
    code, stdout, err = zebra(["eval", "ppl", "--model", tiny_model_dir, "--data", tiny_corpus, "--mode", "windows",
                               "--lengths", "48", "--stride", "16", "--max-docs", "4", "-o", tmp_path / "w.json",
                               "--no-progress", "--no-figure"], capsys)
    assert code == 0, err and "| 48 |" in stdout
    code, stdout, err = zebra(["eval", "ppl", "--model", tiny_model_dir, "--data", tiny_corpus, "--mode", "buckets",
                               "--buckets", "1024,2048", "-m", "none:max_length=2048", "-o", tmp_path / "b.json",
                               "--no-progress", "--no-figure"], capsys)
    assert code == 0, err
    assert json.loads((tmp_path / "b.json").read_text())["summary"]


def test_eval_passkey_and_needle_cli(tiny_model_dir, tiny_corpus, tmp_path, capsys):
    pk = tmp_path / "pk.json"
    code, stdout, err = zebra(["eval", "passkey", "--model", tiny_model_dir, "--lengths", "100,140", "--depths",
                               "0,1", "--trials", "1", "-m", "none", "-m", "yarn:factor=2", "-o", pk,
                               "--no-progress", "--batch-size", "2"], capsys)
    assert code == 0, err
    assert "| `yarn:factor=2` | 0 (0/2) | 0 (0/2) |" in stdout
    _png_ok(pk.with_suffix(".png"))
    nd = tmp_path / "nd.json"
    code, stdout, err = zebra(["eval", "needle", "--model", tiny_model_dir, "--data", tiny_corpus, "--lengths", "120",
                               "--depths", "0.5", "--trials", "2", "-o", nd, "--no-progress"], capsys)
    assert code == 0, err
    assert json.loads(nd.read_text())["kind"] == "needle"
    _png_ok(nd.with_suffix(".png"))


def test_bench_generate_report_cli(tiny_model_dir, tmp_path, capsys):
    b = tmp_path / "bench.json"
    code, stdout, err = zebra(["bench", "--model", tiny_model_dir, "--lengths", "32,64", "-m", "dynamic:factor=2",
                               "--decode-tokens", "2", "--in-process", "-o", b, "--no-progress"], capsys)
    assert code == 0, err
    assert "| 64 | `dynamic:factor=2` |" in stdout
    _png_ok(b.with_suffix(".png"))

    code, stdout, err = zebra(["generate", "The grass is", "--model", tiny_model_dir, "--max-new-tokens", "4",
                               "-m", "linear:factor=2"], capsys)
    assert code == 0, err and stdout.strip()
    prompt = tmp_path / "prompt.txt"
    prompt.write_text("Once upon a time")
    code, stdout, err = zebra(["generate", "--file", prompt, "--model", tiny_model_dir, "--max-new-tokens", "3",
                               "--temperature", "0.7"], capsys)
    assert code == 0, err

    md = tmp_path / "r.md"
    code, stdout, err = zebra(["report", b, "--out-dir", tmp_path / "figs", "--markdown", md], capsys)
    assert code == 0, err
    assert "### Efficiency" in stdout and md.read_text().startswith("### Efficiency")
    _png_ok(tmp_path / "figs" / "bench.png")


@pytest.mark.parametrize(
    "argv, message",
    [
        (["eval", "ppl", "--data", "{tmp}/missing.txt"], "data: {tmp}/missing.txt does not exist"),
        (["eval", "ppl", "-m", "rope9000"], "method: unknown method 'rope9000'"),
        (["eval", "ppl", "-m", "yarn:factr=2"], "unknown option 'factr'"),
        (["eval", "ppl", "--data", "{tmp}/empty.txt"], "data: no documents with text found"),
        (["eval", "ppl", "--data", "{tmp}/emptydir"], "data: no documents with text found"),
        (["eval", "ppl", "--lengths", "300"], "length 300 is above what method none supports on this model (256"),
        (["eval", "ppl", "--lengths", "200", "--data", "{tmp}/short.txt"],
         "data: perplexity at length 200 needs a document of at least 200 tokens, but the longest has"),
        (["eval", "passkey", "--lengths", "1000"], "length 1000 is above what method none supports"),
        (["eval", "passkey", "--lengths", "64", "--depths", "2"], "depths must be in [0, 1]"),
        (["eval", "needle", "--lengths", "200", "--data", "{tmp}/short.txt"], "haystack needs"),
        (["bench", "-m", "linear:factor=1", "--lengths", "300"], "above what method linear:factor=1 supports"),
        (["generate", "hi", "--model", "{tmp}/nomodel.gguf"], "GGUF file"),
        (["generate"], "give a prompt or --file"),
        (["report", "{tmp}/none.json"], "results: {tmp}/none.json does not exist"),
        (["report", "{tmp}/short.txt"], "is not valid JSON"),
        (["eval", "ppl", "--lengths", "4q"], "expected numbers like 4096 or 4k"),
    ],
)
def test_bad_inputs_exit_nonzero_with_one_line(argv, message, tiny_model_dir, tmp_path, capsys):
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "emptydir").mkdir()
    (tmp_path / "short.txt").write_text("just a few words\n")
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    if argv[0] != "report" and "--model" not in argv:
        argv += ["--model", str(tiny_model_dir)]
    if argv[0] != "report" and argv[0] != "generate":
        argv += ["-o", str(tmp_path / "out.json"), "--no-progress"]
        if "--lengths" not in argv:
            argv += ["--lengths", "32"]
    code, out, err = zebra(argv, capsys)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert message.replace("{tmp}", str(tmp_path)) in lines[0]
    assert "Traceback" not in err + out


@pytest.mark.subprocess
def test_console_entry_point_no_traceback(tmp_path):
    """The real process: exit code 2 and a single stderr line."""
    proc = subprocess.run(
        [sys.executable, "-m", "zebra_llm", "eval", "ppl", "-m", "nope"],
        capture_output=True, text=True, env={"PYTHONPATH": SRC, "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"},
        cwd=tmp_path,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "error: method: unknown method 'nope'; known methods are none, linear, dynamic, yarn, dca, self_extend, rerope, string, sinks, zebra"
    ]
