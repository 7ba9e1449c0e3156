"""Tiny models and corpora shared by the evaluation and CLI tests."""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

TINY_CONTEXT = 64  # the tiny model's max_position_embeddings ("trained context")


def tiny_llama(vocab_size: int, *, seed: int = 0, context: int = TINY_CONTEXT, **overrides):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=context,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        tie_word_embeddings=False,
        bos_token_id=1,
        eos_token_id=2,
        **overrides,
    )
    model = LlamaForCausalLM(config).eval()
    # Sharpen the random model so that greedy decoding is deterministic and the
    # logits depend visibly on positions.
    with torch.no_grad():
        model.lm_head.weight.mul_(20)
    return model


def save_tiny_model(target: Path, smollm2_dir: Path, *, seed: int = 0) -> Path:
    """A tiny random Llama with the SmolLM2 tokenizer, saved as a transformers directory."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)
    model = tiny_llama(len(tokenizer), seed=seed)
    model.save_pretrained(target)
    tokenizer.save_pretrained(target)
    return target


def write_corpus(target: Path, *, docs: int = 3, words: int = 400) -> Path:
    """A small directory of English-ish text files of different lengths."""
    target.mkdir(parents=True, exist_ok=True)
    vocab = "the cat sat on a mat while green birds sang about long context windows and rotary positions".split()
    g = torch.Generator().manual_seed(1)
    for d in range(docs):
        n = words * (d + 1)
        idx = torch.randint(0, len(vocab), (n,), generator=g).tolist()
        (target / f"doc{d}.txt").write_text(" ".join(vocab[i] for i in idx) + "\n")
    return target


def copy_tokenizer(smollm2_dir: Path, target: Path) -> Path:
    target.mkdir(parents=True, exist_ok=True)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (Path(smollm2_dir) / name).is_file():
            shutil.copy(Path(smollm2_dir) / name, target / name)
    return target
