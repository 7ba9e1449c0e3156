"""Multi-query associative recall (MQAR), the small-scale test of what an attention layout can retrieve.

The task of Zoology (Arora, Eyuboglu et al. 2023, "Zoology: Measuring and improving recall in efficient
language models"; HazyResearch/zoology ``zoology/data/multiquery_ar.py``), generated here from a seed
with no download::

    position  0   1   2   3   ...  2P-2 2P-1 | 2P ...                       T-1
    input     k1  v1  k2  v2  ...  kP   vP   | filler, each key k_i once at an even offset 2P + 2 g_i
    label     -   -   -   -   ...  -    -    | v_i at the position after the query (transformers' shift)

* The vocabulary is split as Zoology splits it: keys are drawn from ``1 .. V/2 - 1``, values from
  ``V/2 .. V - 1``, each without repetition inside an example.
* The query gap ``g_i`` (in pairs of positions after the key-value block) is drawn without replacement
  from a power law ``p(g) ~ (g + 1) ** (power_a - 1)``, ``g = 0 .. (T - 2P) / 2 - 1`` (Zoology's
  ``power_a``, default 0.01: most queries come soon after the block, some far); ``power_a = 1`` places them
  uniformly, which is what a longer evaluation length needs to test distances beyond the training length.
* Loss and accuracy count only the answer positions: ``labels`` is -100 everywhere else, in transformers'
  convention (the prediction at position ``t`` is scored against ``labels[t + 1]``), so the prediction made
  at the query token is scored against its value. The value itself is never fed in after the query.
* Filler (every other position of the query region) is drawn from the value half of the vocabulary.
  Zoology draws it from the whole vocabulary; at this project's small vocabularies and longer evaluation
  lengths a filler would then often repeat a queried key between the key and its query and make the answer
  ambiguous, so here a key token occurs exactly twice in an example: in its pair and as its query.

``distance`` is the query's position minus its key's position, what the attention layout has to bridge
(a local layer of window ``w`` moves information at most ``w - 1`` positions).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .packing import IGNORE


@dataclass(frozen=True)
class RecallTask:
    """The settings of one MQAR distribution; :func:`make_recall` draws examples from it."""

    vocab_size: int = 512
    num_pairs: int = 16
    seq_len: int = 256
    power_a: float = 0.01

    def __post_init__(self):
        for name in ("vocab_size", "num_pairs", "seq_len"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"recall.{name} must be a positive integer, got {value!r}")
        if not isinstance(self.power_a, (int, float)) or isinstance(self.power_a, bool) or not (
                0 < self.power_a <= 1):
            raise ValueError(f"recall.power_a must be a number in (0, 1] (Zoology: 0.01; 1 = uniform), "
                             f"got {self.power_a!r}")
        if self.seq_len % 2:
            raise ValueError(f"recall.seq_len must be even (queries sit at even offsets), got {self.seq_len}")
        if self.num_pairs > self.key_choices or self.num_pairs > self.vocab_size - self.vocab_size // 2:
            raise ValueError(f"recall.num_pairs ({self.num_pairs}) must be at most the number of keys "
                             f"({self.key_choices}) and of values ({self.vocab_size - self.vocab_size // 2}) of "
                             f"recall.vocab_size={self.vocab_size}")
        if self.num_pairs > self.query_slots:
            raise ValueError(f"recall.seq_len ({self.seq_len}) is too short for {self.num_pairs} pairs: it needs "
                             f"2 x num_pairs for the pairs and 2 x num_pairs for the queries "
                             f"(seq_len >= {4 * self.num_pairs})")

    @property
    def key_choices(self) -> int:
        return self.vocab_size // 2 - 1

    @property
    def context(self) -> int:
        """Positions of the key-value block."""
        return 2 * self.num_pairs

    @property
    def query_slots(self) -> int:
        """Even offsets after the block where a query may sit."""
        return (self.seq_len - self.context) // 2

    def gap_probabilities(self) -> torch.Tensor:
        g = torch.arange(1, self.query_slots + 1, dtype=torch.float64)
        p = g ** (self.power_a - 1)
        return p / p.sum()


@dataclass
class RecallData:
    """Examples of one :class:`RecallTask`: inputs, labels and where the answers are.

    ``input_ids`` and ``labels`` are ``[N, T]`` (labels in transformers' convention, -100 off the
    answers); ``query_pos``, ``key_pos``, ``values`` are ``[N, P]``, pair ``i``'s query position, its key's
    position and the value it must answer.
    """

    task: RecallTask
    seed: int
    input_ids: torch.Tensor
    labels: torch.Tensor
    query_pos: torch.Tensor
    key_pos: torch.Tensor
    values: torch.Tensor

    @property
    def distance(self) -> torch.Tensor:
        return self.query_pos - self.key_pos

    # -- the training-data protocol of zebra_llm.train.batches (the engine reads examples through it)
    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def collate(self, indices: Sequence[int]) -> dict[str, torch.Tensor]:
        idx = torch.as_tensor(list(indices), dtype=torch.long)
        return {"input_ids": self.input_ids[idx], "labels": self.labels[idx]}

    def num_targets(self, indices: Sequence[int]) -> int:
        return len(indices) * self.task.num_pairs

    def fingerprint(self) -> str:
        h = hashlib.sha256(f"recall:{self.task}:{self.seed}:{tuple(self.input_ids.shape)}".encode())
        h.update(self.input_ids.contiguous().numpy().tobytes())
        return h.hexdigest()[:16]


def _sample_without_replacement(g: torch.Generator, n: int, choices: int, k: int,
                                log_p: torch.Tensor | None = None) -> torch.Tensor:
    """``[n, k]`` indices into ``range(choices)``, distinct per row; weighted by ``exp(log_p)`` when given
    (Gumbel top-k: the k largest of log p + Gumbel noise are a weighted draw without replacement)."""
    scores = torch.rand(n, choices, generator=g, dtype=torch.float64)
    if log_p is None:
        return scores.argsort(dim=1)[:, :k]
    gumbel = -torch.log(-torch.log(scores.clamp_min(1e-300)))
    return (log_p + gumbel).topk(k, dim=1).indices


def make_recall(task: RecallTask, num_examples: int, seed: int) -> RecallData:
    """``num_examples`` MQAR examples of ``task``, a pure function of ``(task, num_examples, seed)``."""
    if isinstance(num_examples, bool) or not isinstance(num_examples, int) or num_examples < 1:
        raise ValueError(f"recall: num_examples must be a positive integer, got {num_examples!r}")
    g = torch.Generator().manual_seed(int(seed))
    n, p, t, half = num_examples, task.num_pairs, task.seq_len, task.vocab_size // 2
    keys = _sample_without_replacement(g, n, task.key_choices, p) + 1  # 1 .. V/2 - 1
    values = _sample_without_replacement(g, n, task.vocab_size - half, p) + half  # V/2 .. V - 1
    gaps = _sample_without_replacement(g, n, task.query_slots, p, task.gap_probabilities().log())
    inputs = torch.randint(half, task.vocab_size, (n, t), generator=g)  # filler: the value half
    inputs[:, 0 : task.context : 2] = keys
    inputs[:, 1 : task.context : 2] = values
    key_pos = torch.arange(0, task.context, 2).expand(n, p)
    query_pos = task.context + 2 * gaps
    inputs.scatter_(1, query_pos, keys)
    labels = torch.full((n, t), IGNORE, dtype=torch.long)
    labels.scatter_(1, query_pos + 1, values)  # query_pos <= T - 2, so query_pos + 1 < T
    return RecallData(task, int(seed), inputs, labels, query_pos, key_pos.clone(), values)


@torch.no_grad()
def answer_predictions(model, data: RecallData, *, batch_size: int = 32) -> torch.Tensor:
    """``[N, P]`` the model's greedy prediction at each query position (the argmax over the whole
    vocabulary, as Zoology scores it), one forward per batch of examples."""
    device = next(model.parameters()).device
    out = []
    for i in range(0, len(data), batch_size):
        ids = data.input_ids[i : i + batch_size].to(device)
        pos = data.query_pos[i : i + batch_size].to(device)
        hidden = model.model(input_ids=ids, use_cache=False).last_hidden_state  # [B, T, d]
        picked = hidden.gather(1, pos.unsqueeze(-1).expand(-1, -1, hidden.shape[-1]))  # [B, P, d]
        out.append(model.lm_head(picked).argmax(-1).cpu())
    return torch.cat(out)


def accuracy_by_distance(correct: torch.Tensor, distance: torch.Tensor, edges: Sequence[int]) -> list[dict]:
    """Answers grouped by key-query distance: bucket ``k`` holds ``edges[k-1] < d <= edges[k]``
    (``edges[-1]`` may be ``math.inf``); ``[{"lo", "hi", "n", "correct"}]`` for the non-empty buckets."""
    c, d = correct.reshape(-1), distance.reshape(-1)
    rows, lo = [], 0
    for hi in edges:
        sel = (d > lo) & (d <= hi) if math.isfinite(hi) else d > lo
        k = int(sel.sum())
        if k:
            rows.append({"lo": lo, "hi": hi, "n": k, "correct": int(c[sel].sum())})
        lo = hi
    return rows


__all__ = ["RecallData", "RecallTask", "accuracy_by_distance", "answer_predictions", "make_recall"]
