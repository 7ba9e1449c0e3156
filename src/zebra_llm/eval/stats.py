"""Small exact statistics for evaluation tables: Wilson intervals for accuracies, exact McNemar (sign)
tests on paired prompts, Fisher's exact test for two independent counts, a paired t-test for per-document
log-likelihoods, and Holm's step-down correction for several comparisons.

Everything is written out here (no SciPy at run time); ``tests/eval/test_eval_stats.py`` checks each
function against SciPy where it is installed and against hand-computed values otherwise.

Why these tests: every method of a contest sees the *same* prompts, so the comparison of two methods is
paired. McNemar's exact test uses only the discordant prompts (one method right, the other wrong); under
"no difference" each discordant prompt falls either way with probability 1/2, so the two-sided p-value is a
binomial tail (Agresti, *Categorical Data Analysis*, 3rd ed., Section 11.1). For fractional scores (RULER's
multi-value tasks) the same test counts prompts where one score is higher (the sign test, of which
McNemar's is the 0/1 case). Fisher's exact test compares two independent samples (different prompts).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

from .._checks import check_int

Z95 = 1.959963984540054  # the 0.975 quantile of the standard normal


def wilson(successes: float, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a proportion ``successes / n`` (Wilson 1927); ``(nan, nan)`` for n = 0."""
    if n < 0 or successes < 0 or successes > n:
        raise ValueError(f"wilson: need 0 <= successes <= n, got successes={successes!r}, n={n!r}")
    if n == 0:
        return (float("nan"), float("nan"))
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def binomial_two_sided(k: int, n: int) -> float:
    """Two-sided exact p-value of ``k`` successes in ``n`` fair coin flips: twice the smaller tail, at most 1."""
    if n == 0:
        return 1.0
    k = min(k, n - k)
    tail = sum(math.comb(n, i) for i in range(k + 1))
    return min(1.0, 2 * tail / 2**n)


def mcnemar_exact(only_a: int, only_b: int) -> float:
    """Exact McNemar p-value from the discordant counts: prompts only method A got right (``only_a``) and
    prompts only method B got right (``only_b``)."""
    for name, v in (("only_a", only_a), ("only_b", only_b)):
        check_int(f"mcnemar_exact: {name}", v, 0)
    return binomial_two_sided(only_a, only_a + only_b)


def paired_test(a: dict, b: dict) -> dict:
    """Exact McNemar / sign test of two methods' scores on their shared prompts.

    ``a`` and ``b`` map a prompt key (e.g. ``(depth, trial)``) to a score in [0, 1]. Returns ``n_shared``,
    ``a_better`` / ``b_better`` (prompts where one scored higher), the two-sided ``p`` and the mean
    scores on the shared prompts."""
    shared = sorted(set(a) & set(b), key=repr)
    a_better = sum(1 for k in shared if a[k] > b[k])
    b_better = sum(1 for k in shared if b[k] > a[k])
    n = len(shared)
    return {"n_shared": n, "a_better": a_better, "b_better": b_better, "p": mcnemar_exact(a_better, b_better),
            "a_mean": sum(a[k] for k in shared) / n if n else float("nan"),
            "b_mean": sum(b[k] for k in shared) / n if n else float("nan")}


def fisher_exact(a: int, b: int, c: int, d: int) -> float:
    """Two-sided Fisher exact p-value of the 2x2 table ``[[a, b], [c, d]]`` (rows: samples, columns:
    right / wrong): the probability, with the margins fixed, of every table no more likely than the
    observed one (the convention of R's ``fisher.test`` and SciPy)."""
    for name, v in (("a", a), ("b", b), ("c", c), ("d", d)):
        check_int(f"fisher_exact: {name}", v, 0)
    row1, col1, n = a + b, a + c, a + b + c + d
    lo, hi = max(0, col1 - (n - row1)), min(row1, col1)
    total = math.comb(n, col1)

    def prob(x: int) -> float:
        return math.comb(row1, x) * math.comb(n - row1, col1 - x) / total

    observed = prob(a)
    # relative tolerance: tables as likely as the observed one, up to rounding, count as "no more likely"
    return min(1.0, sum(p for p in (prob(x) for x in range(lo, hi + 1)) if p <= observed * (1 + 1e-7)))


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz's method)."""
    tiny, eps = 1e-300, 3e-16
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 500):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < eps:
            break
    return h


def regularized_beta(a: float, b: float, x: float) -> float:
    """I_x(a, b), the regularized incomplete beta function."""
    if x <= 0:
        return 0.0
    if x >= 1:
        return 1.0
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1) / (a + b + 2):
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, 1 - x) / b


def t_two_sided(t: float, df: int) -> float:
    """Two-sided p-value of Student's t with ``df`` degrees of freedom."""
    if df < 1:
        raise ValueError(f"t_two_sided: df must be >= 1, got {df!r}")
    if math.isinf(t):
        return 0.0
    return regularized_beta(df / 2, 0.5, df / (df + t * t))


@functools.lru_cache(maxsize=256)
def t_quantile_975(df: int) -> float:
    """The 0.975 quantile of Student's t (bisection on :func:`t_two_sided`)."""
    lo, hi = 0.0, 1000.0
    for _ in range(200):
        mid = (lo + hi) / 2
        if t_two_sided(mid, df) > 0.05:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def paired_t(diffs: Sequence[float]) -> dict:
    """Paired t-test of the differences (e.g. per-document mean NLL of method A minus method B): ``mean``,
    the 95% interval of the mean, and the two-sided ``p`` of "mean = 0". Needs at least 2 differences."""
    n = len(diffs)
    if n < 2:
        raise ValueError(f"paired_t: need at least 2 differences, got {n}")
    mean = sum(diffs) / n
    sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (n - 1))
    se = sd / math.sqrt(n)
    half = t_quantile_975(n - 1) * se
    if se == 0:
        p = 1.0 if mean == 0 else 0.0
    else:
        p = t_two_sided(mean / se, n - 1)
    return {"n": n, "mean": mean, "ci": [mean - half, mean + half], "p": p}


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values (Holm 1979), in the order given: the i-th smallest p times
    (m - i), made monotone, at most 1. Rejecting where adjusted p < alpha controls the family-wise error."""
    m = len(pvalues)
    order = sorted(range(m), key=lambda i: pvalues[i])
    adjusted = [0.0] * m
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * pvalues[i]))
        adjusted[i] = running
    return adjusted


__all__ = ["Z95", "binomial_two_sided", "fisher_exact", "holm", "mcnemar_exact", "paired_t", "paired_test",
           "regularized_beta", "t_quantile_975", "t_two_sided", "wilson"]
