"""DCA position rules: Figure 2(c), an independent formula, the kernels' query shifts, temperature."""

from __future__ import annotations

import math

import pytest
import torch

from zebra_llm.attention.dca_positions import query_shift, relative_positions, temperature_factor
from zebra_llm.dca import relative_positions as public_relative_positions


def test_public_name_is_the_same_function():
    assert public_relative_positions is relative_positions


def test_figure_2c_rows():
    m = relative_positions(12, chunk_size=6, pretraining_length=10)
    assert m.dtype == torch.long and m.shape == (12, 12)
    expected = {
        0: [0],
        5: [5, 4, 3, 2, 1, 0],
        6: [6, 5, 4, 3, 2, 1, 0],
        10: [9, 8, 7, 6, 5, 4, 4, 3, 2, 1, 0],
        11: [9, 8, 7, 6, 5, 4, 5, 4, 3, 2, 1, 0],
    }
    for row, values in expected.items():
        assert m[row, : row + 1].tolist() == values
        assert (m[row, row + 1 :] == -1).all()


def _paper_formula(n, s, c):
    """Relative positions from the paper's index lists, with Python loops.

    P_k[j] = j mod s; the query uses P_q^intra = i mod s for keys of its chunk,
    P_q^succ = min(s + i mod s, c - 1) for the previous chunk and c - 1 for
    earlier chunks; the relative position is P_q - P_k.
    """
    out = [[-1] * n for _ in range(n)]
    for i in range(n):
        for j in range(i + 1):
            if i // s == j // s:
                pq = i % s
            elif i // s == j // s + 1:
                pq = min(s + i % s, c - 1)
            else:
                pq = c - 1
            out[i][j] = pq - j % s
    return torch.tensor(out, dtype=torch.long)


@pytest.mark.parametrize("n,s,c", [(40, 5, 8), (100, 12, 16), (64, 1, 2), (33, 7, 10), (20, 30, 40), (50, 3, 20)])
def test_matches_independent_formula(n, s, c):
    m = relative_positions(n, chunk_size=s, pretraining_length=c)
    assert torch.equal(m, _paper_formula(n, s, c))
    lower = torch.ones(n, n, dtype=torch.bool).tril()
    assert (m[lower] >= 0).all() and (m[lower] <= c - 1).all()  # never beyond what pretraining saw
    i, j = torch.meshgrid(torch.arange(n), torch.arange(n), indexing="ij")
    same_chunk = lower & (i // s == j // s)
    assert torch.equal(m[same_chunk], (i - j)[same_chunk])  # inside a chunk: ordinary distances


def test_sequence_within_one_chunk_is_plain_causal():
    m = relative_positions(9, chunk_size=12, pretraining_length=16)
    i, j = torch.meshgrid(torch.arange(9), torch.arange(9), indexing="ij")
    assert torch.equal(m, torch.where(j <= i, i - j, -1))


@pytest.mark.parametrize("n,s,c", [(40, 5, 8), (61, 12, 16), (30, 2, 3)])
def test_query_shift_reproduces_relative_positions(n, s, c):
    """The fast kernels keep keys at their ordinary positions and turn queries by
    query_shift; the resulting distance must be the relative position."""
    m = relative_positions(n, chunk_size=s, pretraining_length=c)
    ranks = torch.arange(n)
    for j in range(n):
        chunk = j // s
        for i in range(j, n):
            gap = i // s - chunk
            relation = "intra" if gap == 0 else "succ" if gap == 1 else "inter"
            shift = query_shift(ranks[i : i + 1], relation, chunk, s, c).item()
            assert i + shift - j == m[i, j].item(), (i, j)


@pytest.mark.parametrize(
    "kwargs,field",
    [
        (dict(chunk_size=10, pretraining_length=10), "chunk_size"),
        (dict(chunk_size=11, pretraining_length=10), "chunk_size"),
        (dict(chunk_size=0, pretraining_length=10), "chunk_size"),
        (dict(chunk_size=-3, pretraining_length=10), "chunk_size"),
        (dict(chunk_size=2.0, pretraining_length=10), "chunk_size"),
        (dict(chunk_size=2, pretraining_length=1), "pretraining_length"),
        (dict(chunk_size=2, pretraining_length="8"), "pretraining_length"),
    ],
)
def test_invalid_settings_name_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        relative_positions(8, **kwargs)


def test_invalid_seq_len():
    with pytest.raises(ValueError, match="seq_len"):
        relative_positions(-1, chunk_size=2, pretraining_length=4)


def test_temperature_formula():
    ranks = torch.arange(40)
    assert temperature_factor(ranks[:16], 16) is None  # no query sees more than L0 keys
    assert temperature_factor(ranks, None) is None
    factor = temperature_factor(ranks, 16)
    assert torch.all(factor[:16] == 1.0)
    for r in (16, 20, 39):
        expected = (0.1 * math.log((r + 1) / 16) + 1) ** 2
        assert factor[r].item() == pytest.approx(expected, rel=1e-12)
