import pytest
import torch
from transformers import LlamaConfig, MinistralConfig, MistralConfig, Qwen2Config

from zebra_llm import ZebraConfig, flops
from zebra_llm.attention import masks
from zebra_llm.flops import LayerAttention, attended_pairs


def _count_pairs(layer, n):
    """Brute force over the same mask predicates the attention functions use."""
    qi, kj = torch.arange(n)[:, None], torch.arange(n)[None, :]
    if layer.kind == "global":
        return int(masks.causal(qi, kj).sum())
    band = int(masks.sliding_window(layer.window)(qi, kj).sum())
    if layer.kind == "local":
        return band
    chunks = torch.arange(n // layer.chunk_size)[None, :]
    return band + int(masks.chunk_summary_visible(layer.window, layer.chunk_size)(qi, chunks).sum())


@pytest.mark.parametrize("n", [1, 5, 16, 17, 63, 100])
@pytest.mark.parametrize(
    "layer",
    [LayerAttention("global"), LayerAttention("local", 16), LayerAttention("local", 1),
     LayerAttention("global_approx", 16, 5), LayerAttention("global_approx", 7, 7)],
    ids=lambda l: f"{l.kind}-{l.window}-{l.chunk_size}",
)
def test_attended_pairs_match_the_masks(layer, n):
    assert attended_pairs(layer, n) == _count_pairs(layer, n)


def test_llama_formula_by_hand():
    cfg = LlamaConfig(vocab_size=100, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2)
    n, h, d = 10, 32, 8
    est = flops.estimate(cfg, n, batch_size=3)
    assert est.projections == 3 * 2 * (2 * n * h * (2 * 4 * d + 2 * 2 * d))
    assert est.mlp == 3 * 2 * (2 * n * 3 * h * 48)
    assert est.attention == 3 * 2 * (4 * 4 * d * n * (n + 1) // 2)
    assert est.lm_head == 3 * 2 * n * h * 100
    assert est.forward_backward == 3 * est.forward == flops.training_flops(cfg, n, batch_size=3)


def test_sliding_windows_of_plain_configs_are_honoured():
    shape = dict(vocab_size=100, hidden_size=32, intermediate_size=48, num_hidden_layers=4, num_attention_heads=4)
    n = 1000
    dense = flops.estimate(LlamaConfig(**shape), n).attention
    mistral = flops.estimate(MistralConfig(**shape, sliding_window=64), n).attention
    assert mistral == 4 * (4 * 4 * 8) * (64 * 65 // 2 + (n - 64) * 64)  # 4 layers, 4 heads of 8
    qwen = Qwen2Config(**shape, use_sliding_window=True, sliding_window=64, max_window_layers=2)
    assert flops.estimate(qwen, n).attention == (dense + mistral) // 2  # layers 2, 3 slide
    ministral = MinistralConfig(**shape, sliding_window=64, layer_types=["full_attention", "sliding_attention"] * 2)
    assert flops.estimate(ministral, n).attention == (dense + mistral) // 2


def test_zebra_matches_the_equivalent_plain_config():
    z = ZebraConfig.from_preset("cpu-25m")
    twin = MinistralConfig(
        vocab_size=z.vocab_size, hidden_size=z.hidden_size, intermediate_size=z.intermediate_size,
        num_hidden_layers=z.num_hidden_layers, num_attention_heads=z.num_attention_heads,
        num_key_value_heads=z.num_key_value_heads, head_dim=z.head_dim, sliding_window=z.window,
        layer_types=z.layer_types,
    )
    assert flops.estimate(z, 16384) == flops.estimate(twin, 16384)
    all_global = ZebraConfig.from_preset("cpu-25m", attention="global")
    ratio = flops.forward_flops(z, 16384) / flops.forward_flops(all_global, 16384)
    assert 0.3 < ratio < 0.7  # 2 of 8 layers global at 16k tokens


def test_bad_inputs():
    with pytest.raises(ValueError, match="seq_len"):
        flops.estimate(ZebraConfig.from_preset("debug"), 0)
    from transformers import GPT2Config

    with pytest.raises(ValueError, match="gpt2"):
        flops.estimate(GPT2Config(), 128)
