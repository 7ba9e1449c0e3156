"""Bad input through the `zebra` CLI: one table of (input, exit status, message).

Every row runs in-process (``run_guarded``, as the console script does) and
must end with exactly one line on stderr, ``error: ...`` containing the
row's message, the row's exit status, and no half-written file or temporary
left behind. Rows marked ``api`` call the library and expect the typed
exception with the same message.

``docs/errors.md`` is generated from this table; after changing it run

    PYTHONPATH=src python tests/cli/test_cli_errors.py

(the last test fails while the page is out of date).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest
import torch
import yaml

TESTS = Path(__file__).resolve().parents[1]  # the shared helpers; pytest has it on sys.path, a script run not
sys.path.insert(0, str(TESTS))
from train_helpers import tiny_pretrain_config, write_tiny_llama_config  # noqa: E402

DOC = TESTS.parent / "docs" / "errors.md"


@dataclass(frozen=True)
class Case:
    id: str
    input: str  # what the user typed or gave, for the docs page
    setup: Callable  # (Ctx) -> argv list, or (Ctx) -> a callable for api rows
    status: int | str  # exit status, or the exception type name of an api row
    message: str  # a part of the one-line message, exactly as printed
    when: Callable[[], bool] = lambda: True  # rows that only make sense on some machines


class Ctx:
    def __init__(self, tmp: Path, tiny_model: Path, run: Path):
        self.tmp, self.tiny_model, self.run = tmp, tiny_model, run

    def write(self, name: str, data: str | bytes) -> Path:
        path = self.tmp / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(data, bytes):
            path.write_bytes(data)
        else:
            path.write_text(data)
        return path

    def model_copy(self, name="model") -> Path:
        return Path(shutil.copytree(self.tiny_model, self.tmp / name))

    def resume_copy(self, **train) -> tuple[Path, Path]:
        """A copy of the trained run and its config file; returns (config file, checkpoint)."""
        out = Path(shutil.copytree(self.run, self.tmp / "run"))
        cfg = yaml.safe_load((out / "config.yaml").read_text())
        cfg["train"].update(output_dir=str(out), **train)
        path = self.write("resume.yaml", yaml.safe_dump(cfg))
        return path, out / "checkpoints" / "step_00000002"


def _truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def _resume_with(corrupt: Callable[[Path, Ctx], None], *flags: str):
    def setup(c: Ctx):
        cfg, ck = c.resume_copy()
        corrupt(ck, c)
        return ["train", "pretrain", "-c", cfg, "--resume", *flags]

    return setup


def _other_shape(ck: Path, c: Ctx) -> None:
    """The checkpoint's weights are of another model shape (a wider MLP)."""
    from safetensors.torch import load_file, save_file

    weights = load_file(ck / "model.safetensors")
    name = next(k for k in weights if k.endswith("mlp.up_proj.weight"))
    weights[name] = torch.zeros(weights[name].shape[0] * 2, weights[name].shape[1])
    save_file(weights, ck / "model.safetensors", metadata={"format": "pt"})


def _edit_weights(c: Ctx, edit: Callable[[dict], None]) -> Path:
    """A copy of the tiny model whose model.safetensors went through ``edit``."""
    from safetensors.torch import load_file, save_file

    model = c.model_copy()
    weights = load_file(model / "model.safetensors")
    edit(weights)
    save_file(weights, model / "model.safetensors", metadata={"format": "pt"})
    return model


def _drop_mlp(weights: dict) -> None:
    for k in [k for k in weights if k.startswith("model.layers.1.mlp.")]:
        del weights[k]


def _widen_mlp(weights: dict) -> None:
    k = "model.layers.0.mlp.up_proj.weight"
    weights[k] = torch.zeros(weights[k].shape[0] * 2, weights[k].shape[1])


def _edit_config(c: Ctx, **fields) -> Path:
    """A copy of the tiny model with ``config.json`` fields replaced."""
    model = c.model_copy()
    config = json.loads((model / "config.json").read_text())
    config.update(fields)
    (model / "config.json").write_text(json.dumps(config))
    return model


def _sharded_outside(c: Ctx) -> Path:
    """A model whose safetensors index names a shard in the parent directory."""
    model = c.model_copy()
    (model / "model.safetensors").rename(c.tmp / "elsewhere.safetensors")
    index = {"metadata": {}, "weight_map": {"model.embed_tokens.weight": "../elsewhere.safetensors"}}
    (model / "model.safetensors.index.json").write_text(json.dumps(index))
    return model


def _ppl(model: Path, c: Ctx, *flags: str) -> list:
    return ["eval", "ppl", "--model", model, "--lengths", "16", "--max-docs", "1", "-o", c.tmp / "ppl.json",
            "--no-progress", "--no-figure", *flags]


def _saved_with_dca(c: Ctx) -> Path:
    """A copy of the tiny model saved after ``apply_dca(chunk_size=40)`` (its config carries the settings)."""
    from transformers import AutoModelForCausalLM

    import zebra_llm

    from transformers.utils import logging

    logging.disable_progress_bar()  # the row's stderr must hold the command's line alone
    try:
        model = AutoModelForCausalLM.from_pretrained(c.tiny_model)
        zebra_llm.apply_dca(model, chunk_size=40)
        out = c.model_copy("saved_dca")
        model.save_pretrained(out)
    finally:
        logging.enable_progress_bar()
    return out


def _perplexity_of_one_token(c: Ctx):
    from transformers import AutoModelForCausalLM

    from zebra_llm.eval import perplexity

    model = AutoModelForCausalLM.from_pretrained(c.tiny_model)
    return lambda: perplexity(model, torch.tensor([5]))


def _fifo(c: Ctx) -> Path:
    path = c.tmp / "corpus.fifo"
    os.mkfifo(path)
    return path


def _no_cuda() -> bool:
    return not torch.cuda.is_available()


LATIN1 = "Caf\u00e9 cr\u00e8me, na\u00efve fa\u00e7ade.\n".encode("latin-1")

CASES = [
    Case("dca-positions-huge", "`zebra dca positions 100000 --chunk-size 6 --pretraining-length 10`",
         lambda c: ["dca", "positions", "100000", "--chunk-size", "6", "--pretraining-length", "10"],
         2, "seq_len must be in [1, 1024] (the printed matrix has seq_len^2 cells), got 100000"),
    Case("config-json-malformed", "a model directory whose `config.json` is not JSON (`zebra dca settings DIR`)",
         lambda c: ["dca", "settings", c.write("broken/config.json", '{"model_type": "llama",').parent],
         2, "config.json is not valid JSON: Expecting property name enclosed in double quotes"),
    Case("safetensors-truncated-generate", "`zebra generate --model DIR` with a truncated `model.safetensors`",
         lambda c: (_truncate(c.model_copy() / "model.safetensors"),
                    ["generate", "hi", "--model", c.tmp / "model", "--max-new-tokens", "1"])[1],
         2, "model.safetensors is truncated"),
    Case("safetensors-random-convert", "`zebra convert DIR OUT` with random bytes as `model.safetensors`",
         lambda c: (c.model_copy(), c.write("model/model.safetensors", os.urandom(4096)),
                    ["convert", c.tmp / "model", c.tmp / "out"])[-1],
         2, "is not a safetensors file"),
    Case("safetensors-truncated-resume", "`zebra train pretrain --resume`, checkpoint `model.safetensors` truncated",
         _resume_with(lambda ck, c: _truncate(ck / "model.safetensors")), 2, "model.safetensors is truncated"),
    Case("optimizer-truncated", "`zebra train pretrain --resume`, checkpoint `optimizer.pt` truncated",
         _resume_with(lambda ck, c: _truncate(ck / "optimizer.pt")), 2, "optimizer.pt is truncated or corrupt"),
    Case("trainer-state-corrupt", "`zebra train pretrain --resume`, `trainer_state.json` not JSON",
         _resume_with(lambda ck, c: (ck / "trainer_state.json").write_text('{"step": 2')), 2,
         "trainer_state.json is corrupt"),
    Case("resume-other-shape", "`zebra train pretrain --resume` from a checkpoint of another model shape",
         _resume_with(_other_shape), 2, "does not fit the model: size mismatch"),
    Case("resume-other-lr", "`zebra train pretrain --resume --lr 0.5` (trained with another rate)",
         _resume_with(lambda ck, c: None, "--lr", "0.5"), 2,
         "optim.lr differs from the checkpoint's (0.01 there, 0.5 now); a resume may change only train.steps"),
    Case("resume-steps-below", "`zebra train pretrain --resume --steps 1` (checkpoint at step 2)",
         _resume_with(lambda ck, c: None, "--steps", "1"), 2,
         "train.steps (1) is below the checkpoint's step (2)"),
    Case("yaml-malformed", "`zebra train pretrain -c bad.yaml` (an unclosed list)",
         lambda c: ["train", "pretrain", "-c", c.write("bad.yaml", "train: [1,\n")],
         2, "is not valid YAML: expected the node content, but found '<stream end>'"),
    Case("yaml-python-tag", "`zebra train pretrain -c evil.yaml` with `!!python/object/apply:os.system`",
         lambda c: ["train", "pretrain", "-c", c.write("evil.yaml", "x: !!python/object/apply:os.system ['true']\n")],
         2, "only plain YAML values are allowed (tags that build Python objects are refused)"),
    Case("set-lr-inf", "`zebra train pretrain --set optim.lr=.inf`",
         lambda c: ["train", "pretrain", "--set", "optim.lr=.inf", "-o", c.tmp / "out"],
         2, "optim.lr must be a finite number, got inf"),
    Case("device-cuda-cpu-only", "`zebra eval ppl --device cuda` on a CPU-only torch",
         lambda c: ["eval", "ppl", "--model", c.tiny_model, "--device", "cuda", "-o", c.tmp / "ppl.json"],
         2, "device: cuda is not available", when=_no_cuda),
    Case("config-dev-null", "`zebra train pretrain -c /dev/null`",
         lambda c: ["train", "pretrain", "-c", "/dev/null"],
         2, "config: /dev/null is not a regular file (it is a character device)"),
    Case("data-fifo", "`zebra train pretrain --data FIFO` (a named pipe)",
         lambda c: ["train", "pretrain", "--data", _fifo(c), "-o", c.tmp / "out"],
         2, "is not a regular file or directory (it is a FIFO)"),
    Case("corpus-latin1", "`zebra eval ppl --data latin1.txt` (a Latin-1 file)",
         lambda c: ["eval", "ppl", "--model", c.tiny_model, "--data", c.write("latin1.txt", LATIN1),
                    "--lengths", "8", "-o", c.tmp / "ppl.json", "--no-progress"],
         2, "latin1.txt is not valid utf-8 text: byte 0xe9 at offset 3 (invalid continuation byte); convert the file "
            "or give its encoding"),
    Case("jsonl-non-string", "`zebra train pretrain --data docs.jsonl` with `{\"text\": 3}`",
         lambda c: ["train", "pretrain", "--model-config", write_tiny_llama_config(c.tmp), "--data",
                    c.write("docs.jsonl", '{"text": 3}\n'), "-o", c.tmp / "out", "--no-progress"],
         2, "docs.jsonl line 1 field 'text' must be a string, got int"),
    Case("config-not-utf8", "`zebra train pretrain -c latin1.yaml`",
         lambda c: ["train", "pretrain", "-c", c.write("latin1.yaml", b"# caf\xe9\ntrain: {steps: 2}\n")],
         2, "is not valid utf-8 text: byte 0xe9 at offset 5 (invalid continuation byte); config files must be UTF-8"),
    Case("lit-non-string-field", "`zebra train lit --data x.jsonl` with `{\"prompt\": 1, \"response\": \"a\"}`",
         lambda c: ["train", "lit", "--from", c.tiny_model, "--data",
                    c.write("x.jsonl", '{"prompt": 1, "response": "a"}\n'), "-o", c.tmp / "out", "--no-progress"],
         2, "x.jsonl line 1: field 'prompt' must be a string, got int"),
    Case("convert-dest-exists", "`zebra convert SRC FILE` where FILE exists",
         lambda c: ["convert", c.tiny_model, c.write("taken.txt", "keep me")],
         2, "already exists (a file); pass --overwrite (overwrite=True) to replace it"),
    Case("convert-dest-is-src", "`zebra convert SRC SRC --overwrite`",
         lambda c: ["convert", c.model_copy(), c.tmp / "model", "--overwrite"],
         2, "is the source"),
    Case("ppl-stride-above-window", "`zebra eval ppl --mode windows --lengths 16 --stride 32`",
         lambda c: ["eval", "ppl", "--model", c.tiny_model, "--mode", "windows", "--lengths", "16", "--stride", "32",
                    "-o", c.tmp / "ppl.json"],
         2, "stride (32) must not exceed the window length (16): a larger stride leaves the tokens between windows "
            "unscored"),
    Case("weights-missing", "`zebra eval ppl --model DIR` whose `model.safetensors` lacks some weights",
         lambda c: _ppl(_edit_weights(c, _drop_mlp), c), 2,
         "3 weight(s) missing from the files: model.layers.1.mlp.down_proj.weight, model.layers.1.mlp.gate_proj.weight, "
         "model.layers.1.mlp.up_proj.weight; loading would initialise the missing ones at random. Fix the files, or "
         "pass --allow-missing-weights (strict=False)"),
    Case("weights-unexpected", "`zebra generate --model DIR` whose `model.safetensors` holds an extra tensor",
         lambda c: ["generate", "hi", "--model", _edit_weights(c, lambda w: w.update(extra=torch.zeros(3))),
                    "--max-new-tokens", "1"], 2,
         "1 weight(s) not used by the model: extra; loading would ignore the unused ones"),
    Case("weights-other-shape", "`zebra convert DIR OUT`, a weight's shape differs from `config.json`",
         lambda c: ["convert", _edit_weights(c, _widen_mlp), c.tmp / "out"], 2,
         "1 weight(s) of another shape than config.json says: model.layers.0.mlp.up_proj.weight ((128, 32) in the "
         "files, (64, 32) in the config)"),
    Case("config-negative-size", "`zebra eval ppl --model DIR` with `hidden_size: -1` in `config.json`",
         lambda c: _ppl(_edit_config(c, hidden_size=-1), c), 2,
         "config.json: hidden_size must be a positive integer, got -1"),
    Case("config-heads-indivisible", "`config.json` with a hidden size the heads do not divide (no `head_dim`)",
         lambda c: _ppl(_edit_config(c, hidden_size=30, head_dim=None), c), 2,
         "config.json describes no valid model: The hidden size (30) is not a multiple of the number of attention "
         "heads (4)"),
    Case("config-unknown-activation", "`config.json` with `hidden_act: nosuch` (an impossible architecture)",
         lambda c: _ppl(_edit_config(c, hidden_act="nosuch"), c), 2,
         "config.json describes no model transformers can build: 'nosuch' is not a name transformers knows"),
    Case("config-too-large", "`config.json` whose parameters cannot fit in memory (`hidden_size: 4194304`)",
         lambda c: _ppl(_edit_config(c, hidden_size=2**22, intermediate_size=2**22, head_dim=2**20), c), 2,
         "parameters in float32: "),
    Case("no-weights-generate", "`zebra generate --model DIR`, a directory with `config.json` but no weights",
         lambda c: ["generate", "hi", "--model", (c.model_copy(), (c.tmp / "model" / "model.safetensors").unlink(),
                                                 c.tmp / "model")[-1]], 2,
         "has a config.json but no weights (model.safetensors, model.safetensors.index.json or pytorch_model.bin)"),
    Case("index-shard-outside", "`zebra eval ppl --model DIR` whose safetensors index names `../elsewhere.safetensors`",
         lambda c: _ppl(_sharded_outside(c), c), 2,
         "names the shard '../elsewhere.safetensors', outside the model directory"),
    Case("convert-no-such-path", "`zebra convert no/such/model OUT` (offline, a path that does not exist)",
         lambda c: ["convert", "nosuch/model", c.tmp / "out"], 2,
         "model: nosuch/model is not a local path (nothing exists there) and cannot be loaded as a hub name"),
    Case("dca-settings-no-such-path", "`zebra dca settings no/such` (offline, a path that does not exist)",
         lambda c: ["dca", "settings", "no/such"], 2,
         "model: no/such is not a local path (nothing exists there) and cannot be loaded as a hub name"),
    Case("export-dest-exists", "`zebra export SRC OUT` where OUT exists",
         lambda c: ["export", c.model_copy(), c.write("taken/keep.txt", "keep me").parent], 2,
         "already exists (a directory); pass --overwrite (overwrite=True) to replace it"),
    Case("export-dest-is-src", "`zebra export SRC SRC --overwrite`",
         lambda c: ["export", c.model_copy(), c.tmp / "model", "--overwrite"], 2, "is the source"),
    Case("set-int-exponent", "`zebra train pretrain --set data.seq_len=1e9`",
         lambda c: ["train", "pretrain", "--set", "data.seq_len=1e9", "-o", c.tmp / "out"], 2,
         "data.seq_len must be an integer (digits only, no exponent or decimal point), got '1e9'"),
    Case("seq-len-beyond-memory", "`zebra train pretrain --set data.seq_len=1000000000000`",
         lambda c: ["train", "pretrain", "--model-config", write_tiny_llama_config(c.tmp), "--set",
                    "data.seq_len=1000000000000", "-o", c.tmp / "out", "--no-progress"], 2,
         "data.seq_len=1000000000000: one micro-batch of "),
    Case("experiment-only-unknown", "`zebra experiment zebra_strategies --only nosuch`",
         lambda c: ["experiment", "zebra_strategies", "--only", "nosuch", "--out", c.tmp / "exp"], 2,
         "--only: 'nosuch' is not a cell of zebra_strategies"),
    Case("experiment-report-only-bad-set", "`zebra experiment zebra_strategies --report-only --set nosuch=1`",
         lambda c: ["experiment", "zebra_strategies", "--report-only", "--set", "nosuch=1", "--out", c.tmp / "exp"],
         2, "nosuch is not a known field"),
    Case("saved-method-contradicted", "`zebra eval ppl --model DIR -m rerope`, DIR saved after `apply_dca(chunk_size=40)`",
         lambda c: _ppl(_saved_with_dca(c), c, "-m", "rerope"), 2,
         "the model was saved with method dca (chunk_size=40"),
    Case("perplexity-one-token", "Python: `perplexity(model, torch.tensor([5]))`",
         _perplexity_of_one_token, "ValueError",
         "perplexity: input_ids has 1 token(s) per sequence; at least score_from + 1 = 2 are needed"),
]


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """A finished 2-step run of the tiny Llama with a resumable checkpoint at step 2."""
    from zebra_llm.train import pretrain

    tmp = tmp_path_factory.mktemp("trained")
    torch.set_num_threads(1)
    cfg = tiny_pretrain_config(write_tiny_llama_config(tmp), tmp / "run", train={"steps": 2, "save_every": 2})
    pretrain(cfg)
    return tmp / "run"


def _leftovers(root: Path) -> list[Path]:
    return [p for p in root.rglob(".*") if p.name.endswith((".tmp", ".old"))]


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_one_line(case, tmp_path, tiny_model_dir, trained_run, capsys, monkeypatch):
    from zebra_llm.cli import app
    from zebra_llm.cli._common import run_guarded

    if not case.when():
        pytest.skip("not applicable on this machine")
    monkeypatch.delenv("ZEBRA_DEBUG", raising=False)
    ctx = Ctx(tmp_path, Path(tiny_model_dir), trained_run)
    made = case.setup(ctx)
    if isinstance(case.status, str):  # the library raises the typed exception
        with pytest.raises(Exception) as e:
            made()
        assert type(e.value).__name__ == case.status and case.message in str(e.value)
        return
    before = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.is_file()}
    code = run_guarded(app, [str(a) for a in made])
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == case.status, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert case.message in lines[0], lines[0]
    # nothing half-written: no temporary or backup left, no input file touched, no finished model
    assert not _leftovers(tmp_path)
    assert all(p.stat().st_mtime_ns == t for p, t in before.items() if p.exists() and p.name != "metrics.jsonl")
    assert not (tmp_path / "out" / "final").exists()
    assert {p for p in tmp_path.rglob("*") if p.is_file()} - set(before) <= {tmp_path / "run" / "metrics.jsonl"}


def test_ctrl_c_outside_training_is_one_line_exit_130(capsys, monkeypatch):
    import typer

    from zebra_llm.cli._common import run_guarded

    monkeypatch.delenv("ZEBRA_DEBUG", raising=False)
    app = typer.Typer()

    @app.command()
    def slow() -> None:
        raise KeyboardInterrupt  # what Ctrl-C raises while a model loads

    assert run_guarded(app, []) == 130  # typer's own handling: 128 + SIGINT, no traceback
    assert "Traceback" not in capsys.readouterr().err


def render_page() -> str:
    rows = []
    for c in CASES:
        status = f"`{c.status}` (Python)" if isinstance(c.status, str) else str(c.status)
        message, shown = c.message.replace("|", "\\|"), c.input.replace("|", "\\|")
        prefix = "" if isinstance(c.status, str) else "error: "
        rows.append(f"| {shown} | {status} | `{prefix}...{message}...` |")
    return "\n".join([
        "# Errors: what bad input gets",
        "",
        "Every mistake in a command's input ends with one line on stderr, `error: <message>`, exit status 2,",
        "and nothing half-written: no partial result, checkpoint or temporary file is left behind, and no input",
        "is modified. The message names the file, field or setting and what is allowed. The Python API raises",
        "the same message as a typed exception (`ValueError`, `FileNotFoundError`, `FileExistsError`, ...).",
        "Set `ZEBRA_DEBUG=1` to see the traceback instead. Ctrl-C outside training exits with status 130",
        "without a traceback; a training run stopped by SIGTERM or Ctrl-C checkpoints first and exits with 143",
        "or 130 (see `zebra train --help`).",
        "",
        "The table below is generated from `tests/cli/test_cli_errors.py`, which checks every row (the message",
        "column is the exact part of the line that the test matches):",
        "",
        "| input | exit status | message |",
        "| --- | --- | --- |",
        *rows,
        "",
        "Related rules:",
        "",
        "- Text files (corpora, `.jsonl`, parquet binary columns, LIT records) are decoded strictly as UTF-8,",
        "  or with `--encoding` / `data.encoding` / `encoding=`; a byte that does not decode is an error with",
        "  the file and byte offset, never a replacement character. Record fields must be strings.",
        "- A resume may change only `train.steps` (upwards; the learning-rate decay then ends at the new last",
        "  step), where and how often the run saves and reports (`train.output_dir`, `save_every`,",
        "  `keep_checkpoints`, `log_every`, `progress`), `train.micro_batch_size`, `train.nonfinite`,",
        "  `engine.*`, `model.attn_implementation`, `model.lora.merge` and the data's location (its tokens must",
        "  be the same). Any other changed field is refused by name. `--resume` with no checkpoint starts from",
        "  step 0 and says so; what was resumed is always printed (also with `--no-progress`).",
        "- A training step whose loss or gradient norm is inf/nan stops the run (`train.nonfinite=stop`, exit",
        "  status 2) before the update, keeping the newest checkpoint as the last good one and writing no",
        "  `final/`; `train.nonfinite=skip` drops such updates and counts them (`skipped_steps` in",
        "  `metrics.jsonl`, which is strict JSON: non-finite numbers are `null`).",
        "- `zebra convert` and `zebra export` never write over their source (or into it, or over a directory",
        "  holding it), and replace an existing output only with `--overwrite`.",
        "- Every command that loads a model (eval, generate, convert, export, train, the server) refuses weights",
        "  that transformers would repair silently: missing from the files, not used by the model, or of another",
        "  shape than `config.json` says (the first three are named). `--allow-missing-weights` (`strict=False`",
        "  of `load_model`) loads such a model anyway, with a warning.",
        "- Integer settings take digits only (`1e9` and `4.0` are refused), and sizes are checked against the",
        "  memory there is before anything is allocated: a model's parameters (counted without allocating) and",
        "  one training micro-batch's tokens.",
        "- `zebra eval` resumes an output file only with items produced by the same model files, method",
        "  settings, tokens and library version; others are recomputed, and the run says how many were reused.",
        "",
    ])


def test_errors_page_is_generated_from_this_table():
    assert DOC.read_text() == render_page(), "docs/errors.md is out of date: PYTHONPATH=src python tests/cli/test_cli_errors.py"


if __name__ == "__main__":
    DOC.parent.mkdir(exist_ok=True)
    DOC.write_text(render_page())
    print(f"wrote {DOC}")
