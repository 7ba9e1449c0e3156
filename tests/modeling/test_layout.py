"""ZebraLayout (modeling/layout.py): the one record of Zebra's layer settings, their defaults and their check;
every place that takes the settings (ZebraConfig, conversion, presets, training configs, the zebra: method,
the CLI flags) takes its names and defaults from it. The change detectors compare against the record's
fields, never against numbers written here a second time."""

import dataclasses
import inspect

import pytest
import typer.main

from zebra_llm._checks import check_int, int_problem
from zebra_llm.modeling import ZebraConfig, convert_checkpoint, convert_to_zebra, zebra_config_from
from zebra_llm.modeling.layout import (
    ATTENTIONS,
    DEFAULT_LAYOUT,
    FULL,
    GLOBAL_APPROX,
    LAYER_SETTINGS,
    SLIDING,
    LayerSettingError,
    ZebraLayout,
    check_layer_settings,
)



def _llama(n_layers: int = 8):
    """A random Llama of ``n_layers`` layers (enough for the group pattern of the default L to show)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    return LlamaForCausalLM(LlamaConfig(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=n_layers,
                                        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64))


def test_the_record_holds_the_defaults_the_paper_setup_uses():
    assert LAYER_SETTINGS == ("attention", "layer_group_size", "window", "approx_chunk_size")
    assert DEFAULT_LAYOUT == ZebraLayout(attention="group", layer_group_size=4, window=512, approx_chunk_size=None)
    assert DEFAULT_LAYOUT.chunk_size == DEFAULT_LAYOUT.window  # global_approx chunks default to the window
    assert ZebraLayout(window=64, approx_chunk_size=8).chunk_size == 8
    with pytest.raises(dataclasses.FrozenInstanceError):
        DEFAULT_LAYOUT.window = 3


def test_the_rule_gives_one_layer_type_per_layer():
    assert ZebraLayout().layer_types(10) == [FULL, SLIDING, SLIDING, SLIDING] * 2 + [FULL, SLIDING]
    assert ZebraLayout(layer_group_size=1).layer_types(3) == [FULL] * 3
    assert ZebraLayout(attention="global").layer_types(2) == [FULL] * 2
    assert ZebraLayout(attention="local").layer_types(2) == [SLIDING] * 2
    assert ZebraLayout(attention="global_approx").layer_types(2) == [GLOBAL_APPROX] * 2
    with pytest.raises(LayerSettingError, match=r"^ZebraConfig\.num_hidden_layers must be an integer >= 1, got 0$"):
        ZebraLayout().layer_types(0)


@pytest.mark.parametrize("field, value, allowed", [
    ("attention", "sparse", "must be one of group, global, local, global_approx, got 'sparse'"),
    ("attention", None, "must be given, got None"),
    ("layer_group_size", 0, "must be an integer >= 1, got 0"),
    ("layer_group_size", True, "must be an integer >= 1, got True"),
    ("window", 2.0, "must be an integer >= 1, got 2.0"),
    ("window", None, "must be given, got None"),
    ("approx_chunk_size", -3, "must be an integer >= 1, got -3"),
])
def test_the_validator_names_the_field_and_what_is_allowed(field, value, allowed):
    with pytest.raises(LayerSettingError) as e:
        ZebraLayout(**{field: value})
    assert (e.value.field, e.value.problem) == (field, allowed)
    assert str(e.value) == f"ZebraConfig.{field} {allowed}"


def test_partial_settings_are_checked_by_the_same_validator():
    check_layer_settings(window=8)  # the others not given: allowed
    check_layer_settings(approx_chunk_size=None)
    with pytest.raises(LayerSettingError, match="must be given"):
        check_layer_settings(window=None, required=("window",))
    with pytest.raises(TypeError, match="unknown Zebra layer setting"):
        check_layer_settings(widow=8)
    assert ATTENTIONS == ("group", "global", "local", "global_approx")


def test_one_integer_check():
    assert check_int("n", 3) == 3 and int_problem(2, 2) is None
    for bad in (0, True, 1.0, "1", None):
        with pytest.raises(ValueError, match=r"^n must be an integer >= 1, got "):
            check_int("n", bad)
    with pytest.raises(KeyError):
        check_int("n", -1, 0, error=lambda name, problem: KeyError(f"{name}: {problem}"))


# -- every user of the settings takes its defaults from the record


def test_zebra_config_takes_its_defaults_from_the_record():
    cfg = ZebraConfig(num_hidden_layers=8)
    assert cfg.window == DEFAULT_LAYOUT.window and cfg.approx_chunk_size == DEFAULT_LAYOUT.chunk_size
    assert cfg.attention == DEFAULT_LAYOUT.attention and cfg.layer_group_size == DEFAULT_LAYOUT.layer_group_size
    assert cfg.layer_types == DEFAULT_LAYOUT.layer_types(8)


@pytest.mark.parametrize("function", [zebra_config_from, convert_to_zebra, convert_checkpoint])
def test_conversion_signatures_show_the_record(function):
    params = inspect.signature(function).parameters
    for f in dataclasses.fields(ZebraLayout):
        assert params[f.name].kind is inspect.Parameter.KEYWORD_ONLY
        assert params[f.name].default == getattr(DEFAULT_LAYOUT, f.name)


def test_conversion_uses_the_record_defaults():
    config = convert_to_zebra(_llama(8)).config
    assert config.layer_types == DEFAULT_LAYOUT.layer_types(8)
    assert (config.window, config.approx_chunk_size) == (DEFAULT_LAYOUT.window, DEFAULT_LAYOUT.chunk_size)


def test_presets_are_the_record_unless_they_say_otherwise():
    from zebra_llm.modeling.presets import PRESETS

    for name, preset in PRESETS.items():
        cfg = ZebraConfig.from_preset(name)
        layout = preset.layout
        assert (cfg.window, cfg.layer_group_size, cfg.approx_chunk_size) == (
            layout.window, layout.layer_group_size, layout.chunk_size)
        assert f"window {layout.window}, group size {layout.layer_group_size}" in preset.description
    assert PRESETS["llama2-7b"].layout is DEFAULT_LAYOUT
    assert PRESETS["debug"].layout != DEFAULT_LAYOUT


def test_training_configs_take_the_record():
    from zebra_llm.train.config import LCATModelOptions, PretrainModelOptions
    from zebra_llm.train.models import ZEBRA_FIELDS

    lcat = LCATModelOptions()
    assert ZebraLayout(**{n: getattr(lcat, n) for n in LAYER_SETTINGS}) == DEFAULT_LAYOUT
    pretrain = PretrainModelOptions()  # None: the preset's
    assert all(getattr(pretrain, n) is None for n in LAYER_SETTINGS)
    assert ZEBRA_FIELDS == LAYER_SETTINGS


def test_the_zebra_method_has_the_record_as_options_and_its_defaults():
    from zebra_llm.eval import MethodSpec, load_with_method
    from zebra_llm.experiments.lit import LITExperimentConfig

    spec = MethodSpec.parse("zebra")
    assert [f.name for f in dataclasses.fields(spec.options)][: len(LAYER_SETTINGS)] == list(LAYER_SETTINGS)
    model = load_with_method((_llama(8), None), "zebra").model
    assert model.config.layer_types == DEFAULT_LAYOUT.layer_types(8) and model.config.window == DEFAULT_LAYOUT.window
    assert LITExperimentConfig().layer_group_size == DEFAULT_LAYOUT.layer_group_size
    with pytest.raises(ValueError, match="^window must be an integer >= 1, got 0$"):
        LITExperimentConfig(window=0)


def _params(app, name: str) -> dict:
    group = typer.main.get_command(app)
    command = group.commands[name] if hasattr(group, "commands") else group
    return {p.name: p for p in command.params}


def test_cli_flags_are_generated_from_the_record():
    from zebra_llm.cli.model import app as model_app
    from zebra_llm.cli.train import app as train_app

    convert = _params(model_app, "convert")
    for f in dataclasses.fields(ZebraLayout):
        assert convert[f.name].default == getattr(DEFAULT_LAYOUT, f.name)
        assert f"--{f.name.replace('_', '-')}" in convert[f.name].opts
        assert f.metadata["help"] in convert[f.name].help
    for command in ("pretrain", "lcat"):
        params = _params(train_app, command)
        for name in LAYER_SETTINGS:
            assert params[name].default is None and f"model.{name}" in params[name].help
    assert f"default {DEFAULT_LAYOUT.window}" in _params(train_app, "lcat")["window"].help
