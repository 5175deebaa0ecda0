"""pyod outlier detectors wrapped as :class:`detection.detector.Detector`.

Every detector sees rows standardized with the mean and standard deviation of the
clean training rows (so that voltages in p.u. and powers in MW weigh alike) and is
fitted on clean rows only. Row scores are pyod's ``decision_function`` (higher = more
anomalous).

* ``iforest``: isolation forest (``pyod.models.iforest.IForest``), row scores only;
* ``knn``: distance to the k-th nearest clean training row (``pyod.models.knn.KNN``),
  row scores only;
* ``ecod`` and ``copod``: empirical-CDF tail probabilities per dimension
  (``pyod.models.ecod.ECOD``, ``pyod.models.copod.COPOD``). The row score is the sum
  over dimensions of ``-log(tail probability)``; those per-dimension terms (pyod's
  ``O`` matrix) are the cell scores, so these two localize.

pyod's ECOD and COPOD recompute their empirical CDFs over the training rows *and* the
rows being scored on every call. To keep a row's score close to "tail probability
under clean training data", rows are scored in chunks of at most
:data:`ECDF_CHUNK_SHARE` of the training size.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from detection.baselines.score_cache import ScoreCache, fingerprint
from detection.layout import MeasurementLayout

MIN_STD = 1e-9
#: ECOD/COPOD: largest scored chunk, as a share of the number of training rows.
ECDF_CHUNK_SHARE = 0.1


class PyodDetector:
    """One pyod model behind the Detector protocol (standardized input, clean-only fit)."""

    def __init__(self, name: str, factory: Callable[[], Any], *, per_dimension: bool = False):
        self.name = name
        self._factory = factory
        self._per_dimension = per_dimension
        self._model: Any = None
        self._mean = np.empty(0)
        self._std = np.empty(0)
        self._n_train = 0
        self._cache = ScoreCache()

    def fit(self, x_clean: np.ndarray, layout: MeasurementLayout) -> None:
        x = np.asarray(x_clean, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != len(layout):
            raise ValueError(f"x has shape {x.shape}, the layout {len(layout)} measurements")
        if x.shape[0] < 10:
            raise ValueError(f"{self.name} needs at least 10 clean rows, got {x.shape[0]}")
        self._mean = x.mean(axis=0)
        self._std = np.maximum(x.std(axis=0), MIN_STD)
        self._model = self._factory()
        self._model.fit(self._standardize(x))
        self._n_train = x.shape[0]
        self._cache.clear()

    def _standardize(self, x: np.ndarray) -> np.ndarray:
        return (np.asarray(x, dtype=np.float64) - self._mean) / self._std

    def _check_fitted(self) -> None:
        if self._model is None:
            raise RuntimeError(f"{self.name}: fit() first")

    def _chunks(self, n: int) -> list[slice]:
        size = max(1, int(self._n_train * ECDF_CHUNK_SHARE)) if self._per_dimension else n
        size = max(size, 1)
        return [slice(s, min(s + size, n)) for s in range(0, n, size)]

    def _scores(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        if not self._per_dimension:
            return self._compute(x)
        # score_rows then score_cells on the same rows computes once
        key = fingerprint(x)
        cached = self._cache.get(key)
        if cached is not None:
            return cached
        out = self._compute(x)
        self._cache.put(key, out)
        return out

    def _compute(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        self._check_fitted()
        z = self._standardize(x)
        if z.shape[0] == 0:
            return np.empty(0), (np.empty((0, z.shape[1])) if self._per_dimension else None)
        rows, cells = [], []
        for part in self._chunks(z.shape[0]):
            rows.append(np.asarray(self._model.decision_function(z[part]), dtype=np.float64))
            if self._per_dimension:
                n = part.stop - part.start
                cells.append(np.asarray(self._model.O, dtype=np.float64)[-n:])
        return np.concatenate(rows), (np.vstack(cells) if cells else None)

    def score_rows(self, x: np.ndarray) -> np.ndarray:
        return self._scores(x)[0]

    def score_cells(self, x: np.ndarray) -> np.ndarray | None:
        if not self._per_dimension:
            return None
        return self._scores(x)[1]


def iforest(seed: int = 0) -> PyodDetector:
    from pyod.models.iforest import IForest

    return PyodDetector("iforest", lambda: IForest(n_estimators=100, random_state=seed))


def knn(n_neighbors: int = 5) -> PyodDetector:
    from pyod.models.knn import KNN

    return PyodDetector("knn", lambda: KNN(n_neighbors=n_neighbors, method="largest"))


def ecod() -> PyodDetector:
    from pyod.models.ecod import ECOD

    return PyodDetector("ecod", ECOD, per_dimension=True)


def copod() -> PyodDetector:
    from pyod.models.copod import COPOD

    return PyodDetector("copod", COPOD, per_dimension=True)


def pyod_detectors(seed: int = 0) -> list[PyodDetector]:
    """The pyod baselines of the scorecard: IForest, KNN, ECOD, COPOD."""
    return [iforest(seed), knn(), ecod(), copod()]
