"""Text generation with any method applied, streamed as it is produced."""

from __future__ import annotations

import contextvars
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class GenerationSettings:
    max_new_tokens: int = 128
    temperature: float = 0.0  # 0: greedy
    top_p: float = 1.0
    seed: int = 0
    chat: bool = False  # wrap the prompt in the tokenizer's chat template

    def __post_init__(self):
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")


def encode_prompt(tokenizer, prompt: str, *, chat: bool = False) -> torch.Tensor:
    """``[1, seq]`` ids of ``prompt`` (BOS first when the tokenizer has one), or of its chat template."""
    if not prompt:
        raise ValueError("prompt: the prompt is empty")
    if chat:
        if not getattr(tokenizer, "chat_template", None):
            raise ValueError("--chat: this tokenizer has no chat template")
        ids = tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], add_generation_prompt=True, return_tensors="pt", return_dict=True
        )["input_ids"]
        return ids
    ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    if tokenizer.bos_token_id is not None:
        ids = [tokenizer.bos_token_id] + ids
    return torch.tensor([ids], dtype=torch.long)


def _generate_kwargs(tokenizer, settings: GenerationSettings) -> dict:
    kwargs = {"max_new_tokens": settings.max_new_tokens, "pad_token_id": tokenizer.pad_token_id}
    if settings.temperature == 0:
        kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
    else:
        kwargs.update(do_sample=True, temperature=settings.temperature, top_p=settings.top_p, top_k=None)
    return kwargs


def stream_generate(model, tokenizer, prompt: str, settings: GenerationSettings = GenerationSettings()) -> Iterator[str]:
    """Yield the generated text piece by piece (``TextIteratorStreamer``; generation runs in a thread)."""
    from transformers import TextIteratorStreamer

    ids = encode_prompt(tokenizer, prompt, chat=settings.chat).to(next(model.parameters()).device)
    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    torch.manual_seed(settings.seed)
    errors: list[BaseException] = []

    def work():
        try:
            with torch.no_grad():
                model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), streamer=streamer,
                               **_generate_kwargs(tokenizer, settings))
        except BaseException as e:  # re-raised in the caller's thread
            errors.append(e)
            streamer.end()

    # Run in a copy of the caller's context: context variables (the attention backend chosen with
    # zebra_llm.attention.use_backend, for one) do not cross into a new thread by themselves.
    thread = threading.Thread(target=contextvars.copy_context().run, args=(work,), daemon=True)
    thread.start()
    yield from streamer
    thread.join()
    if errors:
        raise errors[0]


def generate_text(model, tokenizer, prompt: str, settings: GenerationSettings = GenerationSettings()) -> str:
    """The whole generated text (not streamed)."""
    return "".join(stream_generate(model, tokenizer, prompt, settings))
