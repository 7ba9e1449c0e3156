import pytest
from transformers import AutoConfig

from zebra_llm import ZebraConfig, list_presets

F, S, A = "full_attention", "sliding_attention", "global_approx"


def test_group_pattern_is_the_papers():
    cfg = ZebraConfig(num_hidden_layers=10, attention="group", layer_group_size=4, window=64)
    assert cfg.layer_types == [F, S, S, S, F, S, S, S, F, S]
    assert cfg.attention_types[:5] == ["global", "local", "local", "local", "global"]
    assert cfg.attention == "group" and cfg.layer_group_size == 4
    assert cfg.window == 64 and cfg.sliding_window == 64  # transformers' name for the same field
    assert cfg.approx_chunk_size == 64  # defaults to the window


@pytest.mark.parametrize("attention,expected", [("global", F), ("local", S), ("global_approx", A)])
def test_uniform_shorthands(attention, expected):
    cfg = ZebraConfig(num_hidden_layers=3, attention=attention)
    assert cfg.layer_types == [expected] * 3 and cfg.attention == attention


def test_explicit_layer_types_and_aliases():
    cfg = ZebraConfig(num_hidden_layers=3, layer_types=["global", "local", "global_approx"])
    assert cfg.layer_types == [F, S, A] and cfg.attention == "custom" and cfg.layer_group_size is None
    cfg = ZebraConfig(num_hidden_layers=2, layer_types=[F, S], sliding_window=32)
    assert cfg.window == 32


@pytest.mark.parametrize(
    "kwargs,field",
    [
        (dict(attention="group", layer_group_size=0), "layer_group_size"),
        (dict(window=0), "window"),
        (dict(approx_chunk_size=0), "approx_chunk_size"),
        (dict(num_hidden_layers=3, layer_types=[F, S]), "layer_types"),
        (dict(num_hidden_layers=2, layer_types=[F, "dense"]), "layer_types"),
        (dict(attention="zebra"), "attention"),
        (dict(num_hidden_layers=2, layer_types=[F, S], attention="group"), "layer_types"),
        (dict(num_key_value_heads=3), "num_key_value_heads"),
        (dict(hidden_act="nope"), "hidden_act"),
        (dict(rope_parameters={"rope_type": "default", "rope_theta": 1e4, "partial_rotary_factor": 0.5}), "partial"),
        (dict(rope_parameters={"rope_type": "unheard-of", "rope_theta": 1e4}), "rope_type"),
    ],
)
def test_invalid_values_name_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        ZebraConfig(**{"num_hidden_layers": 4, "hidden_size": 64, "num_attention_heads": 4, **kwargs})


def test_presets():
    names = list_presets()
    assert {"debug", "cpu-20m", "paper-117m", "llama2-7b"} <= set(names)
    dbg = ZebraConfig.from_preset("debug")
    assert (dbg.num_hidden_layers, dbg.hidden_size, dbg.num_attention_heads, dbg.num_key_value_heads) == (4, 64, 4, 2)
    assert dbg.vocab_size == 49152 and dbg.window == 16 and dbg.layer_group_size == 2
    llama = ZebraConfig.from_preset("llama2-7b")
    assert (llama.num_hidden_layers, llama.hidden_size, llama.intermediate_size) == (32, 4096, 11008)
    assert llama.layer_types[:5] == [F, S, S, S, F]
    over = ZebraConfig.from_preset("debug", window=8, attention="global")
    assert over.window == 8 and over.layer_types == [F] * 4
    custom = ZebraConfig.from_preset("debug", layer_types=[F, A, A, S])
    assert custom.layer_types == [F, A, A, S]
    with pytest.raises(ValueError, match="preset"):
        ZebraConfig.from_preset("gpt-5")


def test_round_trip_and_auto_config(tmp_path):
    cfg = ZebraConfig.from_preset("debug", layer_types=[F, A, S, S], window=12, approx_chunk_size=5)
    cfg.save_pretrained(tmp_path)
    back = AutoConfig.from_pretrained(tmp_path)
    assert isinstance(back, ZebraConfig)
    assert back.layer_types == cfg.layer_types and back.window == 12 and back.approx_chunk_size == 5
    assert back.rope_parameters == cfg.rope_parameters
    assert isinstance(AutoConfig.for_model("zebra"), ZebraConfig)
