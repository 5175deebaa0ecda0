"""PCA residual detector: the Q statistic (squared prediction error) of standardized rows.

Clean rows are standardized per measurement (mean and standard deviation of the clean
training rows) and a principal subspace keeps ``explained_variance`` of their variance:
the slow, correlated load and generation patterns. What is left, the residual
``e = z - z P P'``, is mostly measurement noise on clean data. The row score is
``Q = ||e||^2`` (dimensionless, in squared standard deviations); the score of a cell is
its residual divided by that residual's standard deviation on the clean training rows,
``|e_i| / sd_i``, which localizes the measurements that do not fit the subspace.
"""

from __future__ import annotations

import numpy as np

from detection.layout import MeasurementLayout

#: Smallest standard deviation a measurement is divided by (a constant column, e.g. a
#: slack voltage without noise, would otherwise blow up) [in the column's unit].
MIN_STD = 1e-9


class PcaResidualDetector:
    """Q statistic of a PCA model of clean operation; localizes by normalized residuals."""

    def __init__(self, explained_variance: float = 0.999, *, name: str = "pca_q") -> None:
        if not 0.0 < explained_variance < 1.0:
            raise ValueError(f"explained_variance must be in (0, 1), got {explained_variance}")
        self.name = name
        self.explained_variance = explained_variance
        self.n_components = 0
        self._mean = np.empty(0)
        self._std = np.empty(0)
        self._basis = np.empty((0, 0))  # (n_measurements, n_components)
        self._res_std = np.empty(0)

    def fit(self, x_clean: np.ndarray, layout: MeasurementLayout) -> None:
        x = np.asarray(x_clean, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != len(layout):
            raise ValueError(f"x has shape {x.shape}, the layout {len(layout)} measurements")
        if x.shape[0] < 2:
            raise ValueError("PCA needs at least two clean rows")
        self._mean = x.mean(axis=0)
        self._std = np.maximum(x.std(axis=0), MIN_STD)
        z = (x - self._mean) / self._std
        _, s, vt = np.linalg.svd(z, full_matrices=False)
        share = np.cumsum(s**2) / max(float(np.sum(s**2)), 1e-300)
        k = int(np.searchsorted(share, self.explained_variance) + 1)
        self.n_components = min(k, vt.shape[0] - 1) if vt.shape[0] > 1 else 0
        self._basis = vt[: self.n_components].T
        self._res_std = np.maximum(self._residual(z).std(axis=0), MIN_STD)

    def _standardize(self, x: np.ndarray) -> np.ndarray:
        if self._mean.size == 0:
            raise RuntimeError(f"{self.name}: fit() first")
        return (np.asarray(x, dtype=np.float64) - self._mean) / self._std

    def _residual(self, z: np.ndarray) -> np.ndarray:
        return np.asarray(z - (z @ self._basis) @ self._basis.T)

    def score_rows(self, x: np.ndarray) -> np.ndarray:
        """Q statistic per row (sum of squared standardized residuals)."""
        e = self._residual(self._standardize(x))
        return np.asarray(np.einsum("ij,ij->i", e, e))

    def score_cells(self, x: np.ndarray) -> np.ndarray:
        """``|e_i| / sd_i`` per measurement (residual in clean-residual standard deviations)."""
        e = self._residual(self._standardize(x))
        return np.asarray(np.abs(e) / self._res_std[None, :])
