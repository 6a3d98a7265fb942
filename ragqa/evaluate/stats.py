"""Seeded bootstrap statistics: 95% confidence intervals of a mean and paired bootstrap p-values."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Interval:
    mean: float
    low: float
    high: float
    n: int


def bootstrap_ci(values: Sequence[float], confidence: float = 0.95, n_resamples: int = 2000,
                 seed: int = 0) -> Interval:
    """Percentile bootstrap CI of the mean (scipy.stats.bootstrap); same seed, same interval."""
    data = np.asarray(values, dtype=float)
    if data.size == 0:
        return Interval(float("nan"), float("nan"), float("nan"), 0)
    mean = float(data.mean())
    if data.size == 1 or np.all(data == data[0]):
        return Interval(mean, mean, mean, int(data.size))
    from scipy.stats import bootstrap

    res = bootstrap((data,), np.mean, confidence_level=confidence, n_resamples=n_resamples,
                    method="percentile", rng=np.random.default_rng(seed))
    return Interval(mean, float(res.confidence_interval.low), float(res.confidence_interval.high), int(data.size))


def paired_bootstrap_pvalue(a: Sequence[float], b: Sequence[float], n_resamples: int = 2000,
                            seed: int = 0) -> tuple[float, float]:
    """(mean(a - b), two-sided p-value) of the paired bootstrap test on per-question scores.

    Hand-written (scipy has no paired bootstrap *test*): resample questions with replacement, centre the
    resampled mean differences on zero (the null hypothesis) and count how often they are at least as
    extreme as the observed one (Efron & Tibshirani 1993, sec. 16.4).
    """
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if x.shape != y.shape:
        raise ValueError(f"paired samples differ in length: {x.size} vs {y.size}")
    if x.size == 0:
        return float("nan"), float("nan")
    diff = x - y
    observed = float(diff.mean())
    if np.all(diff == diff[0]):
        # Every resample gives the same difference: no evidence (0) or the test's smallest p (non-zero).
        return observed, 1.0 if observed == 0 else 1.0 / (n_resamples + 1)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, diff.size, size=(n_resamples, diff.size))
    means = diff[idx].mean(axis=1)
    extreme = np.abs(means - observed) >= abs(observed) - 1e-12
    return observed, float((1 + extreme.sum()) / (n_resamples + 1))
