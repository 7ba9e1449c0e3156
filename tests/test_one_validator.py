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
