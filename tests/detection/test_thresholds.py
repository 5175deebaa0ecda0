"""Row thresholds for small false-positive rates from few clean scores."""

from __future__ import annotations

import numpy as np
import pytest

from detection.thresholds import empirical_threshold, tail_threshold


def test_tail_threshold_hits_the_rate_the_empirical_quantile_cannot_promise() -> None:
    rng = np.random.default_rng(0)
    target = 0.001
    rates_tail, rates_emp = [], []
    for _ in range(200):
        clean = rng.gumbel(size=1344)  # a maximum over many cells: Gumbel-like
        fresh = rng.gumbel(size=20_000)
        rates_tail.append(np.mean(fresh > tail_threshold(clean, target)))
        rates_emp.append(np.mean(fresh > empirical_threshold(clean, target)))
    assert np.mean(rates_tail) <= 1.15 * target
    assert np.mean(rates_emp) > 1.3 * target  # the second-largest score: ~2/1345


def test_tail_threshold_is_never_below_the_empirical_quantile() -> None:
    rng = np.random.default_rng(1)
    for scores in (rng.normal(size=500), rng.uniform(size=300), np.r_[np.zeros(990), 50.0]):
        assert tail_threshold(scores, 0.01) >= empirical_threshold(scores, 0.01)


def test_few_scores_or_large_rates_fall_back_to_the_empirical_quantile() -> None:
    scores = np.arange(20, dtype=float)
    assert tail_threshold(scores, 0.001) == empirical_threshold(scores, 0.001) == 19.0
    assert tail_threshold(scores, 0.1) == empirical_threshold(scores, 0.1)


@pytest.mark.parametrize("bad", [0.0, 1.0, -0.1])
def test_nonsense_is_refused(bad: float) -> None:
    with pytest.raises(ValueError):
        tail_threshold(np.ones(10), bad)
    with pytest.raises(ValueError):
        tail_threshold(np.empty(0), 0.01)
