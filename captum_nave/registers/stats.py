"""Paired statistics for comparing two models on the same images.

* :func:`mcnemar_test`: McNemar's test for paired binary outcomes (e.g. CorLoc hits
  of the model without and with registers on the same images). The default is the
  *exact* test: under H0 the discordant pairs split as Binomial(n01 + n10, 1/2) and
  the two-sided p-value is ``min(1, 2 * P[X <= min(n01, n10)])`` (the same as
  ``scipy.stats.binomtest(min(n01, n10), n01 + n10, 0.5).pvalue``). ``exact=False``
  gives the chi-square statistic with Edwards' continuity correction,
  ``(|n01 - n10| - 1)^2 / (n01 + n10)`` on 1 degree of freedom.
* :func:`paired_bootstrap_ci`: percentile bootstrap confidence interval of the mean
  paired difference ``mean(b - a)``, resampling images (pairs) with replacement.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence, Union

import numpy as np

from captum_nave._validation import check_int, check_real

__all__ = ["McNemarResult", "mcnemar_test", "BootstrapCI", "paired_bootstrap_ci"]

ArrayLike = Union[Sequence[float], np.ndarray]


@dataclass(frozen=True)
class McNemarResult:
    """Outcome of McNemar's test.

    Attributes
    ----------
    n01 : int
        Pairs where the first model fails and the second succeeds.
    n10 : int
        Pairs where the first model succeeds and the second fails.
    statistic : float
        ``min(n01, n10)`` for the exact test; the corrected chi-square otherwise.
    pvalue : float
        Two-sided p-value (1.0 when there are no discordant pairs).
    exact : bool
        Which test was used.
    """

    n01: int
    n10: int
    statistic: float
    pvalue: float
    exact: bool


def _binary(x: ArrayLike, name: str) -> np.ndarray:
    arr = np.asarray(x)
    if arr.ndim != 1:
        raise ValueError(f"{name}: expected a 1-D sequence of booleans, got shape {arr.shape}")
    if arr.dtype != bool:
        if not np.all(np.isin(arr, (0, 1))):
            raise ValueError(f"{name}: expected booleans or 0/1 values, got {arr.tolist()[:10]}")
        arr = arr.astype(bool)
    return arr


def mcnemar_test(first: ArrayLike, second: ArrayLike, *, exact: bool = True) -> McNemarResult:
    """McNemar's test that two paired binary outcomes have the same success rate.

    Parameters
    ----------
    first, second : sequence of bool of length N
        Per-image outcomes of the two models on the same images.
    exact : bool, default True
        Exact binomial test (recommended for fewer than ~25 discordant pairs);
        otherwise chi-square with continuity correction.

    Returns
    -------
    McNemarResult
    """
    a = _binary(first, "first")
    b = _binary(second, "second")
    if a.shape != b.shape:
        raise ValueError(f"second: expected {a.shape[0]} outcomes like first, got {b.shape[0]}")
    n01 = int(np.sum(~a & b))
    n10 = int(np.sum(a & ~b))
    n = n01 + n10
    if exact:
        m = min(n01, n10)
        if n == 0:
            p = 1.0
        else:
            tail = sum(math.comb(n, i) for i in range(m + 1)) / 2.0**n
            p = min(1.0, 2.0 * tail)
        return McNemarResult(n01, n10, float(m), float(p), True)
    if n == 0:
        return McNemarResult(n01, n10, 0.0, 1.0, False)
    stat = (abs(n01 - n10) - 1.0) ** 2 / n if abs(n01 - n10) >= 1 else 0.0
    p = math.erfc(math.sqrt(stat / 2.0))  # survival function of chi2 with 1 dof
    return McNemarResult(n01, n10, float(stat), float(p), False)


@dataclass(frozen=True)
class BootstrapCI:
    """Mean paired difference ``mean(second - first)`` with a percentile bootstrap CI."""

    mean_diff: float
    low: float
    high: float
    confidence: float
    n: int


def paired_bootstrap_ci(
    first: ArrayLike,
    second: ArrayLike,
    *,
    n_boot: int = 2000,
    confidence: float = 0.95,
    random_state: Optional[Union[int, np.random.Generator]] = 0,
) -> BootstrapCI:
    """Percentile bootstrap CI of the mean paired difference ``second - first``.

    Pairs with a NaN on either side are dropped.

    Parameters
    ----------
    first, second : sequence of float of length N
        Per-image values of the two models.
    n_boot : int, default 2000
        Bootstrap resamples.
    confidence : float in (0, 1), default 0.95
    random_state : int, Generator or None, default 0

    Returns
    -------
    BootstrapCI
        All NaN when no complete pair remains.
    """
    a = np.asarray(first, dtype=np.float64)
    b = np.asarray(second, dtype=np.float64)
    if a.ndim != 1 or a.shape != b.shape:
        raise ValueError(
            f"first, second: expected two 1-D sequences of the same length, got shapes {a.shape} "
            f"and {b.shape}"
        )
    n_boot = check_int(n_boot, "n_boot", low=1)
    confidence = check_real(confidence, "confidence", low=0.0, high=1.0, low_open=True, high_open=True)
    ok = np.isfinite(a) & np.isfinite(b)
    d = b[ok] - a[ok]
    if d.size == 0:
        nan = float("nan")
        return BootstrapCI(nan, nan, nan, float(confidence), 0)
    rng = random_state if isinstance(random_state, np.random.Generator) else np.random.default_rng(random_state)
    idx = rng.integers(0, d.size, size=(n_boot, d.size))
    means = d[idx].mean(axis=1)
    alpha = (1.0 - confidence) / 2.0
    low, high = np.quantile(means, [alpha, 1.0 - alpha])
    return BootstrapCI(float(d.mean()), float(low), float(high), float(confidence), int(d.size))
