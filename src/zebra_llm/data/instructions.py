"""Instruction records for long instruction tuning (LIT, Zebra paper section 4):
chat-format records rendered with the model's chat template, loss on the
response tokens only.

A record is one JSON object per line of a ``.jsonl`` file, either

* ``{"messages": [{"role": "system"|"user"|"assistant", "content": "..."}, ...]}``
  (at least one assistant turn; every assistant turn is trained), or
* ``{"prompt": "...", "response": "..."}`` with an optional ``"system"``.

With a tokenizer that has a chat template (and ``chat_template="auto"``) the
conversation is rendered by it; the tokens of each assistant turn, including
the template's end-of-turn marker, are found by rendering the conversation up
to that turn with and without it, which requires the template to render a
conversation's prefix as a prefix of the whole (templates that rewrite earlier
turns are refused). Without a template the plain format is
``"{role}: {content}\\n\\n"`` per turn, and an assistant turn's content is
followed by the EOS token, both trained.

The label of every prompt token is -100, so only response tokens count in the loss.
"""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from ..io import check_regular_file, jsonl_records, write_bytes_atomic
from ..loading import cache_dir
from .packing import IGNORE
from .tokens import tokenizer_fingerprint

ROLES = ("system", "user", "assistant")


def load_instruction_records(
    path: str | os.PathLike, *, limit: int | None = None, encoding: str = "utf-8"
) -> list[list[dict]]:
    """Conversations (lists of ``{"role", "content"}``) from a JSONL file, with
    errors that name the line and the problem (the byte offset for text that
    does not decode with ``encoding``)."""
    path = check_regular_file(Path(path).expanduser(), "data.path")
    if path.suffix.lower() != ".jsonl":
        raise ValueError(f"data.path: {path} must be a .jsonl file of messages or prompt/response records")
    out = []
    for lineno, record in jsonl_records(path, encoding=encoding, what="data.path"):
        out.append(record_to_messages(record, where=f"{path} line {lineno}"))
        if limit is not None and len(out) >= limit:
            break
    if not out:
        raise ValueError(f"data.path: {path} holds no records")
    return out


def record_to_messages(record, *, where: str = "record") -> list[dict]:
    if not isinstance(record, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(record).__name__}")
    if "messages" in record:
        messages = record["messages"]
        if not isinstance(messages, list) or not messages:
            raise ValueError(f"{where}: 'messages' must be a non-empty list")
        for i, m in enumerate(messages):
            if not isinstance(m, dict) or "role" not in m or "content" not in m:
                raise ValueError(f"{where}: messages[{i}] needs 'role' and 'content'")
            if m["role"] not in ROLES:
                raise ValueError(f"{where}: messages[{i}].role must be one of {', '.join(ROLES)}, got {m['role']!r}")
            if not isinstance(m["content"], str):
                raise ValueError(f"{where}: messages[{i}].content must be a string")
        messages = [{"role": m["role"], "content": m["content"]} for m in messages]
    elif "prompt" in record and "response" in record:
        # Every field must already be text: str() of a number or a list would train on
        # its Python spelling without a word. A null system is the same as none.
        for name in ("prompt", "response", "system"):
            if name in record and not isinstance(record[name], str) and not (name == "system" and record[name] is None):
                raise ValueError(f"{where}: field {name!r} must be a string, got {type(record[name]).__name__}")
        messages = []
        if record.get("system"):
            messages.append({"role": "system", "content": record["system"]})
        messages += [
            {"role": "user", "content": record["prompt"]},
            {"role": "assistant", "content": record["response"]},
        ]
    else:
        raise ValueError(f"{where}: needs 'messages', or 'prompt' and 'response'; has {sorted(record)}")
    if not any(m["role"] == "assistant" for m in messages):
        raise ValueError(f"{where}: has no assistant message, so nothing to train on")
    if messages[0]["role"] == "assistant":
        raise ValueError(f"{where}: starts with an assistant message; a prompt must come first")
    return messages


def has_chat_template(tokenizer) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def render(messages: Sequence[dict], tokenizer, *, use_template: bool) -> tuple[str, list[tuple[int, int]]]:
    """The conversation's text and the character spans of the trained (assistant) parts."""
    if use_template:
        return _render_template(messages, tokenizer)
    return _render_plain(messages, tokenizer)


def _template(tokenizer, messages, *, generation_prompt: bool) -> str:
    return tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=generation_prompt)


def _render_template(messages, tokenizer):
    text = _template(tokenizer, messages, generation_prompt=False)
    spans = []
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        before = _template(tokenizer, messages[:i], generation_prompt=True)
        through = _template(tokenizer, messages[: i + 1], generation_prompt=False)
        if not (through.startswith(before) and text.startswith(through)):
            raise ValueError(
                "data.chat_template: the tokenizer's chat template does not render a conversation's prefix as a "
                "prefix of the whole (it rewrites earlier turns), so response tokens cannot be located; "
                "use chat_template=none or a template without that behaviour"
            )
        spans.append((len(before), len(through)))
    return text, spans


def _render_plain(messages, tokenizer):
    eos = tokenizer.eos_token or ""
    bos = tokenizer.bos_token if tokenizer.bos_token and tokenizer.bos_token != eos else ""
    text, spans = bos, []
    for m in messages:
        text += f"{m['role']}: "
        if m["role"] == "assistant":
            start = len(text)
            text += m["content"] + eos
            spans.append((start, len(text)))
            text += "\n\n"
        else:
            text += m["content"] + "\n\n"
    return text, spans


def encode_messages(messages: Sequence[dict], tokenizer, *, chat_template: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """``(input_ids, labels)`` of one conversation, 1D long tensors; labels are
    -100 on every token outside an assistant turn."""
    if chat_template not in ("auto", "none"):
        raise ValueError(f"data.chat_template must be auto or none, got {chat_template!r}")
    use_template = chat_template == "auto" and has_chat_template(tokenizer)
    text, spans = render(messages, tokenizer, use_template=use_template)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = torch.tensor(enc["input_ids"], dtype=torch.long)
    offsets = torch.tensor(enc["offset_mapping"], dtype=torch.long).view(-1, 2)  # [tokens, (start, end)]
    starts, ends = offsets[:, 0], offsets[:, 1]
    # A token is trained when it overlaps an assistant span: spans come from the
    # rendered text itself, and a token that BPE merged across the border (" yo"
    # after "assistant:") carries response characters, so it is predicted too.
    trained = torch.zeros(ids.numel(), dtype=torch.bool)
    for lo, hi in spans:
        trained |= (ends > lo) & (starts < hi)
    labels = torch.where(trained, ids, torch.full_like(ids, IGNORE))
    return ids, labels


@dataclass
class InstructionDataset:
    """Encoded conversations; batches are right-padded to their longest example."""

    input_ids: list[torch.Tensor]
    labels: list[torch.Tensor]
    pad_id: int
    dropped: int = 0
    truncated: int = 0

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def seq_len(self) -> int:
        return max(t.numel() for t in self.input_ids)

    def collate(self, indices: Sequence[int]) -> dict[str, torch.Tensor]:
        indices = list(indices)
        width = max(self.input_ids[i].numel() for i in indices)
        ids = torch.full((len(indices), width), self.pad_id, dtype=torch.long)
        labels = torch.full((len(indices), width), IGNORE, dtype=torch.long)
        mask = torch.zeros((len(indices), width), dtype=torch.long)
        for row, i in enumerate(indices):
            n = self.input_ids[i].numel()
            ids[row, :n] = self.input_ids[i]
            labels[row, :n] = self.labels[i]
            mask[row, :n] = 1
        return {"input_ids": ids, "labels": labels, "attention_mask": mask}

    def num_targets(self, indices: Sequence[int]) -> int:
        return int(sum(int((self.labels[i][1:] != IGNORE).sum()) for i in indices))

    def fingerprint(self) -> str:
        h = hashlib.sha256()
        for a, b in zip(self.input_ids, self.labels):
            h.update(a.numpy().tobytes())
            h.update(b.numpy().tobytes())
        return h.hexdigest()[:16]


def build_instruction_dataset(
    path: str | os.PathLike,
    tokenizer,
    *,
    seq_len: int,
    chat_template: str = "auto",
    overflow: str = "drop",
    limit: int | None = None,
    cache: bool = True,
    encoding: str = "utf-8",
) -> InstructionDataset:
    """Load, render and tokenize a JSONL instruction file (cached on disk, keyed
    by the file's bytes, the tokenizer and the rendering), then apply the
    ``overflow`` rule to examples longer than ``seq_len``."""
    if overflow not in ("drop", "truncate", "error"):
        raise ValueError(f"data.overflow must be drop, truncate or error, got {overflow!r}")
    path = check_regular_file(Path(path).expanduser(), "data.path")
    key = None
    encoded = None
    if cache:
        h = hashlib.sha256()
        h.update(tokenizer_fingerprint(tokenizer).encode())
        h.update(repr((chat_template, getattr(tokenizer, "chat_template", None), limit)).encode())
        # v2: records are validated strictly (entries of the lenient loader are not reused)
        h.update(f"\0v2\0encoding={encoding}".encode())
        h.update(path.read_bytes())
        key = cache_dir() / "instructions" / f"{h.hexdigest()[:32]}.pt"
        if key.is_file():
            try:
                encoded = torch.load(key, weights_only=True)
            except Exception:
                encoded = None  # a corrupt cache entry is rebuilt
    if encoded is None:
        records = load_instruction_records(path, limit=limit, encoding=encoding)
        pairs = [encode_messages(m, tokenizer, chat_template=chat_template) for m in records]
        encoded = {"input_ids": [p[0] for p in pairs], "labels": [p[1] for p in pairs]}
        if key is not None:
            buf = io.BytesIO()
            torch.save(encoded, buf)
            write_bytes_atomic(key, buf.getvalue())
    ids_out, labels_out, dropped, truncated = [], [], 0, 0
    for i, (ids, labels) in enumerate(zip(encoded["input_ids"], encoded["labels"])):
        if ids.numel() > seq_len:
            if overflow == "error":
                raise ValueError(
                    f"data.seq_len: example {i} of {path} has {ids.numel()} tokens, more than seq_len {seq_len} "
                    "(set data.overflow to drop or truncate)"
                )
            if overflow == "drop":
                dropped += 1
                continue
            ids, labels = ids[:seq_len], labels[:seq_len]
            truncated += 1
        if not (labels[1:] != IGNORE).any():
            dropped += 1  # nothing left to learn from (e.g. the response was truncated away)
            continue
        ids_out.append(ids)
        labels_out.append(labels)
    if not ids_out:
        raise ValueError(
            f"data: no usable example in {path}: {dropped} of {len(encoded['input_ids'])} are longer than "
            f"seq_len {seq_len} or have no response tokens"
        )
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad_id is None:
        raise ValueError("tokenizer has neither a pad nor an EOS token to pad batches with")
    return InstructionDataset(ids_out, labels_out, pad_id=pad_id, dropped=dropped, truncated=truncated)
