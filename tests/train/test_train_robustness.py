"""Training that cannot go silently wrong: non-finite values, what a resume may
change, Ctrl-C, and checkpoints that survive a kill at any moment (issue 11,
items 3, 4 and 11)."""

import json
import os
import signal
import types

import pytest
import torch
import typer
import yaml
from train_helpers import tiny_pretrain_config, write_tiny_llama_config

from zebra_llm.io import atomic_directory, backup_path
from zebra_llm.train import PretrainConfig, pretrain
from zebra_llm.train.checkpoint import clean_stale, latest_checkpoint, list_checkpoints
from zebra_llm.train.config import ConfigError, OptimOptions, check_resume
from zebra_llm.train.engine import NonFiniteLossError

pytestmark = pytest.mark.usefixtures("one_thread")

# A two-layer Zebra model small enough to train in a second per step; its
# attention pattern comes from the training config (model.attention).
TINY_ZEBRA = {
    "model_type": "zebra", "vocab_size": 49152, "hidden_size": 32, "intermediate_size": 64,
    "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
    "max_position_embeddings": 1024, "tie_word_embeddings": True, "window": 8,
}


def strict_json_lines(path) -> list[dict]:
    """Parse like a strict JSON reader would: NaN / Infinity tokens are an error."""
    def refuse(token):
        raise ValueError(f"non-JSON token {token} in {path}")

    return [json.loads(line, parse_constant=refuse) for line in path.read_text().splitlines() if line.strip()]


def _zebra_config(tmp_path, out, **train):
    path = tmp_path / "tiny_zebra.json"
    path.write_text(json.dumps(TINY_ZEBRA))
    cfg = tiny_pretrain_config(path, out, train={"steps": 2, "save_every": 2, **train})
    cfg["model"].update(attention="group", layer_group_size=2)
    return cfg


@pytest.fixture(scope="module")
def zebra_run(tmp_path_factory):
    """A finished 2-step run of the tiny Zebra model with a checkpoint at step 2."""
    tmp = tmp_path_factory.mktemp("zebra_run")
    cfg = _zebra_config(tmp, tmp / "run")
    pretrain(cfg)
    return cfg, latest_checkpoint(tmp / "run")


# ------------------------------------------------------------------ item 3: finite values


@pytest.mark.parametrize("override, field", [
    ("optim.lr=.inf", "optim.lr"), ("optim.lr=.nan", "optim.lr"), ("optim.weight_decay=.nan", "optim.weight_decay"),
    ("optim.grad_clip=.inf", "optim.grad_clip"), ("train.steps=.inf", "train.steps"),
])
def test_non_finite_config_values_are_refused_by_name(override, field):
    with pytest.raises(ConfigError, match=rf"^{field} must be "):
        PretrainConfig.load(None, [override])


def test_direct_construction_refuses_non_finite():
    with pytest.raises(ConfigError, match="optim.lr must be a finite number"):
        OptimOptions(lr=float("inf"))
    with pytest.raises(ConfigError, match="optim.weight_decay must be a finite number"):
        OptimOptions(weight_decay=float("nan"))  # nan < 0 is False: passed the old range check


def test_non_finite_step_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    # lr 1e30: the first update blows the weights up, the second step's gradient is nan
    out = tmp_path / "run"
    cfg = tiny_pretrain_config(write_tiny_llama_config(tmp_path), out, optim={"lr": 1e30},
                               train={"steps": 4, "save_every": 1})
    with pytest.raises(NonFiniteLossError, match=r"train.nonfinite: step 2 has a non-finite loss or gradient.*"
                                                  r"last good checkpoint is .*step_00000001"):
        pretrain(cfg)
    assert [p.name for p in list_checkpoints(out)] == ["step_00000001"]
    assert not (out / "final").exists()
    records = strict_json_lines(out / "metrics.jsonl")  # valid JSON: the nan is null
    assert records[-1]["step"] == 2 and records[-1]["grad_norm"] is None and records[-1]["nonfinite"]
    from safetensors.torch import load_file

    weights = load_file(out / "checkpoints" / "step_00000001" / "model.safetensors")
    assert all(torch.isfinite(t).all() for t in weights.values())


def test_skip_mode_drops_non_finite_updates_and_counts_them(tmp_path):
    out = tmp_path / "run"
    cfg = tiny_pretrain_config(write_tiny_llama_config(tmp_path), out, optim={"lr": 1e30},
                               train={"steps": 3, "nonfinite": "skip"})
    result = pretrain(cfg)
    assert result.skipped_steps == 2 and result.step == 3
    records = strict_json_lines(out / "metrics.jsonl")
    assert [r["skipped_steps"] for r in records] == [0, 1, 2]
    assert [r.get("skipped", False) for r in records] == [False, True, True]
    # the skipped updates never reached the weights
    assert all(torch.isfinite(p).all() for p in result.model.parameters())


# ------------------------------------------------------------------ item 4: what a resume may change


def test_resume_rules_per_field():
    saved = PretrainConfig.load(None, ["train.steps=4"]).to_dict()
    grown = PretrainConfig.load(None, ["train.steps=8", "engine.device=cpu", "train.save_every=3"]).to_dict()
    assert check_resume(saved, grown, 4) == [
        "engine.device 'auto' -> 'cpu'", "train.save_every 0 -> 3", "train.steps 4 -> 8"]
    for override, field in (("optim.lr=0.5", "optim.lr"), ("model.attention=global", "model.attention"),
                            ("data.seq_len=64", "data.seq_len"), ("train.seed=3", "train.seed"),
                            ("model.overrides={hidden_size: 64}", "model.overrides"),
                            ("train.batch_size=4", "train.batch_size")):
        now = PretrainConfig.load(None, ["train.steps=4", override]).to_dict()
        with pytest.raises(ConfigError, match=rf"^{field} differs from the checkpoint's"):
            check_resume(saved, now, 4)
    with pytest.raises(ConfigError, match=r"train.steps \(3\) is below the checkpoint's step \(4\)"):
        check_resume(saved, PretrainConfig.load(None, ["train.steps=3"]).to_dict(), 4)


def test_resume_with_another_attention_layout_or_lr_is_refused(tmp_path, zebra_run):
    cfg, ckpt = zebra_run
    out = tmp_path / "again"
    for section, key, value, field in (("model", "attention", "global", "model.attention"),
                                       ("optim", "lr", 0.5, "optim.lr")):
        new = json.loads(json.dumps(cfg))
        new[section][key] = value
        new["train"].update(resume=str(ckpt), output_dir=str(out), steps=3)
        with pytest.raises(ValueError, match=rf"^{field} differs from the checkpoint's"):
            pretrain(new)
        assert not (out / "config.yaml").exists()  # nothing recorded for a refused resume
    new = json.loads(json.dumps(cfg))
    new["train"].update(resume=str(ckpt), output_dir=str(out), steps=1)
    with pytest.raises(ValueError, match=r"train.steps \(1\) is below the checkpoint's step \(2\)"):
        pretrain(new)


def test_resume_says_what_it_resumed_without_a_progress_bar(tmp_path, zebra_run, capfd):
    cfg, ckpt = zebra_run
    new = json.loads(json.dumps(cfg))
    new["train"].update(resume=str(ckpt), output_dir=str(tmp_path / "more"), steps=3)
    result = pretrain(new)
    assert result.start_step == 2 and result.step == 3
    err = capfd.readouterr().err
    assert f"resumed from {ckpt} at step 2 of 3; changed: train.output_dir" in err
    assert "train.steps 2 -> 3" in err
    saved = yaml.safe_load((tmp_path / "more" / "config.yaml").read_text())
    assert saved["train"]["steps"] == 3


def test_resume_without_a_checkpoint_says_it_starts_fresh(tmp_path, capfd):
    cfg = tiny_pretrain_config(write_tiny_llama_config(tmp_path), tmp_path / "run", train={"steps": 1, "resume": True})
    result = pretrain(cfg)
    assert result.start_step == 0 and result.step == 1
    assert f"--resume: no checkpoint in {tmp_path / 'run' / 'checkpoints'}; starting from step 0" in capfd.readouterr().err


# ------------------------------------------------------------------ item 11: Ctrl-C and checkpoints


def test_sigint_checkpoints_like_sigterm(tmp_path):
    cfg = tiny_pretrain_config(write_tiny_llama_config(tmp_path), tmp_path / "run", train={"steps": 3})
    # What the process had before the run: default_int_handler in a terminal, SIG_IGN when started in
    # the background (nohup ... &, a shell without job control); the run must put back that one.
    before = signal.getsignal(signal.SIGINT)

    def ctrl_c_after_1(step, record):
        if step == 1:
            os.kill(os.getpid(), signal.SIGINT)

    result = pretrain(cfg, callbacks=[ctrl_c_after_1])
    assert result.interrupted and result.stop_signal == "SIGINT" and result.step == 1
    assert [p.name for p in list_checkpoints(tmp_path / "run")] == ["step_00000001"]
    assert signal.getsignal(signal.SIGINT) is before  # handler removed again


@pytest.fixture
def sigint_ignored():
    """SIGINT ignored, as in a process started in the background by nohup or a shell without job control."""
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


@pytest.mark.usefixtures("sigint_ignored")
def test_run_started_with_sigint_ignored_checkpoints_on_sigterm(tmp_path):
    cfg = tiny_pretrain_config(write_tiny_llama_config(tmp_path), tmp_path / "run", train={"steps": 3})
    term_before = signal.getsignal(signal.SIGTERM)

    def sigterm_after_1(step, record):
        if step == 1:
            os.kill(os.getpid(), signal.SIGTERM)

    result = pretrain(cfg, callbacks=[sigterm_after_1])
    assert result.interrupted and result.stop_signal == "SIGTERM" and result.step == 1
    assert [p.name for p in list_checkpoints(tmp_path / "run")] == ["step_00000001"]
    assert not (tmp_path / "run" / "final").exists()
    # both handlers are the process's own again: SIGINT stays ignored after the run
    assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    assert signal.getsignal(signal.SIGTERM) is term_before


def test_cli_exit_status_of_an_interrupted_run(capsys):
    from zebra_llm.cli.train import _finish

    for name, code in (("SIGINT", 130), ("SIGTERM", 143)):
        result = types.SimpleNamespace(interrupted=True, stop_signal=name, step=1, checkpoint="ck")
        with pytest.raises(typer.Exit) as e:
            _finish(result)
        assert e.value.exit_code == code
        assert f"stopped after step 1 by {name}" in capsys.readouterr().err


def _fake_checkpoint(path, step):
    path.mkdir(parents=True)
    (path / "trainer_state.json").write_text(json.dumps({"step": step, "data": {}}))
    return path


def test_a_swap_interrupted_between_renames_is_found_and_recovered(tmp_path, monkeypatch):
    root = tmp_path / "run" / "checkpoints"
    ck = _fake_checkpoint(root / "step_00000002", 2)
    real_replace = os.replace
    calls = []

    def crash_on_second(src, dst):
        calls.append(dst)
        if len(calls) == 2:  # the old one is aside, the new one not yet in place: power cut
            raise OSError("power cut")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", crash_on_second)
    with pytest.raises(OSError, match="power cut"), atomic_directory(ck) as tmp:
        (tmp / "trainer_state.json").write_text(json.dumps({"step": 2, "data": {}}))
    monkeypatch.setattr(os, "replace", real_replace)
    assert not ck.exists() and backup_path(ck).is_dir()
    assert latest_checkpoint(tmp_path / "run") == backup_path(ck)  # resume still finds it
    # leftovers of killed writes: a temporary checkpoint, a temporary final model, a metrics temp file
    (root / ".step_00000004.x1y2.tmp").mkdir()
    (tmp_path / "run" / ".final.abc.tmp").mkdir()
    (tmp_path / "run" / ".metrics.jsonl.q.tmp").write_text("")
    (tmp_path / "run" / ".mine.tmp").write_text("")  # not ours: left alone
    clean_stale(tmp_path / "run")
    assert list_checkpoints(tmp_path / "run") == [ck]
    assert sorted(p.name for p in root.iterdir()) == ["step_00000002"]
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [".mine.tmp", "checkpoints"]


def test_checkpoint_files_and_parent_are_fsynced_before_and_after_the_rename(tmp_path, monkeypatch):
    synced = []
    real_fsync = os.fsync

    def spy(fd):
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", spy)
    target = tmp_path / "ck"
    with atomic_directory(target) as tmp:
        (tmp / "sub").mkdir()
        (tmp / "sub" / "weights").write_bytes(b"x" * 10)
        (tmp / "state.json").write_text("{}")
        staged = tmp
    names = [os.path.relpath(p, tmp_path) for p in synced]
    inner = os.path.relpath(staged, tmp_path)
    # every file, then its directories bottom-up, under the temporary name; then the parent after the rename
    assert f"{inner}/sub/weights" in names and f"{inner}/state.json" in names
    assert names.index(f"{inner}/sub/weights") < names.index(f"{inner}/sub") < names.index(inner)
    assert names[-1] == "."
