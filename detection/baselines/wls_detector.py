"""WLS state estimation with the chi-square test, behind the Detector protocol.

Adapts :class:`detection.baselines.wls.WlsBadDataDetector` (pandapower's WLS
estimator, flat start, zero-injection auxiliary buses) to
:class:`detection.detector.Detector`:

* row score = ``J / threshold``: the WLS objective ``J = r' R^-1 r`` divided by the
  chi-square limit of ``1 - chi2_prob_false`` with ``m - n`` degrees of freedom, so a
  score above 1 is the classic chi-square alarm. A snapshot the estimator cannot fit
  scores :data:`DIVERGED_SCORE`.
* cell scores = normalized residuals ``|r_i| / sqrt(Omega_ii)``, ``Omega = R - H G^-1 H'``
  (the quantities of the largest-normalized-residual test), mapped back to layout
  positions; zero where the estimator diverged.

It needs the grid and the noise standard deviations of the measurements (the
weights); ``fit`` only checks the layout. One estimate per row costs about
0.03-0.12 s, so :attr:`WlsDetector.max_rows` tells the evaluator to subsample.
"""

from __future__ import annotations

import logging
import warnings

import numpy as np

from detection.baselines.score_cache import ScoreCache, fingerprint
from detection.baselines.wls import WlsBadDataDetector
from detection.layout import MeasurementLayout

#: Row score of a snapshot the estimator cannot fit (finite, so AUC stays defined).
DIVERGED_SCORE = 1e6
#: Default budget of rows the evaluator scores with WLS (validation and test each).
DEFAULT_MAX_ROWS = 200


class WlsDetector:
    """Chi-square (row) and normalized residuals (cells) of WLS state estimation."""

    def __init__(
        self,
        grid: str,
        std: np.ndarray,
        *,
        chi2_prob_false: float = 0.05,
        max_rows: int = DEFAULT_MAX_ROWS,
        name: str = "wls_chi2",
    ) -> None:
        self.name = name
        self.max_rows = max_rows
        self._wls = WlsBadDataDetector(grid, std, chi2_prob_false=chi2_prob_false)
        self._cache = ScoreCache()

    def fit(self, x_clean: np.ndarray, layout: MeasurementLayout) -> None:
        if layout.columns != self._wls.layout.columns:
            raise ValueError(f"{self.name}: the data layout is not the layout of this grid")

    def score_rows(self, x: np.ndarray) -> np.ndarray:
        return self._scores(x)[0]

    def score_cells(self, x: np.ndarray) -> np.ndarray | None:
        return self._scores(x)[1]

    def _scores(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        x = np.asarray(x, dtype=np.float64)
        key = fingerprint(x)
        cached = self._cache.get(key)
        if cached is not None and cached[1] is not None:
            return cached[0], cached[1]
        rows = np.empty(x.shape[0])
        cells = np.zeros(x.shape)
        for k in range(x.shape[0]):
            rows[k], cells[k] = self.estimate(x[k])
        self._cache.put(key, (rows, cells))
        return rows, cells

    def estimate(self, z: np.ndarray) -> tuple[float, np.ndarray]:
        """``(J / threshold, normalized residual per layout position)`` of one snapshot."""
        from pandapower.estimation.state_estimation import StateEstimation
        from scipy.stats import chi2

        w = self._wls
        cells = np.zeros(len(w.layout))
        w.net.measurement = w.template.copy()
        w.net.measurement["value"] = w.estimator_values(z)
        quiet = logging.getLogger("pandapower.estimation")
        level = quiet.level
        quiet.setLevel(logging.CRITICAL)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                se = StateEstimation(w.net, algorithm="wls", maximum_iterations=30)
                try:
                    se.estimate("flat", "flat", zero_injection="aux_bus")
                except (np.linalg.LinAlgError, ValueError, FloatingPointError):
                    return DIVERGED_SCORE, cells
        finally:
            quiet.setLevel(level)
        solver = se.solver
        if not solver.successful or solver.r is None:
            return DIVERGED_SCORE, cells
        r = np.asarray(solver.r, dtype=np.float64).ravel()
        m = len(r)
        n = len(solver.eppci.v) + len(solver.eppci.delta) - 1
        threshold = float(chi2.ppf(1.0 - w.chi2_prob_false, m - n))
        objective = float(r @ (solver.R_inv @ r))
        if not np.isfinite(objective):
            return DIVERGED_SCORE, cells
        r_cov = np.linalg.inv(solver.R_inv)
        omega = np.diag(r_cov) - np.einsum(
            "ij,ji->i", solver.H, np.linalg.solve(solver.Gm, solver.H.T)
        )
        sd = np.sqrt(np.abs(omega))
        rn = np.where(sd > 1e-12, np.abs(r) / np.where(sd > 1e-12, sd, 1.0), 0.0)
        # residual entries -> net.measurement index (= layout position, see the template)
        idx = np.asarray(solver.pp_meas_indices, dtype=np.float64).ravel()
        ok = np.isfinite(idx) & (idx >= 0) & (idx < len(cells))
        positions = w.template.index.get_indexer(idx[ok].astype(np.int64))
        good = positions >= 0
        cells[positions[good]] = rn[ok][good]
        return min(objective / threshold, DIVERGED_SCORE), cells
