"""Needle in a haystack over a real corpus (Kamradt, 2023), with the needle and
question of RULER's single-needle task (Hsieh et al., 2024, "RULER", section 3.1)
so that the answer is checkable by exact match instead of a judge model.

The haystack is real text: the evaluation corpus (by default the long modules
of Python's standard library) tokenized and concatenated, its first tokens cut
to fill the prompt to exactly ``length`` tokens. The needle

    One of the special magic numbers for {key} is: {number}.

goes in at ``depth`` (fraction of the haystack before it), moved back to the
nearest line break within a few tokens so it does not split a line. The prompt
ends with RULER's question, and the first number the model writes must be the
7-digit number.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from .corpus import TokenDocs, load_token_docs
# imported by name as in passkey.py: the list shows which retrieval pieces this task uses
from .retrieval import (
    RetrievalConfig,
    RetrievalPrompt,
    bos,
    encode,
    first_number_matches,
    run_retrieval,
)

INTRO = (
    "Some special magic numbers are hidden within the following text. Make sure to memorize it. "
    "I will quiz you about the numbers afterwards.\n"
)
NEEDLE = "One of the special magic numbers for {key} is: {value}."
QUESTION = (
    "What is the special magic number for {key} mentioned in the provided text? "
    "The special magic number for {key} mentioned in the provided text is"
)
_ADJECTIVES = (
    "ancient bitter brave calm clever crooked curious dusty eager fancy gentle gloomy hollow icy jolly "
    "lively mellow narrow nimble odd proud quiet rapid rusty silent steady tame tidy vivid wary"
).split()
_NOUNS = (
    "anchor badger basket beacon canyon cellar comet compass falcon garden harbor helmet island lantern "
    "meadow mirror orchard parrot pebble pigeon quarry ribbon saddle tavern thistle tunnel valley walnut willow"
).split()
SNAP_TOKENS = 32  # how far back the needle may move to reach a line break


@dataclass
class NeedleTask:
    """Needle in a haystack: ``haystack`` is the tokenized corpus stream (no BOS)."""

    haystack: list[int]
    source: str
    digits: int = 7
    name: str = "needle"
    newline_ids: frozenset = field(default_factory=frozenset)

    def __post_init__(self):
        if not 1 <= self.digits <= 20:
            raise ValueError(f"needle digits must be in [1, 20], got {self.digits}")

    def build(self, tokenizer, length: int, depth: float, rng: random.Random) -> RetrievalPrompt:
        key = f"{rng.choice(_ADJECTIVES)}-{rng.choice(_NOUNS)}"
        value = str(rng.randint(10 ** (self.digits - 1), 10**self.digits - 1))
        head = bos(tokenizer) + encode(tokenizer, INTRO)
        needle = encode(tokenizer, "\n" + NEEDLE.format(key=key, value=value) + "\n")
        question = encode(tokenizer, "\n" + QUESTION.format(key=key))
        size = length - len(head) - len(needle) - len(question)
        if size < 0:
            raise ValueError(
                f"needle: length {length} is too short; the prompt needs at least {length - size} tokens"
            )
        if size > len(self.haystack):
            raise ValueError(
                f"data: the needle haystack needs {size} tokens for length {length}, but {self.source} "
                f"has {len(self.haystack)}"
            )
        hay = self.haystack[:size]
        cut = self.snap(round(depth * size), hay)
        prefix = head + hay[:cut]
        return RetrievalPrompt(prefix, needle + hay[cut:] + question, value, len(prefix))

    def snap(self, cut: int, hay: list[int]) -> int:
        """Move ``cut`` back to just after a line break if one is within SNAP_TOKENS tokens."""
        for pos in range(cut, max(cut - SNAP_TOKENS, 0) - 1, -1):
            if pos == 0 or hay[pos - 1] in self.newline_ids:
                return pos
        return cut

    def score(self, output: str, answer: str) -> bool:
        return first_number_matches(output, answer)

    def describe(self) -> dict:
        return {"name": self.name, "digits": self.digits, "haystack": self.source, "prompt": "ruler niah_single"}


def newline_token_ids(tokenizer) -> frozenset:
    """Ids of tokens whose text ends with a line break."""
    vocab = tokenizer.get_vocab()
    ids = set()
    for token, i in vocab.items():
        text = tokenizer.convert_tokens_to_string([token])
        if text.endswith("\n"):
            ids.add(i)
    return frozenset(ids)


def haystack_tokens(tokenizer, docs: TokenDocs) -> list[int]:
    """The token ids of ``docs`` concatenated, each document's leading BOS dropped (a haystack is one text)."""
    stream: list[int] = []
    for ids in docs.ids:
        body = ids.tolist()
        if body and tokenizer.bos_token_id is not None and body[0] == tokenizer.bos_token_id:
            body = body[1:]
        stream.extend(body)
    return stream


def needle_task(tokenizer, docs: TokenDocs, *, digits: int = 7) -> NeedleTask:
    """A needle task whose haystack is ``docs`` concatenated (BOS tokens dropped)."""
    return NeedleTask(haystack_tokens(tokenizer, docs), docs.source, digits=digits, newline_ids=newline_token_ids(tokenizer))


def run_needle(
    config: RetrievalConfig,
    output=None,
    *,
    data: str | None = None,
    field: str = "text",
    split: str = "train",
    encoding: str = "utf-8",
    digits: int = 7,
    **kwargs,
) -> dict:
    """Needle-in-a-haystack accuracy per method, length and depth over the corpus ``data``."""
    from .loaded import load_for_run
    from .method_spec import MethodSpec

    model_objects = kwargs.get("model_objects")
    first = MethodSpec.parse(config.methods[0])
    if model_objects and str(first) in model_objects:
        tokenizer = model_objects[str(first)][1]
    else:
        tokenizer = _tokenizer_only(config.model) or load_for_run(config, MethodSpec.parse("none")).tokenizer
    docs = load_token_docs(tokenizer, data, field=field, split=split, encoding=encoding)
    task = needle_task(tokenizer, docs, digits=digits)
    task_config = {"data": data, "field": field, "split": split}
    if encoding != "utf-8":  # kept out of the record otherwise, so results files from before still resume
        task_config["encoding"] = encoding
    return run_retrieval(task, config, output, task_config=task_config, **kwargs)


def _tokenizer_only(model_spec):
    """The tokenizer of a model spec without loading its weights (None where that needs the weights)."""
    from transformers import AutoTokenizer

    from zebra_llm.loading import ModelSource, smollm2_dir

    source = ModelSource.parse(model_spec)
    if source.kind == "embedded":
        return AutoTokenizer.from_pretrained(smollm2_dir())
    if source.kind in ("directory", "hub"):
        return AutoTokenizer.from_pretrained(source.location)
    return None
