"""The best recall any detector can reach on an attacked series: a Neyman-Pearson bound.

A detection target is only meaningful if it is reachable. The generated data tells us
exactly what every attack changed: ``injected = attacked - clean`` per row and
measurement [layout units], and the measurement noise is Gaussian, independent across
measurements and time, with a known standard deviation per measurement (``std``).

Give a detector everything: the true state of the grid at every row (so the only
uncertainty left is the measurement noise), the rows an attack may occupy, and the
exact change it makes on every measurement of every row so far. At row ``k`` of an
attack episode (rows ``1..k`` of it seen), deciding "no attack" against "this attack"
is then a test between two Gaussians with the same covariance; by the Neyman-Pearson
lemma no test at false-alarm probability ``alpha`` detects it with probability above
the matched filter's::

    P_D(k) = Phi(s_k - Phi^-1(1 - alpha)),    s_k^2 = sum_{j<=k} ||injected_j / std||^2

(``s_k``: the attack's signal-to-noise ratio so far, in noise standard deviations).
Every real detector knows less (the state is estimated, the attacked rows, the
measurements and the shape are unknown) and does worse, so the mean of ``P_D`` over
the attacked rows bounds the expected recall of any detector held to ``alpha`` on
every clean row. A detector that spends its false alarms unevenly over time cannot
do better on average: ``P_D`` is concave in ``alpha`` (the Neyman-Pearson ROC), and
the attacks' timing does not depend on the detector.

Only changes to measurements count: an attack that leaves every measurement unchanged
(the price signal) is judged by the price check, not here. An episode is a maximal run
of consecutive rows of the same attack kind (the injector separates episodes by at
least one clean row).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.stats import norm

from detection.dataset import NO_ATTACK


@dataclass(frozen=True, slots=True)
class RecallBound:
    """Upper bounds on recall at ``target_fpr``, over the rows of measurement attacks.

    ``recall``: the mean bound over those rows (shares in [0, 1]); ``per_kind``: the same
    per attack kind; ``rows``: how many rows; ``per_row``: the bound of each row of the
    series (NaN on clean rows and rows that change no measurement).
    """

    target_fpr: float
    recall: float
    per_kind: dict[str, float]
    rows: int
    per_row: np.ndarray

    def to_dict(self) -> dict[str, Any]:
        return {
            "target_fpr": self.target_fpr,
            "recall": self.recall,
            "per_kind": self.per_kind,
            "rows": self.rows,
            "assumes": "true state, noise std and each attack's exact change known "
            "(Neyman-Pearson matched filter over the episode's rows so far)",
        }


def _episodes(kinds: np.ndarray) -> list[tuple[int, int]]:
    """``[start, stop)`` of every maximal run of one attack kind."""
    out: list[tuple[int, int]] = []
    i, n = 0, len(kinds)
    while i < n:
        if kinds[i] == NO_ATTACK:
            i += 1
            continue
        j = i + 1
        while j < n and kinds[j] == kinds[i]:
            j += 1
        out.append((i, j))
        i = j
    return out


def recall_bound(
    injected: np.ndarray, std: np.ndarray, kinds: np.ndarray, target_fpr: float
) -> RecallBound:
    """The Neyman-Pearson bound on recall at ``target_fpr`` (see the module docstring).

    ``injected`` (n_rows, n_measurements) [layout units]: attacked minus clean values;
    ``std`` (n_measurements,) the noise standard deviation [layout units]; ``kinds``
    (n_rows,) the attack kind per row (``"none"`` = clean). Raises ``ValueError`` on
    misaligned shapes, a non-positive or non-finite ``std``, or ``target_fpr`` outside
    (0, 1), and when no row changes a measurement.
    """
    if not 0.0 < target_fpr < 1.0:
        raise ValueError(f"target_fpr must be in (0, 1), got {target_fpr}")
    if injected.ndim != 2 or std.shape != (injected.shape[1],):
        raise ValueError(f"injected {injected.shape} and std {std.shape} must be (n, m) and (m,)")
    if kinds.shape != (injected.shape[0],):
        raise ValueError(f"kinds {kinds.shape} must be row-aligned with injected")
    if not (np.all(np.isfinite(std)) and np.all(std > 0)):
        raise ValueError("std must be positive and finite")
    if not np.all(np.isfinite(injected)):
        raise ValueError("injected must be finite")
    energy = np.square(injected / std).sum(axis=1)  # ||injected_j / std||^2 per row
    z = float(norm.ppf(1.0 - target_fpr))
    per_row = np.full(len(kinds), np.nan)
    for start, stop in _episodes(kinds):
        if not np.any(energy[start:stop] > 0):
            continue  # changes no measurement (the price)
        snr = np.sqrt(np.cumsum(energy[start:stop]))
        per_row[start:stop] = norm.cdf(snr - z)
    counted = ~np.isnan(per_row)
    if not counted.any():
        raise ValueError("no attacked row changes a measurement: nothing to bound")
    per_kind = {
        str(k): float(per_row[counted & (kinds == k)].mean())
        for k in sorted({str(k) for k in kinds[counted]})
    }
    return RecallBound(
        target_fpr=target_fpr,
        recall=float(per_row[counted].mean()),
        per_kind=per_kind,
        rows=int(counted.sum()),
        per_row=per_row,
    )
