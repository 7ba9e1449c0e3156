"""Which examples each step trains on: a pure function of (seed, step).

The data of a run is a list of stages (one per sequence length of the
curriculum; LIT has one). Stage ``i`` starts at optimizer step ``start_i``;
step ``t`` of the run takes the global batch of ``B`` examples number
``(t - start_i) * B ... + B - 1`` of the stage's stream, where the stream is
the stage's dataset in a fresh random order every epoch (the order of epoch
``e`` is ``randperm`` seeded by ``(seed, stage, e)``). Each process takes its
contiguous slice of the global batch and splits it into micro-batches.

Nothing depends on the number of processes or on what happened before the
step, so resuming at any step, or on another number of processes, reads
exactly the examples an uninterrupted run would have read.
"""

from __future__ import annotations

import hashlib

from dataclasses import dataclass
from typing import Protocol

import torch


class TrainingData(Protocol):
    """What the trainer needs from a dataset (PackedSequences, InstructionDataset)."""

    def __len__(self) -> int: ...

    def collate(self, indices) -> dict[str, torch.Tensor]: ...

    def num_targets(self, indices) -> int: ...

    def fingerprint(self) -> str: ...


@dataclass
class Stage:
    start_step: int
    data: TrainingData
    seq_len: int


def epoch_order(n: int, *, seed: int, stage: int, epoch: int) -> torch.Tensor:
    digest = hashlib.sha256(f"{seed}:{stage}:{epoch}".encode()).digest()
    g = torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1)
    return torch.randperm(n, generator=g)


class StagedData:
    def __init__(self, stages: list[Stage], *, batch_size: int, seed: int):
        if not stages or stages[0].start_step != 0:
            raise ValueError("data: the first stage must start at step 0")
        self.stages = stages
        self.batch_size = batch_size
        self.seed = seed
        self._orders: dict[tuple[int, int], torch.Tensor] = {}

    def stage_at(self, step: int) -> tuple[int, int]:
        """``(stage index, step within the stage)``."""
        index = max(i for i, s in enumerate(self.stages) if s.start_step <= step)
        return index, step - self.stages[index].start_step

    def _order(self, stage: int, epoch: int) -> torch.Tensor:
        key = (stage, epoch)
        if key not in self._orders:
            if len(self._orders) > 8:
                self._orders.clear()
            self._orders[key] = epoch_order(len(self.stages[stage].data), seed=self.seed, stage=stage, epoch=epoch)
        return self._orders[key]

    def global_batch(self, step: int) -> tuple[int, list[int]]:
        """``(stage index, dataset indices of the whole global batch)`` at ``step``."""
        stage, within = self.stage_at(step)
        n = len(self.stages[stage].data)
        first = within * self.batch_size
        out = []
        for k in range(first, first + self.batch_size):
            epoch, pos = divmod(k, n)
            out.append(int(self._order(stage, epoch)[pos]))
        return stage, out

    def position(self, step: int) -> dict:
        """The data position after ``step`` steps, as stored in checkpoints."""
        stage, within = self.stage_at(step)
        n = len(self.stages[stage].data)
        consumed = within * self.batch_size
        return {
            "stage": stage,
            "stage_step": within,
            "stage_examples_consumed": consumed,
            "epoch": consumed // n,
            "fingerprints": [s.data.fingerprint() for s in self.stages],
            "seq_lens": [s.seq_len for s in self.stages],
            "batch_size": self.batch_size,
        }


def split_for_rank(indices: list[int], *, rank: int, world_size: int, micro_batch_size: int) -> list[list[int]]:
    """This process's micro-batches of a global batch."""
    per_rank = len(indices) // world_size
    mine = indices[rank * per_rank : (rank + 1) * per_rank]
    return [mine[i : i + micro_batch_size] for i in range(0, len(mine), micro_batch_size)]
