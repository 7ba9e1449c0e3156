import pytest

from zebra_llm.train import (
    ConfigError,
    LCATConfig,
    LITConfig,
    OptimOptions,
    PretrainConfig,
    RunOptions,
)
from zebra_llm.train.config import apply_overrides


def test_defaults_are_valid():
    for cls in (PretrainConfig, LCATConfig, LITConfig):
        cls()


def test_yaml_file_with_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(
        "optim:\n  lr: 3e-4\n  warmup_steps: 5\ntrain:\n  steps: 20\n  batch_size: 4\n"
        "data:\n  seq_len: 256\n  curriculum:\n    - {steps: 5, seq_len: 64}\n"
    )
    cfg = PretrainConfig.load(path, {"train.steps": 30})
    assert cfg.optim.lr == pytest.approx(3e-4)  # YAML reads 3e-4 as a string; coerced
    assert cfg.train.steps == 30
    assert cfg.data.curriculum[0].seq_len == 64
    assert cfg.data.stage_lengths(cfg.train.steps) == [(0, 64), (5, 256)]
    cfg = PretrainConfig.load(path, ["train.steps=40", "engine.compile=true", "model.overrides={num_hidden_layers: 3}"])
    assert (cfg.train.steps, cfg.engine.compile, cfg.model.overrides) == (40, True, {"num_hidden_layers": 3})


def test_toml_and_json_files(tmp_path):
    (tmp_path / "c.toml").write_text('[model]\nsource = "smollm2"\nwindow = 64\n[data]\nseq_len = 128\n')
    cfg = LCATConfig.load(tmp_path / "c.toml")
    assert (cfg.model.window, cfg.data.seq_len) == (64, 128)
    (tmp_path / "c.json").write_text('{"data": {"path": "x.jsonl"}, "model": {"lora": {"enabled": true, "r": 4}}}')
    cfg = LITConfig.load(tmp_path / "c.json")
    assert cfg.model.lora.enabled and cfg.model.lora.r == 4


@pytest.mark.parametrize(
    "overrides, field",
    [
        ({"train.steps": -5}, "train.steps"),
        ({"train.steps": 2.5}, "train.steps"),
        ({"optim.lr": 0}, "optim.lr"),
        ({"optim.lr": "fast"}, "optim.lr"),
        ({"optim.decay": "exp"}, "optim.decay"),
        ({"data.seq_len": 1}, "data.seq_len"),
        ({"data.packing": "zip"}, "data.packing"),
        ({"data.curriculum": [{"steps": 0, "seq_len": 16}]}, "data.curriculum[0].steps"),
        ({"data.curriculum": [{"steps": 2, "seq_len": 99999}]}, "data.curriculum[0].seq_len"),
        ({"engine.strategy": "zero3"}, "engine.strategy"),
        ({"engine.device": "tpu"}, "engine.device"),
        ({"model.attention": "sparse"}, "model.attention"),
        ({"model.window": 0}, "model.window"),
        ({"optim.learning_rate": 1}, "optim.learning_rate"),
        ({"trian.steps": 1}, "trian"),
    ],
)
def test_bad_values_name_the_field(overrides, field):
    with pytest.raises(ConfigError) as info:
        PretrainConfig.load(None, overrides)
    assert str(info.value).startswith(field), str(info.value)


def test_direct_construction_validates():
    with pytest.raises(ValueError, match="optim.warmup_steps"):
        OptimOptions(warmup_steps=-1)
    with pytest.raises(ValueError, match="train.batch_size"):
        RunOptions(batch_size=0)


def test_missing_config_file_and_bad_set_syntax(tmp_path):
    with pytest.raises(FileNotFoundError, match="config"):
        PretrainConfig.load(tmp_path / "nope.yaml")
    with pytest.raises(ValueError, match="KEY=VALUE"):
        apply_overrides({}, ["train.steps"])


def test_curriculum_must_leave_steps_for_the_final_length():
    cfg = PretrainConfig.load(None, {"data.curriculum": [{"steps": 10, "seq_len": 64}], "train.steps": 10})
    with pytest.raises(ValueError, match="data.curriculum"):
        cfg.data.stage_lengths(cfg.train.steps)


def test_to_dict_round_trip():
    cfg = LITConfig.load(None, {"data.path": "a.jsonl", "model.lora.enabled": True})
    assert LITConfig.from_dict(cfg.to_dict()) == cfg
