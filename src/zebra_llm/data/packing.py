"""Documents packed into fixed-length training sequences, and the sequence-length
curriculum.

Three ways to cut tokenized documents (each starting with BOS, as
``tokenize_documents`` makes them) into rows of ``seq_len`` tokens, registered
in :data:`PACKERS`. They differ in how document boundaries are respected:

``split`` (default)
    No row crosses a document boundary: each document is cut into rows of its
    own, and its last, shorter piece is padded. Boundaries are respected in
    attention and in positions by construction, with every model (Zebra's
    attention included). Costs padding when documents are short compared to
    ``seq_len``; the long-context corpora this library targets are not.
``packed``
    Documents are laid back to back; position ids restart at 0 at every
    document start, and attention is kept inside each document by
    transformers' packed-sequence masks, which it derives from those position
    ids when no attention mask is passed (``sdpa``, ``eager``,
    ``flex_attention``, ``flash_attention_*``). No padding except at the very
    end. Models whose attention implementation does not derive these masks
    (Zebra's ``"zebra"``, which takes only a padding mask) are refused by the
    trainer.
``concat``
    One stream, positions 0..seq_len-1 in every row, attention crosses
    documents (GPT-2 / nanoGPT style; BOS tokens separate documents).

Labels follow transformers' convention (``labels[t]`` is the token at ``t``;
the loss shifts them), with -100 where no loss is taken: padding, and in
``packed`` mode each document's first token (it would otherwise be predicted
from the previous document's end).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

IGNORE = -100


@dataclass(frozen=True)
class PackedSequences:
    """Rows of a packed corpus, all ``[rows, seq_len]`` long tensors."""

    input_ids: torch.Tensor
    labels: torch.Tensor
    position_ids: torch.Tensor
    mode: str

    @property
    def seq_len(self) -> int:
        return self.input_ids.shape[1]

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def collate(self, indices: Sequence[int]) -> dict[str, torch.Tensor]:
        idx = torch.as_tensor(list(indices), dtype=torch.long)
        # No attention mask: padding only ever sits at the end of a row, after
        # every real query (causal), and in packed mode transformers builds the
        # document mask from the position ids only when attention_mask is None.
        return {
            "input_ids": self.input_ids[idx],
            "labels": self.labels[idx],
            "position_ids": self.position_ids[idx],
        }

    def num_targets(self, indices: Sequence[int]) -> int:
        """Tokens that carry loss in these rows (labels shifted by one, as the loss does)."""
        idx = torch.as_tensor(list(indices), dtype=torch.long)
        return int((self.labels[idx, 1:] != IGNORE).sum())

    def fingerprint(self) -> str:
        h = hashlib.sha256()
        h.update(f"{self.mode}:{tuple(self.input_ids.shape)}".encode())
        for t in (self.input_ids, self.labels, self.position_ids):
            h.update(t.contiguous().numpy().tobytes())
        return h.hexdigest()[:16]


def _rows(stream: torch.Tensor, seq_len: int, fill: int) -> torch.Tensor:
    """Cut a 1D tensor into rows of ``seq_len``, padding the last row with ``fill``."""
    n = stream.numel()
    rows = -(-n // seq_len)
    out = torch.full((rows * seq_len,), fill, dtype=stream.dtype)
    out[:n] = stream
    return out.view(rows, seq_len)  # [rows, seq_len]


def pack_split(docs: Sequence[torch.Tensor], seq_len: int, *, pad_id: int) -> PackedSequences:
    ids, labels, positions = [], [], []
    for doc in docs:
        doc = torch.as_tensor(doc, dtype=torch.long).flatten()
        for start in range(0, doc.numel(), seq_len):
            piece = doc[start : start + seq_len]
            if piece.numel() < 2:  # one token gives nothing to predict
                continue
            pad = seq_len - piece.numel()
            ids.append(torch.nn.functional.pad(piece, (0, pad), value=pad_id))
            labels.append(torch.nn.functional.pad(piece, (0, pad), value=IGNORE))
            positions.append(torch.arange(seq_len))
    return _stack(ids, labels, positions, seq_len, "split")


def pack_packed(docs: Sequence[torch.Tensor], seq_len: int, *, pad_id: int) -> PackedSequences:
    docs = [torch.as_tensor(d, dtype=torch.long).flatten() for d in docs if len(d) > 0]
    if not docs:
        return _stack([], [], [], seq_len, "packed")
    lengths = torch.tensor([d.numel() for d in docs])
    stream = torch.cat(docs)
    n = stream.numel()
    # Segment starts: every document start and every row start; positions count
    # from the segment start, so a document continued from the previous row
    # restarts at 0 like a new one (it is one, for the attention mask).
    doc_start = torch.zeros(n, dtype=torch.bool)
    doc_start[torch.cumsum(lengths, 0)[:-1]] = True
    doc_start[0] = True
    rows = _rows(stream, seq_len, pad_id)
    total = rows.numel()
    seg_start = torch.zeros(total, dtype=torch.bool)
    seg_start[:n] = doc_start
    seg_start[::seq_len] = True
    if n < total:
        seg_start[n] = True  # padding is a segment of its own
    idx = torch.arange(total)
    start_idx = torch.cummax(torch.where(seg_start, idx, torch.zeros_like(idx)), 0).values
    positions = (idx - start_idx).view(-1, seq_len)  # [rows, seq_len]
    labels = torch.full((total,), IGNORE, dtype=torch.long)
    labels[:n] = torch.where(doc_start, torch.full_like(stream, IGNORE), stream)
    labels = labels.view(-1, seq_len)
    keep = (labels[:, 1:] != IGNORE).any(dim=1)
    return PackedSequences(rows[keep].clone(), labels[keep].clone(), positions[keep].clone(), "packed")


def pack_concat(docs: Sequence[torch.Tensor], seq_len: int, *, pad_id: int) -> PackedSequences:
    docs = [torch.as_tensor(d, dtype=torch.long).flatten() for d in docs if len(d) > 0]
    if not docs:
        return _stack([], [], [], seq_len, "concat")
    stream = torch.cat(docs)
    rows = _rows(stream, seq_len, pad_id)
    labels = _rows(stream, seq_len, IGNORE)
    keep = (labels[:, 1:] != IGNORE).any(dim=1)
    positions = torch.arange(seq_len).expand(int(keep.sum()), seq_len).clone()
    return PackedSequences(rows[keep].clone(), labels[keep].clone(), positions, "concat")


def _stack(ids, labels, positions, seq_len, mode) -> PackedSequences:
    if not ids:
        empty = torch.empty(0, seq_len, dtype=torch.long)
        return PackedSequences(empty, empty.clone(), empty.clone(), mode)
    return PackedSequences(torch.stack(ids), torch.stack(labels), torch.stack(positions), mode)


PACKERS: dict[str, Callable[..., PackedSequences]] = {
    "split": pack_split,
    "packed": pack_packed,
    "concat": pack_concat,
}

# Attention implementations for which transformers turns restarting position
# ids into a block-diagonal (per-document) mask; see the module docstring.
PACKED_ATTENTION_IMPLEMENTATIONS = (
    "sdpa",
    "eager",
    "flex_attention",
    "flash_attention_2",
    "flash_attention_3",
    "flash_attention_4",
)


def pack_documents(
    docs: Sequence[torch.Tensor], seq_len: int, *, mode: str = "split", pad_id: int
) -> PackedSequences:
    """Pack tokenized documents into rows of ``seq_len`` tokens (see the module
    docstring for the modes). Raises ``ValueError`` when no row has a token to
    predict."""
    if mode not in PACKERS:
        raise ValueError(f"data.packing must be one of {', '.join(PACKERS)}, got {mode!r}")
    if seq_len < 2:
        raise ValueError(f"data.seq_len must be >= 2, got {seq_len}")
    packed = PACKERS[mode](docs, seq_len, pad_id=pad_id)
    if len(packed) == 0:
        total = sum(len(d) for d in docs)
        raise ValueError(
            f"data: {len(docs)} documents with {total} tokens give no training sequence of seq_len {seq_len}"
        )
    return packed


def padding_fraction(packed: PackedSequences) -> float:
    """Share of positions that carry neither loss nor content (padding)."""
    return float((packed.labels == IGNORE).float().mean()) if len(packed) else 0.0


def curriculum_stages(stages: Sequence[tuple[int, int]], seq_len: int, total_steps: int) -> list[tuple[int, int]]:
    """A sequence-length curriculum as ``[(first_step, seq_len), ...]``.

    ``stages`` lists ``(steps, seq_len)`` pairs trained in order before the
    final ``seq_len``, which runs until ``total_steps``. Growing the length
    during training (short sequences first) is the usual recipe for long
    context: early steps are cheaper and the model learns local structure
    before long-range structure.
    """
    out, start = [], 0
    for steps, length in stages:
        if steps < 1:
            raise ValueError(f"data.curriculum: every stage needs steps >= 1, got {steps}")
        if not 2 <= length <= seq_len:
            raise ValueError(f"data.curriculum: stage seq_len must be in [2, {seq_len}], got {length}")
        out.append((start, length))
        start += steps
    if start >= total_steps:
        raise ValueError(
            f"data.curriculum covers {start} steps but train.steps is {total_steps}; nothing is left for data.seq_len"
        )
    out.append((start, seq_len))
    return out
