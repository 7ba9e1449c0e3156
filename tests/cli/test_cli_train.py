"""`zebra train ...`: flags over config files, and bad configs that stop
before any training starts with a message naming the field."""

import json

import pytest
import yaml
from train_helpers import losses_of, tiny_pretrain_config, write_tiny_llama_config

from zebra_llm.cli import app
from zebra_llm.cli._common import run_guarded

pytestmark = pytest.mark.usefixtures("one_thread")


def zebra(*args):
    return run_guarded(app, ["train", *map(str, args)])


@pytest.fixture
def config_file(tmp_path):
    cfg = tiny_pretrain_config(write_tiny_llama_config(tmp_path), tmp_path / "run", train={"steps": 5})
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_flags_override_the_file(tmp_path, config_file, capsys):
    assert zebra("pretrain", "-c", config_file, "--steps", 2, "--set", "optim.warmup_steps=1") == 0
    assert len(losses_of(tmp_path / "run")) == 2
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert saved["train"]["steps"] == 2 and saved["optim"]["warmup_steps"] == 1
    assert "trained to step 2" in capsys.readouterr().out


@pytest.mark.parametrize(
    "args, field",
    [
        (["--steps", "-5"], "train.steps"),
        (["--data", "missing/corpus.txt"], "data.source"),
        (["--set", "optim.learning_rate=1"], "optim.learning_rate"),
        (["--batch-size", "4", "--micro-batch-size", "3"], "train.micro_batch_size"),
        (["--strategy", "fsdp"], "engine.strategy"),
        (["--tokenizer", "./no/such/dir"], "model.tokenizer"),
        (["--model-config", "nope.json"], "model.config"),
        (["--attention", "group"], "model.attention"),  # a Llama config has no Zebra attention
    ],
)
def test_bad_pretrain_configs_fail_before_training(tmp_path, config_file, capsys, args, field):
    assert zebra("pretrain", "-c", config_file, *args) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {field}") or f" {field}" in err, err
    assert not (tmp_path / "run").exists()  # nothing started


def test_seq_len_not_above_the_window_fails(tmp_path, capsys):
    mistral = tmp_path / "mistral.json"
    mistral.write_text(json.dumps({
        "model_type": "mistral", "vocab_size": 49152, "hidden_size": 32, "intermediate_size": 64,
        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "sliding_window": 64,
    }))
    assert zebra("pretrain", "--model-config", mistral, "--seq-len", 64, "-o", tmp_path / "run") == 2
    assert "data.seq_len (64) must be greater than the attention window (64)" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_bad_lcat_and_lit_configs(tmp_path, capsys):
    assert zebra("lcat", "--from", tmp_path / "nope", "-o", tmp_path / "a") == 2
    assert "model.source" in capsys.readouterr().err
    assert zebra("lcat", "--window", 512, "--seq-len", 256, "-o", tmp_path / "a") == 2
    assert "data.seq_len (256)" in capsys.readouterr().err
    assert zebra("lcat", "--rope-factor", 2, "-o", tmp_path / "a") == 2
    assert "--rope-scaling" in capsys.readouterr().err
    assert zebra("lit", "--data", tmp_path / "missing.jsonl", "-o", tmp_path / "b") == 2
    assert "data.path" in capsys.readouterr().err
    assert zebra("lit", "--lora", "--set", "model.lora.r=0", "--data", tmp_path / "x.jsonl") == 2
    assert "model.lora.r" in capsys.readouterr().err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_zebra_preset_errors(tmp_path, capsys):
    assert zebra("pretrain", "--preset", "nope", "-o", tmp_path / "run") == 2
    assert "model.preset: preset must be one of" in capsys.readouterr().err
    assert zebra("pretrain", "--preset", "debug", "--seq-len", 16, "-o", tmp_path / "run") == 2  # debug: window 16
    assert "data.seq_len (16) must be greater than the attention window (16)" in capsys.readouterr().err
    assert zebra("pretrain", "--preset", "debug", "--attention", "global", "--seq-len", 16, "--steps", 0) == 2
    assert "train.steps" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
