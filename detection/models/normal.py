"""The model of normal operation: a factor model of clean snapshots, and the residuals it gives.

Clean snapshots of a grid are a few hundred load and generation patterns seen
through the power-flow equations, plus independent meter noise. After
standardizing each column (``z = (x - mean) / scale``), a factor model

    z = W f + e,    f ~ N(0, I_k),    e ~ N(0, diag(psi))

captures both: ``W`` (m, k) the correlated patterns (and, implicitly, the linearized
physics that ties measurements together), ``psi`` each meter's own noise. It is fitted
on clean rows with scikit-learn's ``FactorAnalysis`` (deterministic, a few seconds on
two weeks of case118 data) and stored in a numerically convenient form: with
``y = z / sqrt(psi)`` and ``B = W / sqrt(psi) = U S V'``, the precision of ``y`` is
``P = I - U diag(c) U'``, ``c = s^2 / (1 + s^2)``. Two residuals follow, both standard
normal on clean data:

* per measurement, the **conditional residual** ``r_i = (P y)_i / sqrt(P_ii)``: how far
  measurement ``i`` is from what every other measurement says it should be (the
  statistic of the largest-normalized-residual test, under this model);
* per bus and state direction (voltage angle, magnitude), the **matched filter**
  ``g_j = q_j' P y / sqrt(q_j' P q_j)`` with ``q_j`` the standardized column of the AC
  measurement Jacobian (:mod:`detection.models.jacobian`): the evidence that bus ``j``'s
  state was shifted, which is what a stealthy attack does.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

#: Smallest column scale [layout units] and noise variance share [standardized units].
MIN_SCALE = 1e-6
MIN_NOISE_VAR = 1e-6


@dataclass(frozen=True, slots=True)
class NormalModel:
    """A fitted factor model (see the module docstring). Arrays are float64.

    ``mean``, ``scale`` (m,) [layout units]; ``noise_sd`` (m,) = ``sqrt(psi)``
    [standardized units]; ``basis`` (m, k) = ``U``; ``shrink`` (k,) = ``c``.
    """

    mean: np.ndarray
    scale: np.ndarray
    noise_sd: np.ndarray
    basis: np.ndarray
    shrink: np.ndarray

    @property
    def factors(self) -> int:
        return int(self.basis.shape[1])

    def whiten(self, x: np.ndarray) -> np.ndarray:
        """``y = (x - mean) / scale / noise_sd`` for rows ``x`` (n, m) [layout units]."""
        x = np.asarray(x, dtype=np.float64)
        return np.asarray((x - self.mean) / self.scale / self.noise_sd)

    def projected(self, y: np.ndarray) -> np.ndarray:
        """``P y`` for whitened rows ``y`` (n, m)."""
        return np.asarray(y - ((y @ self.basis) * self.shrink) @ self.basis.T)

    def precision_diagonal(self) -> np.ndarray:
        """``P_ii`` (m,), in (0, 1]."""
        return np.asarray(np.maximum(1.0 - (self.basis**2) @ self.shrink, 1e-9))

    def residuals(self, x: np.ndarray) -> np.ndarray:
        """Conditional residuals ``r`` (n, m) of rows ``x``; standard normal on clean data."""
        return np.asarray(self.projected(self.whiten(x)) / np.sqrt(self.precision_diagonal()))


def factor_count(requested: int, n_measurements: int, n_rows: int) -> int:
    """Factors actually fitted: at most a third of the measurements and a quarter of the rows."""
    return max(1, min(requested, n_measurements // 3, n_rows // 4))


def fit_normal_model(x_clean: np.ndarray, factors: int) -> NormalModel:
    """Fit the factor model on clean rows ``x_clean`` (n, m) [layout units].

    Raises ``ValueError`` with fewer than 8 rows or non-finite values.
    """
    from sklearn.decomposition import FactorAnalysis

    x = np.asarray(x_clean, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 8:
        raise ValueError("the model of normal operation needs at least 8 clean rows")
    if not np.all(np.isfinite(x)):
        raise ValueError("clean rows must be finite")
    mean = x.mean(axis=0)
    scale = np.maximum(x.std(axis=0), MIN_SCALE)
    z = (x - mean) / scale
    k = factor_count(factors, x.shape[1], x.shape[0])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ConvergenceWarning: the fit is good enough for residuals
        fa = FactorAnalysis(n_components=k, random_state=0).fit(z)
    psi = np.maximum(np.asarray(fa.noise_variance_, dtype=np.float64), MIN_NOISE_VAR)
    noise_sd = np.sqrt(psi)
    b = np.asarray(fa.components_, dtype=np.float64).T / noise_sd[:, None]
    u, s, _ = np.linalg.svd(b, full_matrices=False)
    # a deterministic sign per column keeps stored bases identical across BLAS builds
    signs = np.sign(u[np.argmax(np.abs(u), axis=0), np.arange(u.shape[1])])
    u = u * np.where(signs == 0, 1.0, signs)[None, :]
    return NormalModel(
        mean=mean, scale=scale, noise_sd=noise_sd, basis=u, shrink=s**2 / (1.0 + s**2)
    )
