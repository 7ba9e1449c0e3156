"""apply_dca on tiny random models of every supported family: reference, padding, cache, gradients."""

from __future__ import annotations

import pytest
import torch

import zebra_llm
from zebra_llm.attention import use_backend
from zebra_llm.dca import DCAConfig, apply_dca, dca_config, remove_dca

from dca_tiny import PRETRAINING, logits, tiny_model
from helpers import max_abs_err, rel_err

pytestmark = pytest.mark.usefixtures("one_thread")

FAMILIES = ["llama", "mistral", "qwen2", "qwen3", "mixtral", "qwen2_moe", "qwen3_moe"]




def ids(batch=2, seq=60, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(1, 97, (batch, seq), generator=g)


@pytest.mark.parametrize("family", FAMILIES)
def test_fast_path_matches_dense_reference(family):
    model = apply_dca(tiny_model(family), chunk_size=6, temperature=False)
    x = ids()  # 60 tokens: ten chunks of 6, pretraining_length 16
    fast = logits(model, x)
    with use_backend("reference"):
        ref = logits(model, x)
    assert max_abs_err(fast, ref) <= 1e-4


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_stacked_backend_and_temperature_match_reference(family):
    model = apply_dca(tiny_model(family), temperature=True)  # default chunk 12, temperature beyond 16
    x = ids(seq=50)
    with use_backend("reference"):
        ref = logits(model, x)
    for backend in ("sdpa", "sdpa_stacked"):
        with use_backend(backend):
            assert max_abs_err(logits(model, x), ref) <= 1e-4, backend


@pytest.mark.parametrize("family", FAMILIES)
def test_within_one_chunk_equals_unmodified_model_and_removal_restores_it(family):
    model = tiny_model(family)
    x = ids(seq=12)
    before = logits(model, x)
    apply_dca(model)  # chunk 12 = 3/4 of 16: the whole sequence is one chunk
    assert model.config._attn_implementation == "zebra_extension"  # one implementation for every method
    assert max_abs_err(logits(model, x), before) <= 1e-5
    long_x = ids(seq=40)
    dca_long = logits(model, long_x)
    remove_dca(model)
    assert model.config._attn_implementation == "sdpa"
    assert not hasattr(model.config, "zebra_dca") and not hasattr(model.config, "zebra_extension")
    assert torch.equal(logits(model, x), before)
    assert max_abs_err(logits(model, long_x), dca_long) > 1e-3  # DCA really changed something


@pytest.mark.parametrize(
    "rope",
    [
        {"rope_type": "default", "rope_theta": 10000.0},
        {"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0},
        {"rope_type": "dynamic", "factor": 2.0, "rope_theta": 10000.0},
        {"rope_type": "yarn", "factor": 4.0, "rope_theta": 10000.0, "original_max_position_embeddings": 8},
        {
            "rope_type": "llama3", "factor": 4.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8, "rope_theta": 10000.0,
        },
    ],
    ids=lambda r: r["rope_type"],
)
def test_rope_types(rope):
    model = tiny_model("llama", rope=rope)
    short = ids(seq=5)
    before = logits(model, short)
    apply_dca(model, pretraining_length=16, chunk_size=6, temperature=False)
    assert max_abs_err(logits(model, short), before) <= 1e-5  # YaRN's attention factor applied once
    x = ids(seq=45)
    with use_backend("reference"):
        ref = logits(model, x)
    assert max_abs_err(logits(model, x), ref) <= 1e-4


def test_default_pretraining_length_reads_original_max_position():
    yarn = {"rope_type": "yarn", "factor": 4.0, "rope_theta": 10000.0, "original_max_position_embeddings": 8}
    model = apply_dca(tiny_model("llama", rope=yarn, max_position_embeddings=32))
    # the temperature is off by default (the paper's DCA, as ChunkLlama runs it)
    assert dca_config(model) == DCAConfig(pretraining_length=8, chunk_size=6, temperature=False, temperature_length=8)
    plain = apply_dca(tiny_model("llama"))
    assert dca_config(plain).pretraining_length == PRETRAINING and dca_config(plain).chunk_size == 12


def _left_pad(rows, pad_id=0):
    width = max(len(r) for r in rows)
    x = torch.full((len(rows), width), pad_id)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for b, r in enumerate(rows):
        x[b, width - len(r) :] = r
        mask[b, width - len(r) :] = 1
    return x, mask


@pytest.mark.parametrize("family", ["llama", "qwen3"])
def test_padded_batch_equals_rows_alone(family):
    model = apply_dca(tiny_model(family), chunk_size=6)
    rows = [ids(1, 50, seed=2)[0], ids(1, 31, seed=3)[0], ids(1, 7, seed=4)[0]]
    x, mask = _left_pad(rows)
    batched = logits(model, x, attention_mask=mask)
    for b, r in enumerate(rows):
        alone = logits(model, r[None])
        assert max_abs_err(batched[b, -len(r) :], alone[0]) <= 1e-4
    # right padding, as in training batches
    width = 50
    x = torch.zeros(3, width, dtype=torch.long)
    mask = torch.zeros(3, width, dtype=torch.long)
    for b, r in enumerate(rows):
        x[b, : len(r)], mask[b, : len(r)] = r, 1
    batched = logits(model, x, attention_mask=mask)
    for b, r in enumerate(rows):
        assert max_abs_err(batched[b, : len(r)], logits(model, r[None])[0]) <= 1e-4


@pytest.mark.parametrize("family", ["llama", "mistral", "qwen2"])
@pytest.mark.parametrize("temperature", [False, True])
def test_decoding_with_cache_matches_full_forward(family, temperature):
    """Prefill n = prefill n-1 + decode 1, token by token and several at a time, across chunk boundaries."""
    model = apply_dca(tiny_model(family), chunk_size=6, temperature=temperature)
    x = ids(seq=47)
    full = logits(model, x)
    for step in (1, 5):
        with torch.no_grad():
            out = model(x[:, :10], use_cache=True)
            pieces, cache = [out.logits], out.past_key_values
            for t in range(10, 47, step):
                out = model(x[:, t : t + step], past_key_values=cache, use_cache=True)
                pieces.append(out.logits)
                cache = out.past_key_values
        assert max_abs_err(torch.cat(pieces, dim=1), full) <= 1e-4, step


def test_batched_generate_matches_rows_alone():
    model = apply_dca(tiny_model("llama"), chunk_size=6)
    rows = [ids(1, 40, seed=5)[0], ids(1, 23, seed=6)[0]]
    x, mask = _left_pad(rows)
    kw = dict(max_new_tokens=12, do_sample=False, pad_token_id=0)
    with torch.no_grad():
        batched = model.generate(x, attention_mask=mask, **kw)
        for b, r in enumerate(rows):
            alone = model.generate(r[None], attention_mask=torch.ones(1, len(r), dtype=torch.long), **kw)
            assert torch.equal(batched[b, -12:], alone[0, -12:])


def test_generate_greedy_matches_argmax_of_full_forward():
    model = apply_dca(tiny_model("qwen2"), chunk_size=6, temperature=False)
    prompt = ids(1, 30, seed=7)
    with torch.no_grad():
        generated = model.generate(prompt, max_new_tokens=10, do_sample=False, pad_token_id=0)
        full = logits(model, generated)
    assert torch.equal(generated[0, 30:], full[0, 29:-1].argmax(-1))


def test_gradients_through_dca_match_reference():
    model = apply_dca(tiny_model("llama"), chunk_size=6, temperature=True)
    model.train()
    x, mask = _left_pad([ids(1, 45, seed=8)[0], ids(1, 30, seed=9)[0]])
    labels = x.masked_fill(mask == 0, -100)
    grads = {}
    for backend in ("sdpa", "reference"):
        model.zero_grad()
        with use_backend(backend):
            loss = model(x, attention_mask=mask, labels=labels).loss
        loss.backward()
        grads[backend] = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    assert grads["sdpa"].keys() == grads["reference"].keys()
    for name in ("q_proj", "k_proj", "v_proj"):
        layer = f"model.layers.0.self_attn.{name}.weight"
        assert grads["sdpa"][layer].abs().sum() > 0
    for name, g in grads["sdpa"].items():
        assert rel_err(g, grads["reference"][name]) <= 1e-4, name


def test_bfloat16_close_to_float32():
    model = apply_dca(tiny_model("llama"), chunk_size=6)
    x = ids(seq=30)
    ref = logits(model, x)
    model16 = apply_dca(tiny_model("llama"), chunk_size=6)
    model16.load_state_dict(model.state_dict())
    model16.to(torch.bfloat16)
    assert rel_err(logits(model16, x), ref) <= 5e-2


def test_accelerate_dispatch_per_layer_map():
    from accelerate import dispatch_model

    model = apply_dca(tiny_model("llama"), chunk_size=6)
    x = ids(seq=40)
    expected = logits(model, x)
    device_map = {"model.embed_tokens": "cpu", "model.layers.0": "cpu", "model.layers.1": "cpu",
                  "model.norm": "cpu", "model.rotary_emb": "cpu", "lm_head": "cpu"}
    dispatched = dispatch_model(model, device_map=device_map, force_hooks=True)
    assert hasattr(dispatched.model.layers[0], "_hf_hook")
    assert max_abs_err(logits(dispatched, x), expected) <= 1e-6


def test_settings_survive_save_pretrained(tmp_path):
    from transformers import AutoConfig, AutoModelForCausalLM

    model = apply_dca(tiny_model("qwen2"), chunk_size=5, temperature=False)
    x = ids(seq=33)
    expected = logits(model, x)
    model.save_pretrained(tmp_path)
    saved = AutoConfig.from_pretrained(tmp_path).zebra_extension  # the one config key of every method
    assert saved["method"] == "dca" and saved["chunk_size"] == 5
    reloaded = apply_dca(AutoModelForCausalLM.from_pretrained(tmp_path).eval(), temperature=False)
    assert dca_config(reloaded) == DCAConfig(16, 5, False, 16)  # chunk_size 5 came from the saved config
    assert max_abs_err(logits(reloaded, x), expected) <= 1e-5


def test_settings_saved_under_the_old_key_are_read(tmp_path):
    """Models saved before DCA became one extension method kept its settings under config.zebra_dca."""
    from transformers import AutoModelForCausalLM

    model = apply_dca(tiny_model("qwen2"), chunk_size=5, temperature=False)
    x = ids(seq=33)
    expected = logits(model, x)
    remove_dca(model)
    model.config.zebra_dca = {"pretraining_length": 16, "chunk_size": 5, "temperature": False,
                              "temperature_length": 16, "previous_attn_implementation": "sdpa"}
    model.save_pretrained(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert dca_config(reloaded) == DCAConfig(16, 5, False, 16)
    apply_dca(reloaded)
    assert not hasattr(reloaded.config, "zebra_dca") and reloaded.config.zebra_extension["chunk_size"] == 5
    assert max_abs_err(logits(reloaded, x), expected) <= 1e-5
    remove_dca(reloaded)
    assert reloaded.config._attn_implementation == "sdpa"


def test_reapplying_keeps_the_original_implementation():
    model = tiny_model("llama")
    apply_dca(model, chunk_size=6)
    apply_dca(model, chunk_size=4)
    assert dca_config(model).chunk_size == 4
    remove_dca(model)
    assert model.config._attn_implementation == "sdpa"


def test_vllm_config_is_mapped_exactly():
    # Qwen2.5-7B-Instruct-1M's dual_chunk_attention_config
    qwen_1m = {"chunk_size": 262144, "local_size": 8192, "original_max_position_embeddings": 262144}
    cfg = DCAConfig.from_vllm(qwen_1m)
    assert (cfg.pretraining_length, cfg.chunk_size, cfg.local_window) == (262145, 253952, 8193)
    assert cfg.temperature and cfg.temperature_length == 262144
    assert cfg.to_vllm() == qwen_1m
    assert not DCAConfig.from_vllm({**qwen_1m, "original_max_position_embeddings": 0}).temperature
    assert not DCAConfig.from_vllm(qwen_1m, temperature=False).temperature


@pytest.mark.parametrize("vllm_chunk,local", [(15, 3), (9, 2), (20, 8)])
def test_vllm_position_rules_give_the_same_relative_positions(vllm_chunk, local):
    """vLLM's rotary caches (q: t mod L, succ: min(t mod L + L, chunk_size), inter:
    the succ value at L - 1, keys: t mod L, with L = chunk_size - local_size) against
    relative_positions of the mapped config."""
    from zebra_llm.dca import relative_positions

    cfg = DCAConfig.from_vllm({"chunk_size": vllm_chunk, "local_size": local})
    n, span = 70, vllm_chunk - local
    t = torch.arange(n)
    q_intra, q_succ = t % span, torch.clamp(t % span + span, max=vllm_chunk)
    q_inter = torch.clamp(torch.tensor(span - 1 + span), max=vllm_chunk)
    key = t % span
    gap = t[:, None] // span - t[None, :] // span
    q = torch.where(gap == 0, q_intra[:, None], torch.where(gap == 1, q_succ[:, None], q_inter))
    vllm = torch.where(t[None, :] <= t[:, None], q - key[None, :], -1)
    ours = relative_positions(n, chunk_size=cfg.chunk_size, pretraining_length=cfg.pretraining_length)
    assert torch.equal(vllm, ours)


def test_model_with_vllm_config_uses_it():
    model = tiny_model("qwen2")
    vllm = {"chunk_size": 15, "local_size": 4, "original_max_position_embeddings": 16}
    model.config.dual_chunk_attention_config = vllm
    apply_dca(model)
    assert dca_config(model) == DCAConfig(16, 11, True, 16)
    apply_dca(model, chunk_size=8)  # explicit arguments win
    assert dca_config(model).chunk_size == 8


@pytest.mark.parametrize(
    "kwargs,field",
    [
        (dict(chunk_size=16), "chunk_size"),
        (dict(chunk_size=0), "chunk_size"),
        (dict(pretraining_length=4, chunk_size=6), "chunk_size"),
        (dict(temperature="yes"), "temperature"),
    ],
)
def test_invalid_settings_raise(kwargs, field):
    with pytest.raises(ValueError, match=field):
        apply_dca(tiny_model("llama"), **kwargs)


def test_unsupported_models_raise():
    from transformers import GPT2Config, GPT2LMHeadModel

    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=1, n_head=2, n_embd=16, vocab_size=50))
    with pytest.raises(ValueError, match="model_type 'gpt2'"):
        apply_dca(gpt2)
    no_rope = tiny_model("llama")
    del no_rope.model.rotary_emb
    with pytest.raises(ValueError, match="RoPE"):
        apply_dca(no_rope)
    longrope = tiny_model("llama")
    longrope.model.rotary_emb.rope_type = "longrope"
    with pytest.raises(ValueError, match="rope type 'longrope'"):
        apply_dca(longrope)
    with pytest.raises(ValueError, match="sliding_window"):
        apply_dca(tiny_model("mistral", sliding_window=8))
    with pytest.raises(ValueError, match="gpt_oss"):
        from transformers import GptOssConfig, GptOssForCausalLM

        apply_dca(GptOssForCausalLM(GptOssConfig(num_hidden_layers=2, hidden_size=32, intermediate_size=32,
                                                 num_attention_heads=2, num_key_value_heads=1, head_dim=16,
                                                 num_local_experts=2, vocab_size=50)))
    with pytest.raises(ValueError, match="not applied"):
        remove_dca(tiny_model("llama"))


def test_packed_position_ids_are_rejected():
    model = apply_dca(tiny_model("llama"), chunk_size=6)
    x = ids(1, 20)
    position_ids = torch.cat([torch.arange(10), torch.arange(10)])[None]
    with pytest.raises(ValueError, match="consecutive position ids"):
        logits(model, x, position_ids=position_ids)


def test_exported_from_package():
    assert zebra_llm.apply_dca is apply_dca and zebra_llm.remove_dca is remove_dca
