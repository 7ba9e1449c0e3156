import math

import pytest
import torch

from zebra_llm.train.config import OptimOptions
from zebra_llm.train.schedule import lr_factor, make_lr_lambda


def test_warmup_is_linear_and_reaches_peak():
    f = [lr_factor(s, total_steps=100, warmup_steps=10, min_ratio=0.1) for s in range(10)]
    assert f == pytest.approx([(s + 1) / 10 for s in range(10)])
    assert f[-1] == 1.0


def test_cosine_ends_at_min_ratio_and_decreases():
    f = [lr_factor(s, total_steps=100, warmup_steps=10, min_ratio=0.1) for s in range(10, 100)]
    assert f[0] == pytest.approx(1.0)
    assert f[-1] == pytest.approx(0.1)
    assert all(a >= b for a, b in zip(f, f[1:]))
    # Half-way through the decay the cosine is at the midpoint.
    mid = lr_factor(10 + 89 // 2, total_steps=100, warmup_steps=10, min_ratio=0.0)
    assert mid == pytest.approx(0.5 * (1 + math.cos(math.pi * 44 / 89)))


@pytest.mark.parametrize("decay", ["linear", "constant"])
def test_other_decays(decay):
    last = lr_factor(99, total_steps=100, warmup_steps=0, min_ratio=0.2, decay=decay)
    assert last == pytest.approx(0.2 if decay == "linear" else 1.0)


def test_schedule_is_a_pure_function_of_the_step():
    a = [lr_factor(s, total_steps=50, warmup_steps=5) for s in (7, 3, 49, 7)]
    assert a[0] == a[3]
    with pytest.raises(ValueError, match="decay"):
        lr_factor(0, total_steps=10, warmup_steps=1, decay="exp")


def test_lambda_lr_follows_the_function():
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([p], lr=2e-3)
    optim = OptimOptions(lr=2e-3, warmup_steps=3, min_lr_ratio=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, make_lr_lambda(optim, 20))
    seen = []
    for _ in range(20):
        seen.append(sched.get_last_lr()[0])
        opt.step()
        sched.step()
    expected = [2e-3 * lr_factor(s, total_steps=20, warmup_steps=3, min_ratio=0.1) for s in range(20)]
    assert seen == pytest.approx(expected)
