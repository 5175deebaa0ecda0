"""Thresholds for a target false-positive rate from a limited number of clean scores.

At a target of 0.1 % and two weeks of 15-minute history (1,344 rows), the empirical
quantile is the second-largest clean score: too noisy to promise a rate. The row
threshold instead extrapolates the tail of the clean scores (peaks over a threshold,
exponential tail: the tail of a maximum over many cells is close to Gumbel, whose
excesses are exponential), never below the empirical quantile.
"""

from __future__ import annotations

import numpy as np

#: Share of the clean scores treated as the tail.
TAIL_SHARE = 0.05
#: Fewest tail scores needed to extrapolate; with fewer, the empirical quantile is used.
MIN_TAIL = 8


def empirical_threshold(clean_scores: np.ndarray, target_fpr: float) -> float:
    """The conservative empirical ``1 - target_fpr`` quantile of ``clean_scores``."""
    _check(clean_scores, target_fpr)
    return float(np.quantile(clean_scores, 1.0 - target_fpr, method="higher"))


def tail_threshold(clean_scores: np.ndarray, target_fpr: float) -> float:
    """Row threshold with an estimated exceedance rate ``target_fpr`` on clean rows.

    ``u`` = the ``1 - TAIL_SHARE`` quantile; excesses over ``u`` are modelled as
    exponential with their mean ``beta``; the threshold is ``u + beta ln(p_u / target)``,
    at least the empirical quantile.
    """
    _check(clean_scores, target_fpr)
    s = np.asarray(clean_scores, dtype=np.float64)
    empirical = empirical_threshold(s, target_fpr)
    if target_fpr >= TAIL_SHARE:
        return empirical
    u = float(np.quantile(s, 1.0 - TAIL_SHARE))
    excess = s[s > u] - u
    if len(excess) < MIN_TAIL:
        return empirical
    p_u = len(excess) / len(s)
    beta = float(excess.mean())
    return max(empirical, u + beta * float(np.log(p_u / target_fpr)))


def _check(clean_scores: np.ndarray, target_fpr: float) -> None:
    if not 0 < target_fpr < 1:
        raise ValueError("target_fpr must be in (0, 1)")
    if np.asarray(clean_scores).size == 0:
        raise ValueError("no clean scores to calibrate on")
