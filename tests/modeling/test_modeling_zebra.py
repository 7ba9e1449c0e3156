"""ZebraForCausalLM against independent implementations, cache parity, generation, save/load."""

import pytest
import torch
from transformers import (
    AttentionInterface,
    AutoModelForCausalLM,
    DynamicCache,
    MinistralConfig,
    MinistralForCausalLM,
)
from transformers.masking_utils import AttentionMaskInterface

from zebra_llm import ZebraConfig, ZebraForCausalLM, hf
from zebra_llm.attention import reference
from zebra_llm.modeling import zebra_attention_forward

from helpers import max_abs_err
from zebra_helpers import VOCAB, A, F, S, logits, tiny

TOL = 1e-4


def ministral_twin(model, **config_kwargs):
    """transformers' own Ministral with the same layer pattern and weights."""
    c = model.config
    cfg = MinistralConfig(
        vocab_size=c.vocab_size,
        hidden_size=c.hidden_size,
        intermediate_size=c.intermediate_size,
        num_hidden_layers=c.num_hidden_layers,
        num_attention_heads=c.num_attention_heads,
        num_key_value_heads=c.num_key_value_heads,
        head_dim=c.head_dim,
        max_position_embeddings=c.max_position_embeddings,
        rms_norm_eps=c.rms_norm_eps,
        rope_parameters=dict(c.rope_parameters),
        tie_word_embeddings=c.tie_word_embeddings,
        sliding_window=c.window,
        layer_types=list(c.layer_types),
        **config_kwargs,
    )
    twin = MinistralForCausalLM(cfg).eval()
    twin.load_state_dict(model.state_dict(), strict=True)
    return twin


def test_group_model_matches_ministral_eager():
    # 70 tokens, window 16: most queries see a window shorter than their past; GQA 4/2.
    model = tiny()
    assert model.config.layer_types == [F, S, F, S]
    twin = ministral_twin(model, attn_implementation="eager")
    ids = torch.randint(0, VOCAB, (2, 70))
    ref = logits(twin, ids)
    assert max_abs_err(logits(model, ids), ref) <= TOL
    # left padding: positions of real tokens must agree
    mask = torch.ones_like(ids)
    mask[1, :11] = 0
    ours, theirs = logits(model, ids, attention_mask=mask), logits(twin, ids, attention_mask=mask)
    assert max_abs_err(ours[0], theirs[0]) <= TOL and max_abs_err(ours[1, 11:], theirs[1, 11:]) <= TOL


@pytest.mark.parametrize(
    "rope",
    [
        {"rope_type": "linear", "rope_theta": 10000.0, "factor": 4.0},
        {"rope_type": "dynamic", "rope_theta": 10000.0, "factor": 2.0},
        {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0, "original_max_position_embeddings": 32},
        {
            "rope_type": "llama3",
            "rope_theta": 500000.0,
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 32,
        },
    ],
    ids=lambda r: r["rope_type"],
)
def test_rope_types_match_transformers(rope):
    model = tiny(rope_parameters=rope, max_position_embeddings=48)
    twin = ministral_twin(model, attn_implementation="eager")
    ids = torch.randint(0, VOCAB, (1, 60))  # beyond max_position_embeddings: dynamic rescales
    assert max_abs_err(logits(model, ids), logits(twin, ids)) <= TOL


def test_stock_implementations_agree_and_global_approx_refuses_them():
    model = tiny()
    ids = torch.randint(0, VOCAB, (1, 50))
    ref = logits(model, ids)
    for impl in ("eager", "sdpa"):
        model.set_attn_implementation(impl)
        assert max_abs_err(logits(model, ids), ref) <= TOL, impl
    approx = tiny([F, A, S, A])
    with pytest.raises(ValueError, match="global_approx"):
        approx.set_attn_implementation("sdpa")
    with pytest.raises(ValueError, match="global_approx"):
        ZebraForCausalLM._from_config(approx.config, attn_implementation="eager")


def _reference_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """A structural attention implementation that calls the dense oracles directly."""
    kpm = hf.key_padding_mask(attention_mask, key)
    kind = module.attention_type
    if kind == "global":
        out = reference.global_attention(query, key, value, scale=scaling, key_padding_mask=kpm)
    elif kind == "local":
        out = reference.local_attention(query, key, value, window=module.window, scale=scaling, key_padding_mask=kpm)
    else:
        out = reference.global_approx_attention(
            query, key, value, window=module.window, chunk_size=module.approx_chunk_size, scale=scaling,
            key_padding_mask=kpm,
        )
    return out.transpose(1, 2), None


AttentionInterface.register("zebra_test_reference", _reference_attention)
AttentionMaskInterface.register("zebra_test_reference", hf.padding_mask_interface)


def test_global_approx_layers_match_the_dense_reference():
    model = tiny([A, S, A, F])
    ids = torch.randint(0, VOCAB, (2, 61))  # 61: not a multiple of the chunk (6) or the window (16)
    mask = torch.ones_like(ids)
    mask[0, :7] = 0
    fast = logits(model, ids, attention_mask=mask)
    model.set_attn_implementation("zebra_test_reference")
    slow = logits(model, ids, attention_mask=mask)
    assert max_abs_err(fast[1], slow[1]) <= TOL and max_abs_err(fast[0, 7:], slow[0, 7:]) <= TOL
    # the summaries matter: a purely local model gives different logits
    local = tiny([S, S, S, F])
    local.load_state_dict(model.state_dict())
    assert max_abs_err(logits(local, ids)[1], fast[1]) > 1e-2


@pytest.mark.parametrize("layer_types", [[F, S, F, S], [A, S, A, F]], ids=["group", "with_global_approx"])
def test_token_by_token_decoding_equals_full_forward(layer_types):
    model = tiny(layer_types)
    ids = torch.randint(0, VOCAB, (2, 75))  # window 16: decoding runs far past it
    full = logits(model, ids)
    cache = DynamicCache(config=model.config)
    steps = []
    with torch.no_grad():
        out = model(ids[:, :5], use_cache=True, **hf.cache_kwargs(cache))  # a short prefill first
        steps.append(out.logits)
        for t in range(5, ids.shape[1]):
            out = model(ids[:, t : t + 1], use_cache=True, **hf.cache_kwargs(cache))
            steps.append(out.logits)
            for layer, kind in zip(cache.layers, model.config.layer_types):
                held = layer.keys.shape[-2]
                if kind == S:
                    assert held <= model.config.window, f"local layer holds {held} > window"
                else:
                    assert held == t + 1
    assert max_abs_err(torch.cat(steps, dim=1), full) <= TOL


def test_chunked_prefill_equals_full_forward():
    model = tiny([F, S, A, S])
    ids = torch.randint(0, VOCAB, (1, 90))
    full = logits(model, ids)
    cache = DynamicCache(config=model.config)
    parts = []
    with torch.no_grad():
        for a, b in ((0, 37), (37, 41), (41, 90)):
            parts.append(model(ids[:, a:b], use_cache=True, **hf.cache_kwargs(cache)).logits)
    assert max_abs_err(torch.cat(parts, dim=1), full) <= TOL


def test_generate_left_padding_equals_each_row_alone():
    model = tiny([F, S, A, S])
    model.generation_config.pad_token_id = 0
    rows = [torch.randint(1, VOCAB, (1, n)) for n in (24, 13)]  # window 16: prompts and answers cross it
    batch = torch.zeros(2, 24, dtype=torch.long)
    mask = torch.zeros(2, 24, dtype=torch.long)
    for i, r in enumerate(rows):
        batch[i, 24 - r.shape[1] :] = r
        mask[i, 24 - r.shape[1] :] = 1
    kwargs = dict(max_new_tokens=16, do_sample=False, output_scores=True, return_dict_in_generate=True)
    together = model.generate(batch, attention_mask=mask, **kwargs)
    # generate's own cache: local layers keep window - 1 positions, the others everything
    held = [layer.keys.shape[-2] for layer in hf.output_cache(together).layers]
    assert held == [24 + 15, 15, 24 + 15, 15]
    for i, r in enumerate(rows):
        alone = model.generate(r, attention_mask=torch.ones_like(r), **kwargs)
        assert torch.equal(together.sequences[i, 24:], alone.sequences[0, r.shape[1] :])
        diff = max(max_abs_err(a[i], b[0]) for a, b in zip(together.scores, alone.scores))
        assert diff <= TOL


def test_generate_greedy_matches_ministral_past_the_window():
    model = tiny()
    twin = ministral_twin(model)
    ids = torch.randint(1, VOCAB, (1, 12))
    ours = model.generate(ids, max_new_tokens=30, do_sample=False)
    theirs = twin.generate(ids, max_new_tokens=30, do_sample=False)
    assert torch.equal(ours, theirs)


def test_save_and_load_round_trip(tmp_path):
    model = tiny([F, A, S, S])
    ids = torch.randint(0, VOCAB, (1, 40))
    model.save_pretrained(tmp_path)
    back = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert isinstance(back, ZebraForCausalLM) and back.config.layer_types == [F, A, S, S]
    assert back.config._attn_implementation == "zebra"
    assert back.lm_head.weight is back.model.embed_tokens.weight  # tied embeddings stay tied
    assert torch.equal(logits(back, ids), logits(model, ids))
    assert (tmp_path / "model.safetensors").is_file()


def test_gradients_and_checkpointing():
    model = tiny([F, A, S, S]).train()
    ids = torch.randint(0, VOCAB, (2, 40))
    loss = model(ids, labels=ids).loss
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    assert len(grads) == len(list(model.parameters())) and all(torch.isfinite(g).all() for g in grads.values())
    model.zero_grad()
    model.activation_checkpointing_enable()
    model(ids, labels=ids).loss.backward()
    assert max(max_abs_err(p.grad, grads[n]) for n, p in model.named_parameters()) <= 1e-5


def test_bfloat16_forward_is_close():
    model = tiny()
    ids = torch.randint(0, VOCAB, (1, 24))
    ref = logits(model, ids)
    low = logits(model.to(torch.bfloat16), ids)
    assert low.dtype == torch.bfloat16 and max_abs_err(low, ref) <= 0.1 * ref.abs().max().item()


def test_refuses_what_it_cannot_compute():
    model = tiny()
    ids = torch.randint(0, VOCAB, (1, 20))
    packed = torch.cat([torch.arange(10), torch.arange(10)])[None]
    with pytest.raises(ValueError, match="packed"):
        model(ids, position_ids=packed, use_cache=False)  # more cases in test_cache.py
    with pytest.raises(ValueError, match="2D padding"):
        model(ids, attention_mask=torch.ones(1, 1, 20, 20, dtype=torch.bool))
    with pytest.raises(ValueError, match="dropout"):
        zebra_attention_forward(
            model.model.layers[0].self_attn, *(torch.randn(1, 2, 4, 16) for _ in range(3)), None, dropout=0.1
        )


def test_registered_with_auto_classes():
    cfg = ZebraConfig.from_preset("debug", vocab_size=VOCAB)
    assert isinstance(AutoModelForCausalLM.from_config(cfg), ZebraForCausalLM)


def test_cache_under_either_argument_name():
    """transformers >= 5.24 passes the cache as ``cache``, older ones (and users) as ``past_key_values``."""
    from transformers import DynamicCache

    model = tiny([F, S, S, S], window=4)
    ids = torch.randint(1, VOCAB, (1, 12))  # past the window
    full = model(ids).logits
    for name in ("cache", "past_key_values"):
        cache = DynamicCache(config=model.config)
        model(ids[:, :7], use_cache=True, **{name: cache})
        cont = model(ids[:, 7:], use_cache=True, **{name: cache}).logits
        torch.testing.assert_close(cont, full[:, 7:], rtol=1e-4, atol=1e-4)
    a, b = DynamicCache(config=model.config), DynamicCache(config=model.config)
    with pytest.raises(ValueError, match="not both"):
        model(ids, cache=a, past_key_values=b)
