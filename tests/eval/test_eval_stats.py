"""zebra_llm.eval.stats against SciPy where installed, and against values worked out by hand."""

from __future__ import annotations

import math
import random

import pytest

from zebra_llm.eval import stats


def test_wilson_textbook_values():
    lo, hi = stats.wilson(0, 10)
    assert lo == 0 and abs(hi - 0.27753) < 1e-4
    lo, hi = stats.wilson(5, 10)
    assert abs(lo - 0.23659) < 1e-4 and abs(hi - 0.76341) < 1e-4
    lo, hi = stats.wilson(30, 30)
    assert hi == pytest.approx(1) and abs(lo - 0.88649) < 1e-4
    assert all(math.isnan(x) for x in stats.wilson(0, 0))
    with pytest.raises(ValueError, match="successes"):
        stats.wilson(4, 3)


def test_mcnemar_by_hand():
    # 5 discordant prompts all one way: 2 * (1/2)^5 = 0.0625; 6 of 6: 0.03125
    assert stats.mcnemar_exact(5, 0) == pytest.approx(0.0625)
    assert stats.mcnemar_exact(0, 6) == pytest.approx(0.03125)
    # 3 vs 1: 2 * (1 + 4) / 16 = 0.625
    assert stats.mcnemar_exact(3, 1) == pytest.approx(0.625)
    assert stats.mcnemar_exact(0, 0) == 1.0 and stats.mcnemar_exact(2, 2) == 1.0
    with pytest.raises(ValueError, match="only_a"):
        stats.mcnemar_exact(-1, 2)


def test_paired_test_counts_only_shared_prompts():
    a = {(0.1, 0): 1.0, (0.1, 1): 1.0, (0.5, 0): 0.0, (0.9, 0): 1.0, "extra": 1.0}
    b = {(0.1, 0): 0.0, (0.1, 1): 1.0, (0.5, 0): 1.0, (0.9, 0): 0.0}
    r = stats.paired_test(a, b)
    assert r["n_shared"] == 4 and r["a_better"] == 2 and r["b_better"] == 1
    assert r["p"] == pytest.approx(1.0) and r["a_mean"] == 0.75 and r["b_mean"] == 0.5
    # fractional scores: a sign test
    r = stats.paired_test({1: 0.5, 2: 0.75, 3: 1.0}, {1: 0.25, 2: 0.75, 3: 0.5})
    assert (r["a_better"], r["b_better"]) == (2, 0) and r["p"] == pytest.approx(0.5)


def test_fisher_by_hand():
    # 3/3 against 0/3: the only tables as extreme are the observed one and its mirror, 2 / C(6,3) = 0.1
    assert stats.fisher_exact(3, 0, 0, 3) == pytest.approx(0.1)
    # Fisher's tea tasting, 3 of 4 right: two-sided p = (1 + 16 + 16 + 1) / 70
    assert stats.fisher_exact(3, 1, 1, 3) == pytest.approx(34 / 70)
    assert stats.fisher_exact(0, 0, 0, 0) == 1.0


def test_holm_by_hand():
    adjusted = stats.holm([0.01, 0.04, 0.03, 0.5])
    assert adjusted == pytest.approx([0.04, 0.09, 0.09, 0.5])
    assert stats.holm([]) == []


def test_t_distribution_by_hand():
    assert stats.t_two_sided(0.0, 5) == pytest.approx(1.0)
    assert stats.t_quantile_975(1) == pytest.approx(12.7062, abs=1e-3)
    assert stats.t_quantile_975(30) == pytest.approx(2.0423, abs=1e-3)
    r = stats.paired_t([1.0, 2.0, 3.0])  # mean 2, sd 1, se 1/sqrt(3), t = 3.4641 on 2 df -> p = 0.0742
    assert r["mean"] == 2 and r["p"] == pytest.approx(0.07418, abs=1e-4)
    assert r["ci"][0] == pytest.approx(2 - 4.3027 / math.sqrt(3), abs=1e-3)


scipy_stats = pytest.importorskip("scipy.stats", reason="SciPy cross-checks")


def test_against_scipy_on_random_inputs():
    rng = random.Random(0)
    for _ in range(60):
        b, c = rng.randint(0, 25), rng.randint(0, 25)
        if b + c:
            assert stats.mcnemar_exact(b, c) == pytest.approx(
                scipy_stats.binomtest(b, b + c, 0.5).pvalue, rel=1e-9)
        t = [rng.randint(0, 30) for _ in range(4)]
        assert stats.fisher_exact(*t) == pytest.approx(
            scipy_stats.fisher_exact([[t[0], t[1]], [t[2], t[3]]]).pvalue, rel=1e-7, abs=1e-12)
        k, n = rng.randint(0, 40), 40
        lo, hi = stats.wilson(k, n)
        ref = scipy_stats.binomtest(k, n).proportion_ci(0.95, method="wilson")
        assert (lo, hi) == pytest.approx((ref.low, ref.high), abs=1e-9)
        df = rng.randint(1, 40)
        x = rng.uniform(-6, 6)
        assert stats.t_two_sided(x, df) == pytest.approx(2 * scipy_stats.t.sf(abs(x), df), rel=1e-8, abs=1e-14)
        diffs = [rng.gauss(0.1, 1) for _ in range(rng.randint(2, 12))]
        assert stats.paired_t(diffs)["p"] == pytest.approx(scipy_stats.ttest_1samp(diffs, 0).pvalue, rel=1e-7)
