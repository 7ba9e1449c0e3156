"""Named Zebra configurations (``ZebraConfig.from_preset(name, **overrides)``).

All are Llama-style (RMSNorm, SwiGLU, RoPE) with Zebra's grouped local-global
attention: layers 0, L, 2L, ... global, the others a sliding window.

* ``debug``: a tiny model for tests (fits SmolLM2's tokenizer).
* ``cpu-20m``: about 20M parameters, small enough to train and benchmark at
  16k tokens on a CPU (``benchmarks/zebra_model.py``; measurements in
  docs/benchmarks.md); the 4096-token vocabulary keeps the logits of a 16k
  batch small next to the activations. Override ``vocab_size=49152`` to train
  it with SmolLM2's tokenizer (43M parameters).
* ``paper-117m`` / ``paper-345m``: small paper-like models for pretraining
  from scratch, 117M- and 345M-class; the widths are GPT-2 small / medium
  shapes in Llama form (our choice, not the paper's published
  hyper-parameters).
* ``llama2-7b``: Llama-2-7B's shape (32 layers, hidden 4096, 32 heads, MLP
  11008, RoPE base 10000, 4096 positions), the base model the paper adapts to
  long context (long context adaptation training).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Preset:
    description: str
    kwargs: dict = field(default_factory=dict)


# Each preset spells out every field although many repeat: a preset is read as one complete shape,
# and a shared base dict would make a reader assemble it (`duplicates` lists these on purpose).
# Each preset is written out in full rather than derived from a base: a preset is read as one model's
# complete settings, and the shared values (RoPE, tying, group attention) are the model's, not a default.
PRESETS: dict[str, Preset] = {
    "debug": Preset(
        "tiny model for tests: 4 layers, hidden 64, 4 query / 2 key-value heads, SmolLM2 vocabulary (49152), "
        "window 16, group size 2",
        dict(
            vocab_size=49152,
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=4,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=8192,
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
            tie_word_embeddings=True,
            attention="group",
            layer_group_size=2,
            window=16,
            approx_chunk_size=8,
        ),
    ),
    "cpu-20m": Preset(
        "~20M parameters for CPU benchmarks and short training runs: 8 layers, hidden 512, 8 query / 2 key-value "
        "heads, MLP 1024, vocabulary 4096, window 512, group size 4",
        dict(
            vocab_size=4096,
            hidden_size=512,
            intermediate_size=1024,
            num_hidden_layers=8,
            num_attention_heads=8,
            num_key_value_heads=2,
            max_position_embeddings=32768,
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
            tie_word_embeddings=True,
            attention="group",
            layer_group_size=4,
            window=512,
        ),
    ),
    "paper-117m": Preset(
        "117M-class, paper-like: 12 layers, hidden 768, 12 heads, MLP 2048, vocabulary 32000, "
        "window 512, group size 4",
        dict(
            vocab_size=32000,
            hidden_size=768,
            intermediate_size=2048,
            num_hidden_layers=12,
            num_attention_heads=12,
            num_key_value_heads=12,
            max_position_embeddings=16384,
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
            tie_word_embeddings=True,
            attention="group",
            layer_group_size=4,
            window=512,
        ),
    ),
    "paper-345m": Preset(
        "345M-class, paper-like: 24 layers, hidden 1024, 16 heads, MLP 2816, vocabulary 32000, "
        "window 512, group size 4",
        dict(
            vocab_size=32000,
            hidden_size=1024,
            intermediate_size=2816,
            num_hidden_layers=24,
            num_attention_heads=16,
            num_key_value_heads=16,
            max_position_embeddings=16384,
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
            tie_word_embeddings=True,
            attention="group",
            layer_group_size=4,
            window=512,
        ),
    ),
    "llama2-7b": Preset(
        "Llama-2-7B shape: 32 layers, hidden 4096, 32 heads, MLP 11008, vocabulary 32000, RoPE base 10000, "
        "4096 positions, window 512, group size 4",
        dict(
            vocab_size=32000,
            hidden_size=4096,
            intermediate_size=11008,
            num_hidden_layers=32,
            num_attention_heads=32,
            num_key_value_heads=32,
            max_position_embeddings=4096,
            rms_norm_eps=1e-5,
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
            tie_word_embeddings=False,
            attention="group",
            layer_group_size=4,
            window=512,
        ),
    ),
}


def list_presets() -> dict[str, str]:
    """Preset names and what each one is."""
    return {name: p.description for name, p in PRESETS.items()}


def preset_kwargs(name: str) -> dict:
    if name not in PRESETS:
        raise ValueError(f"preset must be one of {sorted(PRESETS)}, got {name!r}")
    return copy.deepcopy(PRESETS[name].kwargs)


__all__ = ["PRESETS", "Preset", "list_presets", "preset_kwargs"]
