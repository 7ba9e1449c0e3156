"""FLOPs of a forward (and forward + backward) pass, for Zebra and plain Llama-family configs.

Only matrix products are counted, a multiply-add being 2 FLOPs; norms,
RoPE, softmax and activations are left out. For a sequence of ``n`` tokens,
hidden size ``h``, MLP width ``i``, vocabulary ``V``, ``Hq`` query and ``Hkv``
key/value heads of width ``d``, per sequence:

* projections, per layer: ``2 n h (2 Hq d + 2 Hkv d)`` (q and o; k and v);
* MLP, per layer: ``2 n (3 h i)`` (SwiGLU's gate, up and down);
* attention, per layer: ``4 Hq d P``, where ``P`` is the number of (query, key)
  pairs the layer scores (``2 d`` for ``q . k`` and ``2 d`` for the weighted
  value, per head and pair):

  - global (causal): ``P = n (n + 1) / 2``;
  - local, window ``w``: ``P = sum_i min(i + 1, w)``
    ``= w (w + 1) / 2 + (n - w) w`` when ``n > w``;
  - global_approx, window ``w``, chunk ``c``: the local pairs plus, for the
    summaries, ``sum_{t=0}^{n-w} floor(t / c)`` (query ``i`` sees
    ``floor((i - w + 1) / c)`` chunk summaries);
* LM head: ``2 n h V``.

The backward pass costs twice the forward (a product's gradient with respect
to each of its two inputs costs one product each), so forward + backward is
``3 x`` forward. Only visible pairs are counted: kernels that skip masked
blocks approach this; a dense masked kernel does more work.

Plain configs (``llama``, ``mistral``, ``ministral``, ``qwen2``, ``qwen3``)
are all-global unless they say otherwise: ``layer_types`` with
``sliding_attention`` entries (Ministral, Qwen with ``use_sliding_window``)
or, without ``layer_types``, a ``sliding_window`` on every layer (Mistral).
"""

from __future__ import annotations

from dataclasses import dataclass

from ._checks import check_int

SUPPORTED_MODEL_TYPES = ("zebra", "llama", "mistral", "ministral", "qwen2", "qwen3")


@dataclass(frozen=True)
class LayerAttention:
    """Which keys one layer's queries see: ``kind`` is global, local or global_approx."""

    kind: str
    window: int | None = None
    chunk_size: int | None = None


@dataclass(frozen=True)
class FlopsEstimate:
    """Forward FLOPs of one pass over ``batch_size`` sequences of ``seq_len`` tokens, by part."""

    seq_len: int
    batch_size: int
    projections: int
    mlp: int
    attention: int
    lm_head: int

    @property
    def forward(self) -> int:
        return self.projections + self.mlp + self.attention + self.lm_head

    @property
    def backward(self) -> int:
        return 2 * self.forward

    @property
    def forward_backward(self) -> int:
        return 3 * self.forward

    def as_dict(self) -> dict:
        return {
            "seq_len": self.seq_len,
            "batch_size": self.batch_size,
            "projections": self.projections,
            "mlp": self.mlp,
            "attention": self.attention,
            "lm_head": self.lm_head,
            "forward": self.forward,
            "forward_backward": self.forward_backward,
        }


def attended_pairs(layer: LayerAttention, seq_len: int) -> int:
    """Number of (query, key) pairs one layer scores over ``seq_len`` tokens (summaries count as keys)."""
    n = seq_len
    if layer.kind == "global":
        return n * (n + 1) // 2
    if layer.kind not in ("local", "global_approx"):
        raise ValueError(f"layer kind must be global, local or global_approx, got {layer.kind!r}")
    w = layer.window
    pairs = n * (n + 1) // 2 if n <= w else w * (w + 1) // 2 + (n - w) * w
    if layer.kind == "global_approx" and n >= w:
        c = layer.chunk_size
        q, r = divmod(n - w, c)
        pairs += c * q * (q - 1) // 2 + q * (r + 1)
    return pairs


def layer_attention(config) -> list[LayerAttention]:
    """Per-layer attention of a Zebra or plain Llama-family config."""
    model_type = getattr(config, "model_type", None)
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ValueError(f"flops: model type {model_type!r} is not supported; supported: {SUPPORTED_MODEL_TYPES}")
    n_layers = config.num_hidden_layers
    if model_type == "zebra":
        return [
            LayerAttention(kind, config.window, config.approx_chunk_size if kind == "global_approx" else None)
            if kind != "global"
            else LayerAttention("global")
            for kind in config.attention_types
        ]
    window = getattr(config, "sliding_window", None)
    layer_types = getattr(config, "layer_types", None)
    if layer_types is None:
        return [LayerAttention("local", window) if window else LayerAttention("global")] * n_layers
    out = []
    for i, t in enumerate(layer_types):
        if t == "full_attention":
            out.append(LayerAttention("global"))
        elif t == "sliding_attention" and window:
            out.append(LayerAttention("local", window))
        else:
            raise ValueError(f"flops: layer {i} has layer type {t!r} (sliding_window={window}), which is not counted")
    return out


def attention_flops(config, layer: LayerAttention, seq_len: int) -> int:
    """Forward FLOPs of one layer's scores and weighted sum (``QK^T`` and ``PV``) over ``seq_len`` tokens."""
    hq = config.num_attention_heads
    d = getattr(config, "head_dim", None) or config.hidden_size // hq
    return 4 * hq * d * attended_pairs(layer, seq_len)


def estimate(config, seq_len: int, *, batch_size: int = 1) -> FlopsEstimate:
    """Forward FLOPs of ``config`` on ``batch_size`` sequences of ``seq_len`` tokens (see the module docstring)."""
    for name, value in (("seq_len", seq_len), ("batch_size", batch_size)):
        check_int(f"flops: {name}", value, 1)
    layers = layer_attention(config)
    h, i, n = config.hidden_size, config.intermediate_size, seq_len
    hq = config.num_attention_heads
    hkv = getattr(config, "num_key_value_heads", None) or hq
    d = getattr(config, "head_dim", None) or h // hq
    projections = len(layers) * 2 * n * h * (2 * hq * d + 2 * hkv * d)
    mlp = len(layers) * 2 * n * 3 * h * i
    attention = sum(attention_flops(config, layer, n) for layer in layers)
    lm_head = 2 * n * h * config.vocab_size
    return FlopsEstimate(
        seq_len=n,
        batch_size=batch_size,
        projections=batch_size * projections,
        mlp=batch_size * mlp,
        attention=batch_size * attention,
        lm_head=batch_size * lm_head,
    )


def forward_flops(config, seq_len: int, *, batch_size: int = 1) -> int:
    return estimate(config, seq_len, batch_size=batch_size).forward


def training_flops(config, seq_len: int, *, batch_size: int = 1) -> int:
    """Forward + backward FLOPs (3x forward)."""
    return estimate(config, seq_len, batch_size=batch_size).forward_backward


__all__ = [
    "FlopsEstimate",
    "LayerAttention",
    "SUPPORTED_MODEL_TYPES",
    "attended_pairs",
    "estimate",
    "forward_flops",
    "layer_attention",
    "training_flops",
]
