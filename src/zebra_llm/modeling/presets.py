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
from dataclasses import dataclass

from .layout import DEFAULT_LAYOUT, ZebraLayout, given


def llama_shape(*, layers: int, hidden: int, heads: int, mlp: int, vocab: int, positions: int,
                kv_heads: int | None = None, rope_theta: float = 10000.0, tied: bool = True, **more) -> dict:
    """The ``ZebraConfig`` fields of a Llama-style shape (``kv_heads`` None: as many as ``heads``); ``more``:
    any other field (e.g. ``rms_norm_eps``)."""
    return dict(vocab_size=vocab, hidden_size=hidden, intermediate_size=mlp, num_hidden_layers=layers,
                num_attention_heads=heads, num_key_value_heads=kv_heads or heads, max_position_embeddings=positions,
                rope_parameters={"rope_type": "default", "rope_theta": rope_theta}, tie_word_embeddings=tied, **more)


@dataclass(frozen=True)
class Preset:
    """A named model: what it is for, its shape (``ZebraConfig`` fields) and its layer settings (Zebra's
    defaults unless it says otherwise). Its description is written from these, so it cannot disagree."""

    purpose: str
    shape: dict
    layout: ZebraLayout = DEFAULT_LAYOUT

    @property
    def kwargs(self) -> dict:
        """The preset's ``ZebraConfig`` fields (a copy: changing it leaves the preset as it is)."""
        return {**copy.deepcopy(self.shape), **given(self.layout.settings())}

    @property
    def description(self) -> str:
        s, layout = self.shape, self.layout
        q, kv = s["num_attention_heads"], s["num_key_value_heads"]
        heads = f"{q} heads" if q == kv else f"{q} query / {kv} key-value heads"
        return (f"{self.purpose}: {s['num_hidden_layers']} layers, hidden {s['hidden_size']}, {heads}, "
                f"MLP {s['intermediate_size']}, vocabulary {s['vocab_size']}, {s['max_position_embeddings']} "
                f"positions, RoPE base {s['rope_parameters']['rope_theta']:g}, window {layout.window}, "
                f"group size {layout.layer_group_size}")


PRESETS: dict[str, Preset] = {
    "debug": Preset(
        "tiny model for tests (SmolLM2's vocabulary)",
        llama_shape(layers=4, hidden=64, heads=4, kv_heads=2, mlp=128, vocab=49152, positions=8192),
        ZebraLayout(layer_group_size=2, window=16, approx_chunk_size=8),
    ),
    "cpu-20m": Preset(
        "~20M parameters for CPU benchmarks and short training runs",
        llama_shape(layers=8, hidden=512, heads=8, kv_heads=2, mlp=1024, vocab=4096, positions=32768),
    ),
    "paper-117m": Preset(
        "117M-class, paper-like",
        llama_shape(layers=12, hidden=768, heads=12, mlp=2048, vocab=32000, positions=16384),
    ),
    "paper-345m": Preset(
        "345M-class, paper-like",
        llama_shape(layers=24, hidden=1024, heads=16, mlp=2816, vocab=32000, positions=16384),
    ),
    "llama2-7b": Preset(
        "Llama-2-7B shape",
        llama_shape(layers=32, hidden=4096, heads=32, mlp=11008, vocab=32000, positions=4096, tied=False,
                    rms_norm_eps=1e-5),
    ),
}


def list_presets() -> dict[str, str]:
    """Preset names and what each one is."""
    return {name: p.description for name, p in PRESETS.items()}


def preset_kwargs(name: str) -> dict:
    if name not in PRESETS:
        raise ValueError(f"preset must be one of {sorted(PRESETS)}, got {name!r}")
    return PRESETS[name].kwargs


__all__ = ["PRESETS", "Preset", "llama_shape", "list_presets", "preset_kwargs"]
