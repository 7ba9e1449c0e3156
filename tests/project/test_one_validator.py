"""Each setting has one validator: ZebraConfig's layer settings and DCA's geometry, wherever they are given."""

import pytest

from zebra_llm.eval import MethodSpec
from zebra_llm.modeling import ZebraConfig, convert_to_zebra
from zebra_llm.train.config import ConfigError, PretrainModelOptions


@pytest.mark.parametrize("field, value", [
    ("attention", "sparse"), ("layer_group_size", 0), ("window", 0), ("approx_chunk_size", -3),
])
def test_zebra_layer_settings_are_refused_alike_everywhere(field, value):
    with pytest.raises(ValueError, match=rf"ZebraConfig\.{field} must be"):
        ZebraConfig(num_hidden_layers=4, **{field: value})
    with pytest.raises(ConfigError, match=rf"^model\.{field} must be"):
        PretrainModelOptions(**{field: value})
    with pytest.raises(ValueError, match=rf"^method zebra: option {field} must be"):
        MethodSpec.parse(f"zebra:{field}={value}")
    # refused before the (here missing) source is looked at
    with pytest.raises(ValueError, match=rf"^convert_to_zebra: {field} must be"):
        convert_to_zebra("/nonexistent/model", **{field: value})


def test_dca_geometry_is_refused_by_dca_config_before_a_model_is_loaded():
    with pytest.raises(ValueError, match="chunk_size must be smaller than pretraining_length"):
        MethodSpec.parse("dca:pretraining_length=64,chunk_size=64")
    with pytest.raises(ValueError, match="preset must be 'paper' or 'chunkllama'"):
        MethodSpec.parse("dca:preset=other")


@pytest.mark.parametrize("method, settings", [
    ("self_extend", dict(group_size=0)), ("self_extend", dict(scale_base=1)), ("rerope", dict(leak=0.5)),
    ("string", dict(local_value=9, shifted_offset=4)), ("string", dict(attention_factor=0.0)),
])
def test_extension_settings_are_refused_by_the_extension_config_before_a_model_is_loaded(method, settings):
    from zebra_llm.extensions.config import make_config

    with pytest.raises(ValueError) as own:
        make_config(method, 4096, settings)
    text = ",".join(f"{k}={v}" for k, v in settings.items())
    with pytest.raises(ValueError) as parsed:
        MethodSpec.parse(f"{method}:{text}")  # no model here: the check needs none
    assert str(parsed.value) == f"method {method}: {own.value}"


def test_dca_geometry_is_checked_once_on_the_way_to_the_kernel(monkeypatch):
    """`-m dca:chunk_size=48`: chunk_size's own range when the spec is parsed (the model, and so c, is not known
    yet), the geometry once when the config is built for the model (DCASpec), never in a forward (the layers
    run the spec they were given)."""
    from collections import OrderedDict

    import torch

    from zebra_llm.eval import methods

    import zebra_llm.attention.specs as specs
    import zebra_llm.extensions.dca as dca
    from zebra_llm.attention.dca_positions import check_geometry
    from zebra_llm.eval import load_with_method

    from eval_helpers import tiny_llama

    calls = []

    def counted(*args):
        calls.append(args)
        return check_geometry(*args)

    monkeypatch.setattr(specs, "check_geometry", counted)
    monkeypatch.setattr(dca, "check_geometry", counted)
    monkeypatch.setattr(methods, "_BUILT", OrderedDict())  # configs built by earlier tests
    spec = MethodSpec.parse("dca:chunk_size=48")
    assert calls == [(48, None)]
    loaded = load_with_method((tiny_llama(100), None), spec)
    assert calls[1:] == [(48, 64, 64)]
    with torch.no_grad():
        for _ in range(2):
            loaded.model(torch.randint(0, 100, (1, 150)))
    assert len(calls) == 2
