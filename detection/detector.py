"""The one interface every false-data-injection detector implements (baselines and deep).

Arrays are in the fixed measurement layout (``detection.layout``): ``X`` has one
row per 15-minute snapshot in time order and one column per measurement, in
``MeasurementLayout.columns`` order, in the units of the column name (p.u., MW,
Mvar). Scores are "higher = more anomalous". A detector that cannot localize
returns None from :meth:`Detector.score_cells`.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np

from detection.layout import MeasurementLayout


@runtime_checkable
class Detector(Protocol):
    #: short stable name used in scorecards and model files, e.g. "pca_q", "iforest", "gnn"
    name: str

    def fit(self, x_clean: np.ndarray, layout: MeasurementLayout) -> None:
        """Learn normal operation from clean rows (no attacks) of one grid."""
        ...

    def score_rows(self, x: np.ndarray) -> np.ndarray:
        """Anomaly score per row, shape (n_rows,)."""
        ...

    def score_cells(self, x: np.ndarray) -> np.ndarray | None:
        """Anomaly score per measurement, shape (n_rows, n_measurements), or None."""
        ...


def calibrate_threshold(clean_scores: np.ndarray, target_fpr: float) -> float:
    """The score threshold whose false-positive rate on clean validation rows is
    at most ``target_fpr`` (the (1 - fpr) empirical quantile, conservative)."""
    if not 0 < target_fpr < 1:
        raise ValueError("target_fpr must be in (0, 1)")
    if clean_scores.size == 0:
        raise ValueError("no clean validation scores to calibrate on")
    return float(np.quantile(clean_scores, 1.0 - target_fpr, method="higher"))
