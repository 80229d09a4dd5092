"""McNemar's test and the paired bootstrap against hand values and scipy."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps

from captum_nave.registers.stats import mcnemar_test, paired_bootstrap_ci


def _pairs(n01, n10, n11, n00):
    a = [False] * n01 + [True] * n10 + [True] * n11 + [False] * n00
    b = [True] * n01 + [False] * n10 + [True] * n11 + [False] * n00
    return np.array(a), np.array(b)


def test_mcnemar_exact_by_hand_and_scipy():
    a, b = _pairs(10, 2, 5, 7)
    r = mcnemar_test(a, b)
    # two-sided exact binomial: 2 * P[X <= 2], X ~ Bin(12, 1/2)
    hand = 2 * (1 + 12 + 66) / 4096
    assert (r.n01, r.n10, r.exact) == (10, 2, True)
    assert r.pvalue == pytest.approx(hand, rel=1e-12)
    for n01, n10 in ((0, 0), (3, 3), (0, 9), (7, 1), (13, 20), (1, 40)):
        a, b = _pairs(n01, n10, 4, 4)
        got = mcnemar_test(a, b).pvalue
        want = 1.0 if n01 + n10 == 0 else sps.binomtest(min(n01, n10), n01 + n10, 0.5).pvalue
        assert got == pytest.approx(want, rel=1e-10, abs=1e-15)


def test_mcnemar_chi2_continuity_corrected():
    a, b = _pairs(15, 5, 3, 3)
    r = mcnemar_test(a, b, exact=False)
    stat = (abs(15 - 5) - 1) ** 2 / 20  # = 4.05
    assert r.statistic == pytest.approx(stat)
    assert r.pvalue == pytest.approx(sps.chi2.sf(stat, 1), rel=1e-12)
    assert mcnemar_test(*_pairs(0, 0, 3, 1), exact=False).pvalue == 1.0


def test_mcnemar_errors():
    with pytest.raises(ValueError, match="second"):
        mcnemar_test([True, False], [True])
    with pytest.raises(ValueError, match="first"):
        mcnemar_test([0, 2], [1, 1])


def test_bootstrap_constant_difference_and_nan_pairs():
    a = np.array([1.0, 2.0, 3.0, np.nan, 5.0])
    b = a + 0.25
    b[1] = np.nan
    ci = paired_bootstrap_ci(a, b, n_boot=200)
    assert ci.n == 3
    assert ci.mean_diff == pytest.approx(0.25) and ci.low == pytest.approx(0.25) and ci.high == pytest.approx(0.25)
    empty = paired_bootstrap_ci([np.nan], [1.0])
    assert empty.n == 0 and math.isnan(empty.mean_diff)


def test_bootstrap_matches_normal_theory_and_is_seeded():
    rng = np.random.default_rng(0)
    a = rng.normal(size=400)
    b = a + 0.3 + rng.normal(scale=1.0, size=400)
    ci = paired_bootstrap_ci(a, b, n_boot=4000, confidence=0.9, random_state=1)
    d = b - a
    half = sps.norm.ppf(0.95) * d.std(ddof=1) / math.sqrt(d.size)
    assert ci.mean_diff == pytest.approx(d.mean())
    assert ci.low == pytest.approx(d.mean() - half, abs=0.15 * half)
    assert ci.high == pytest.approx(d.mean() + half, abs=0.15 * half)
    assert paired_bootstrap_ci(a, b, n_boot=4000, confidence=0.9, random_state=1) == ci
    with pytest.raises(ValueError, match="confidence"):
        paired_bootstrap_ci(a, b, confidence=95)
    with pytest.raises(ValueError, match="n_boot"):
        paired_bootstrap_ci(a, b, n_boot=0)
    with pytest.raises(ValueError, match="first, second"):
        paired_bootstrap_ci(a, b[:3])
