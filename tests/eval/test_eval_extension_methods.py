"""Evaluation method specs of the extension methods: parsing, limits, application, errors."""

from __future__ import annotations

import pytest
import torch

from zebra_llm.eval import MethodSpec, load_with_method
from zebra_llm.extensions import extension_config

from dca_tiny import PRETRAINING, tiny_model


@pytest.mark.parametrize(
    "text,canonical",
    [
        ("self_extend:group_size=8,neighbor_window=1024", "self_extend:group_size=8,neighbor_window=1024"),
        ("rerope:window=4096", "rerope:window=4096"),
        ("rerope:leak=16,window=512", "rerope:leak=16,window=512"),
        ("string", "string"),
        ("string:local_value=128,shifted_offset=2700", "string:local_value=128,shifted_offset=2700"),
        ("dca:preset=chunkllama", "dca:preset=chunkllama"),
    ],
)
def test_specs_parse_to_canonical_text(text, canonical):
    assert str(MethodSpec.parse(text)) == canonical
    assert MethodSpec.parse(canonical) == MethodSpec.parse(text)


@pytest.mark.parametrize(
    "text,message",
    [
        ("self_extend:group=8", "unknown option 'group'"),
        ("self_extend:group_size=0", "group_size must be an integer >= 1"),
        ("rerope:window=abc", "window must be an integer"),
        ("rerope:logn=2", "logn must be true or false"),
        ("string:local_value=-1", "local_value must be an integer >= 0"),
        ("dca:preset=chunkllama,chunk_size=5", "preset=chunkllama"),
    ],
)
def test_spec_errors(text, message):
    with pytest.raises(ValueError, match=message):
        MethodSpec.parse(text)


def test_length_limits_follow_each_rule():
    config = tiny_model("llama").config
    c = PRETRAINING
    assert MethodSpec.parse("rerope").max_length(config) is None  # clamped distances: no limit
    assert MethodSpec.parse("rerope:leak=4,window=2").max_length(config) == 4 * ((c - 2) * 4 + 2)
    assert MethodSpec.parse("self_extend:group_size=2,neighbor_window=4").max_length(config) == 4 * ((c - 4) * 2 + 4)
    assert MethodSpec.parse("string:shifted_offset=5,local_value=2").max_length(config) == 4 * (c + 5 - 2)


@pytest.mark.parametrize(
    "text,method",
    [("self_extend:group_size=2,neighbor_window=4", "self_extend"), ("rerope:window=4,leak=2", "rerope"),
     ("string", "string"), ("dca:preset=chunkllama", "dca")],
)
def test_applied_to_a_model(text, method):
    model = tiny_model("llama")
    x = torch.randint(1, 97, (1, 40), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        before = model(x).logits
    loaded = load_with_method((model, None), text)
    assert extension_config(loaded.model)[0] == method
    with torch.no_grad():
        after = loaded.model(x).logits
    assert (after - before).abs().max() > 1e-3


def test_chunkllama_preset_follows_chunkllama():
    model = load_with_method((tiny_model("llama", max_position_embeddings=64), None), "dca:preset=chunkllama").model
    cfg = extension_config(model)[1]
    # ChunkLlama: chunk_size (largest position) 3c/4 = 48, local window c/8 = 8 -> chunk length 40
    assert (cfg.pretraining_length - 1, cfg.chunk_size, cfg.temperature) == (48, 40, False)


def test_bad_setting_for_the_model_names_method_and_setting():
    with pytest.raises(ValueError, match="method self_extend: neighbor_window"):
        load_with_method((tiny_model("llama"), None), "self_extend:neighbor_window=16")
