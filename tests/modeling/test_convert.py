"""convert_to_zebra: Llama-family checkpoints become Zebra models with their weights unchanged."""

import pytest
import torch
from transformers import (
    AutoModelForCausalLM,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)

from zebra_llm import ZebraForCausalLM, convert_to_zebra
from zebra_llm.modeling import convert_checkpoint

from helpers import max_abs_err

TOL = 1e-4
SHAPE = dict(
    vocab_size=300,
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=256,
    initializer_range=0.1,
)


def _random(cls, cfg_cls, **kwargs):
    torch.manual_seed(0)
    model = cls(cfg_cls(**{**SHAPE, **kwargs})).eval()
    with torch.no_grad():  # biases and norms away from their init, so a dropped one would show
        for name, p in model.named_parameters():
            if name.endswith("bias") or "norm" in name:
                p.add_(0.1 * torch.randn_like(p))
    return model


FAMILIES = {
    "llama-bias-llama3rope": lambda: _random(
        LlamaForCausalLM,
        LlamaConfig,
        attention_bias=True,
        mlp_bias=True,
        head_dim=24,  # not hidden / heads
        rope_parameters={
            "rope_type": "llama3",
            "rope_theta": 500000.0,
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 64,
        },
    ),
    "mistral": lambda: _random(MistralForCausalLM, MistralConfig, sliding_window=None, tie_word_embeddings=True),
    "qwen2": lambda: _random(Qwen2ForCausalLM, Qwen2Config, rope_parameters={"rope_type": "yarn", "rope_theta": 1e6, "factor": 2.0, "original_max_position_embeddings": 128}),
    "qwen3": lambda: _random(Qwen3ForCausalLM, Qwen3Config, head_dim=32, attention_bias=True),
}


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_global_conversion_equals_the_original(family):
    source = FAMILIES[family]()
    before = {k: v.clone() for k, v in source.state_dict().items()}
    zebra = convert_to_zebra(source, attention="global")
    assert isinstance(zebra, ZebraForCausalLM) and zebra.config.attention == "global"
    ids = torch.randint(0, 300, (2, 200))
    with torch.no_grad():
        assert max_abs_err(zebra(ids).logits, source(ids).logits) <= TOL
    # weights copied unchanged, and the source is left untouched (its own tensors, not shared)
    for name, t in zebra.state_dict().items():
        assert torch.equal(t, before[name]), name
        assert t.data_ptr() != source.state_dict()[name].data_ptr()


def test_group_conversion_keeps_weights_and_changes_attention():
    source = FAMILIES["qwen2"]()
    zebra = convert_to_zebra(source, attention="group", layer_group_size=2, window=8)
    assert zebra.config.layer_types == ["full_attention", "sliding_attention"] * 2
    assert zebra.config.attention_bias and not zebra.config.attention_out_bias
    ids = torch.randint(0, 300, (1, 40))
    with torch.no_grad():
        short, full = zebra(ids[:, :8]).logits, source(ids[:, :8]).logits
        # within the window nothing differs; past it the local layers see less
        assert max_abs_err(short, full) <= TOL
        assert max_abs_err(zebra(ids).logits[:, 20:], source(ids).logits[:, 20:]) > 1e-3


def test_real_smollm2_global_conversion_equals_original(load_smollm2):
    original, tok = load_smollm2()
    zebra = convert_to_zebra("smollm2", attention="global")
    assert zebra.config.num_hidden_layers == 30 and zebra.config.rope_parameters["rope_theta"] == 100000.0
    assert zebra.config.max_position_embeddings == 8192 and zebra.config.tie_word_embeddings
    assert zebra.lm_head.weight is zebra.model.embed_tokens.weight
    assert torch.equal(zebra.model.embed_tokens.weight, original.model.embed_tokens.weight)
    text = "import math\n\ndef area(r):\n    \"\"\"Area of a circle of radius r.\"\"\"\n    return math.pi * r ** 2\n" * 3
    ids = tok(text, return_tensors="pt").input_ids[:, :80]
    with torch.no_grad():
        assert max_abs_err(zebra(ids).logits, original(ids).logits) <= TOL


def test_config_overrides_for_long_context_adaptation():
    source = FAMILIES["mistral"]()
    rope = {"rope_type": "default", "rope_theta": 500000.0}
    zebra = convert_to_zebra(source, attention="global", rope_parameters=rope, max_position_embeddings=1024)
    assert zebra.config.rope_parameters["rope_theta"] == 500000.0 and zebra.config.max_position_embeddings == 1024
    expected = 1.0 / (500000.0 ** (torch.arange(0, 16, 2).float() / 16))
    assert torch.allclose(zebra.model.rotary_emb.inv_freq, expected)
    ids = torch.randint(0, 300, (1, 30))
    with torch.no_grad():  # position 0 is unrotated, later positions see the new base
        ours, theirs = zebra(ids).logits, source(ids).logits
        assert max_abs_err(ours[:, 0], theirs[:, 0]) <= TOL and max_abs_err(ours, theirs) > 1e-3


def test_unsupported_families_are_refused():
    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=50))
    with pytest.raises(ValueError, match="'gpt2'"):
        convert_to_zebra(gpt2)
    with pytest.raises(ValueError, match="attention"):
        convert_to_zebra(FAMILIES["mistral"](), attention="zigzag")
    with pytest.raises(ValueError, match="model_or_path"):
        convert_to_zebra(42)
    with pytest.raises(FileNotFoundError):
        convert_to_zebra("./no/such/model")


def test_convert_checkpoint_from_directory(tmp_path):
    source = FAMILIES["llama-bias-llama3rope"]()
    source.save_pretrained(tmp_path / "src")
    out = convert_checkpoint(tmp_path / "src", tmp_path / "out", attention="group", layer_group_size=2, window=16)
    back = AutoModelForCausalLM.from_pretrained(out).eval()
    assert isinstance(back, ZebraForCausalLM) and back.config.mlp_bias and back.config.attention_out_bias
    ids = torch.randint(0, 300, (1, 16))
    with torch.no_grad():
        assert max_abs_err(back(ids).logits, source(ids).logits) <= TOL


def test_convert_checkpoint_never_overwrites_without_asking(tmp_path):
    """Issue 11, item 5: an existing output is replaced only with overwrite=True; the source never."""
    source = FAMILIES["llama-bias-llama3rope"]()
    source.save_pretrained(tmp_path / "src")
    kwargs = dict(attention="group", layer_group_size=2, window=16)
    taken = tmp_path / "taken.txt"
    taken.write_text("keep me")
    with pytest.raises(FileExistsError, match=r"already exists \(a file\); pass --overwrite"):
        convert_checkpoint(tmp_path / "src", taken, **kwargs)
    assert taken.read_text() == "keep me"
    (tmp_path / "outdir").mkdir()
    with pytest.raises(FileExistsError, match=r"already exists \(a directory\)"):
        convert_checkpoint(tmp_path / "src", tmp_path / "outdir", **kwargs)
    for target in (tmp_path / "src", tmp_path / "src" / "inner", tmp_path):
        with pytest.raises(ValueError, match="is the source"):
            convert_checkpoint(tmp_path / "src", target, overwrite=True, **kwargs)
    # replacing a file with the model directory leaves no hidden copy of the file behind
    convert_checkpoint(tmp_path / "src", taken, overwrite=True, **kwargs)
    assert (taken / "config.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["outdir", "src", "taken.txt"]
    assert sorted(p.name for p in (tmp_path / "src").iterdir()) == sorted(["config.json", "generation_config.json",
                                                                           "model.safetensors"])
