"""Per-token language-model loss without a ``seq x vocab`` logits tensor.

A causal LM's forward normally returns logits for every position: at 32k
tokens and a 49k vocabulary that is 6.4 GB in float32, more than the rest of
the forward together. Here the decoder runs once to its final hidden states
(``[batch, seq, hidden]``) and the LM head is applied to ``chunk`` positions
at a time; each chunk's logits become negative log-likelihoods and are freed
before the next.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

DEFAULT_LOSS_CHUNK = 1024


def _decoder(model):
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else None
    if decoder is None or decoder is model:
        decoder = getattr(model, "base_model", None)
    if decoder is None or decoder is model:
        raise ValueError(f"{type(model).__name__} has no separate decoder to take hidden states from")
    return decoder


def _head_logits(model, hidden: torch.Tensor) -> torch.Tensor:
    """The causal LM's logits for ``hidden`` ([batch, n, hidden] -> [batch, n, vocab], float32)."""
    logits = model.get_output_embeddings()(hidden).float()
    config = model.config
    scale = getattr(config, "logit_scale", None)  # Cohere-style output scaling
    if scale is not None:
        logits = logits * scale
    cap = getattr(config, "final_logit_softcapping", None)  # Gemma-2-style soft capping
    if cap is not None:
        logits = torch.tanh(logits / cap) * cap
    return logits


@torch.no_grad()
def token_nll(
    model,
    input_ids: torch.Tensor,
    *,
    attention_mask: torch.Tensor | None = None,
    score_from: int = 1,
    chunk: int = DEFAULT_LOSS_CHUNK,
) -> torch.Tensor:
    """Negative log-likelihood of each token given the ones before it.

    ``input_ids`` is ``[batch, seq]``. Returns float32 ``[batch, seq - score_from]``
    whose column ``j`` is ``-log p(ids[:, score_from + j] | ids[:, :score_from + j])``.
    ``score_from >= 1`` skips the first targets (their hidden states still run
    through the decoder, which is what a sliding window's overlap needs); the
    LM head is only applied to the positions that are scored.
    """
    if input_ids.dim() != 2:
        raise ValueError(f"input_ids must be [batch, seq], got shape {tuple(input_ids.shape)}")
    seq = input_ids.shape[1]
    if not 1 <= score_from < seq:
        raise ValueError(f"score_from must be in [1, {seq - 1}] for a sequence of {seq} tokens, got {score_from}")
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    hidden = _decoder(model)(
        input_ids=input_ids, attention_mask=attention_mask, use_cache=False
    ).last_hidden_state  # [B, T, H]
    targets = input_ids[:, score_from:]  # [B, T - score_from]
    out = torch.empty(targets.shape, dtype=torch.float32, device=input_ids.device)
    for s in range(0, targets.shape[1], chunk):
        e = min(s + chunk, targets.shape[1])
        # position p predicts token p + 1: targets [s, e) come from hidden states [score_from-1+s, score_from-1+e)
        logits = _head_logits(model, hidden[:, score_from - 1 + s : score_from - 1 + e])  # [B, c, V]
        nll = F.cross_entropy(logits.flatten(0, 1), targets[:, s:e].flatten(), reduction="none")
        out[:, s:e] = nll.view(targets.shape[0], e - s)
        del logits
    return out


@torch.no_grad()
def check_loss_path(model, tokenizer=None, *, length: int = 16, atol: float = 1e-3) -> None:
    """Check on a short random input that the chunked loss equals the model's own logits.

    Guards against a model whose forward post-processes its logits in a way
    :func:`token_nll` does not know; raises ``ValueError`` when they differ.
    """
    vocab = model.get_output_embeddings().weight.shape[0]
    gen = torch.Generator().manual_seed(0)
    device = next(model.parameters()).device
    ids = torch.randint(0, vocab, (1, length), generator=gen).to(device)
    ours = token_nll(model, ids, chunk=5)
    logits = model(input_ids=ids, use_cache=False).logits.float()
    ref = F.cross_entropy(logits[0, :-1], ids[0, 1:], reduction="none")
    err = (ours[0] - ref).abs().max().item()
    if not err <= atol * max(1.0, ref.abs().max().item()):
        raise ValueError(
            f"{type(model).__name__}: the chunked loss differs from the model's logits by {err:.3g}; "
            "its output head post-processes logits in a way the evaluation does not support"
        )
