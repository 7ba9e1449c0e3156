"""Passkey retrieval (Mohtashami & Jaggi, 2023, "Landmark Attention", section 4.2;
used by ChunkLlama / DCA, An et al. 2024, section 4.2).

The prompt, exactly as in those works::

    There is an important info hidden inside a lot of irrelevant text. Find it and
    memorize them. I will quiz you about the important information there.
    The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. ...
    The pass key is 68048. Remember it. 68048 is the pass key.
    The grass is green. ... There and back again.
    What is the pass key? The pass key is

The filler is repeated so that the whole prompt is exactly ``length`` tokens;
``depth`` is the fraction of the filler placed before the key. The model
decodes greedily and is right only if the first number it writes is the key.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from .retrieval import (
    RetrievalConfig,
    RetrievalPrompt,
    bos,
    encode,
    first_number_matches,
    run_retrieval,
    split_filler,
)

TASK = (
    "There is an important info hidden inside a lot of irrelevant text. Find it and memorize them. "
    "I will quiz you about the important information there."
)
FILLER = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
NEEDLE = "The pass key is {key}. Remember it. {key} is the pass key."
QUESTION = "What is the pass key? The pass key is"


@dataclass(frozen=True)
class PasskeyTask:
    """Passkey retrieval with keys of ``digits`` digits (no leading zero)."""

    digits: int = 5
    name: str = "passkey"

    def __post_init__(self):
        if not 1 <= self.digits <= 20:
            raise ValueError(f"passkey digits must be in [1, 20], got {self.digits}")

    def new_key(self, rng: random.Random) -> str:
        return str(rng.randint(10 ** (self.digits - 1), 10**self.digits - 1))

    def build(self, tokenizer, length: int, depth: float, rng: random.Random) -> RetrievalPrompt:
        key = self.new_key(rng)
        head = bos(tokenizer) + encode(tokenizer, TASK + "\n")
        unit = encode(tokenizer, FILLER + " ")
        needle = encode(tokenizer, "\n" + NEEDLE.format(key=key) + "\n")
        question = encode(tokenizer, "\n" + QUESTION)
        fixed = len(head) + len(needle) + len(question)
        if length < fixed:
            raise ValueError(f"passkey: length {length} is too short; the prompt needs at least {fixed} tokens")
        before, after = split_filler(length - fixed, unit, depth)
        prefix = head + before
        return RetrievalPrompt(prefix, needle + after + question, key, len(prefix))

    def score(self, output: str, answer: str) -> bool:
        return first_number_matches(output, answer)

    def describe(self) -> dict:
        return {"name": self.name, "digits": self.digits, "prompt": "landmark-attention passkey"}


def passkey_prompt(tokenizer, length: int, depth: float, key_seed: int = 0) -> RetrievalPrompt:
    """One passkey prompt of exactly ``length`` tokens with its key hidden at ``depth``."""
    return PasskeyTask().build(tokenizer, length, depth, random.Random(key_seed))


def run_passkey(config: RetrievalConfig, output=None, *, digits: int = 5, **kwargs) -> dict:
    """Passkey accuracy per method, length and depth (see :func:`run_retrieval`)."""
    return run_retrieval(PasskeyTask(digits=digits), config, output, **kwargs)
