"""Bootstrap CIs and paired bootstrap p-values: fixed samples, known answers, seeded."""

from __future__ import annotations

import numpy as np
import pytest

from ragqa.evaluate.stats import bootstrap_ci, paired_bootstrap_pvalue


def test_ci_on_fixed_sample_contains_mean_and_is_reproducible():
    sample = [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 0.45]
    a = bootstrap_ci(sample, seed=7)
    b = bootstrap_ci(sample, seed=7)
    assert a == b
    assert a.n == 12 and a.mean == pytest.approx(np.mean(sample))
    assert a.low < a.mean < a.high
    # The standard error of this sample's mean is ~0.09: a 95% interval spans roughly +-1.96 SE.
    se = np.std(sample, ddof=1) / np.sqrt(len(sample))
    assert a.high - a.low == pytest.approx(2 * 1.96 * se, rel=0.25)
    assert bootstrap_ci(sample, seed=8) != a  # the seed matters


def test_ci_degenerate_samples():
    assert bootstrap_ci([]).n == 0
    one = bootstrap_ci([0.4])
    assert (one.mean, one.low, one.high) == (0.4, 0.4, 0.4)
    const = bootstrap_ci([1.0] * 5)
    assert (const.low, const.high) == (1.0, 1.0)


def test_wider_interval_for_smaller_sample():
    rng = np.random.default_rng(0)
    big = rng.normal(0.5, 0.2, 400)
    small = big[:25]
    wide, narrow = bootstrap_ci(small), bootstrap_ci(big)
    assert (wide.high - wide.low) > 2 * (narrow.high - narrow.low)


def test_paired_pvalue_detects_real_difference_and_not_noise():
    rng = np.random.default_rng(1)
    base = rng.uniform(0, 1, 60)
    better = base + 0.1 + rng.normal(0, 0.05, 60)
    noise = base + rng.normal(0, 0.05, 60)
    diff, p = paired_bootstrap_pvalue(better, base, seed=3)
    assert diff == pytest.approx(np.mean(better - base))
    assert p < 0.01
    _, p_noise = paired_bootstrap_pvalue(noise, base, seed=3)
    assert p_noise > 0.05
    assert paired_bootstrap_pvalue(better, base, seed=3) == (diff, p)


def test_paired_pvalue_edge_cases():
    assert paired_bootstrap_pvalue([0.5, 0.5], [0.5, 0.5]) == (0.0, 1.0)
    assert paired_bootstrap_pvalue([1.0, 1.0], [0.0, 0.0], n_resamples=999) == (1.0, 0.001)
    with pytest.raises(ValueError):
        paired_bootstrap_pvalue([1.0], [1.0, 2.0])
