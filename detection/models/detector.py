"""``DeepDetector``: the graph network behind the :class:`detection.detector.Detector` protocol.

Scores: per measurement, the network's attack logit; per row, the largest cell logit.
Verdicts (:meth:`DeepDetector.verdicts`): a row is attacked when its score exceeds the
calibrated row threshold; in an attacked row, a measurement is judged falsified when
its logit exceeds its cell threshold (at least the row's top cell is always flagged),
so the gate can quarantine just those measurements.

``fit(x_clean, layout)`` does not retrain: it takes the signed model of that layout
(the given one, or the shipped one) and recalibrates its thresholds on the operator's
clean history, whose load patterns and noise may differ from the training data.
Inference runs in batches under ``torch.inference_mode`` on the CPU.
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass

import numpy as np
import torch

from detection.detector import calibrate_threshold
from detection.layout import MeasurementLayout
from detection.models.artifacts import TrainedModel
from detection.models.network import layout_hash
from security.refusals import GridfortError

INFER_BATCH = 1024
#: Candidate cell thresholds tried when tuning localization (quantiles of attacked-row logits).
_TAU_QUANTILES = np.linspace(0.5, 0.999, 60)


class DetectorNotFittedError(GridfortError):
    """The detector was used before ``fit`` gave it a model for a layout."""


def score(model: TrainedModel, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Row scores (n,) and cell scores (n, m) of consecutive snapshots ``x`` (n, m).

    Row ``i`` is judged with rows ``i - window + 1 .. i`` as context (row 0 repeated
    before the start).
    """
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 2 or x.shape[1] != len(model.layout):
        raise ValueError(f"expected an (n, {len(model.layout)}) array, got shape {x.shape}")
    w = model.config.window
    n = len(x)
    xp = np.concatenate([np.repeat(x[:1], w - 1, axis=0), x], axis=0)
    offsets = np.arange(w)[None, :]
    cells = np.empty((n, x.shape[1]), dtype=np.float32)
    net = model.net.eval()
    with torch.inference_mode():
        for s in range(0, n, INFER_BATCH):
            idx = np.arange(s, min(n, s + INFER_BATCH))[:, None] + offsets
            _, logits = net(torch.from_numpy(xp[idx]))
            cells[s : s + len(idx)] = logits.numpy()
    rows = cells.max(axis=1) if n else np.empty(0, dtype=np.float32)
    return rows.astype(np.float64), cells.astype(np.float64)


def verdicts(
    model: TrainedModel, rows: np.ndarray, cells: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Attacked rows (n,) and falsified cells (n, m) from scores, with the model's thresholds."""
    attacked = rows > model.row_threshold
    flagged = attacked[:, None] & (cells > model.cell_thresholds[None, :])
    top = np.argmax(cells, axis=1)
    flagged[np.flatnonzero(attacked), top[attacked]] = True
    return attacked, flagged


def calibrate(
    model: TrainedModel,
    x_clean: np.ndarray,
    target_fpr: float,
    attacked: tuple[np.ndarray, np.ndarray] | None = None,
) -> None:
    """Set the model's thresholds from clean rows (and tune localization on ``attacked``).

    Row threshold: the ``1 - target_fpr`` quantile of clean row scores. Cell thresholds:
    each column's ``1 - target_fpr`` clean quantile, raised to a common level: the one
    that maximizes cell F1 on ``attacked = (x, cell_labels)`` when given, else the
    model's current ``cell_level`` (so recalibrating on clean history keeps it).
    """
    rows, cells = score(model, x_clean)
    model.row_threshold = calibrate_threshold(rows, target_fpr)
    model.target_fpr = target_fpr
    clean_q = np.quantile(cells, 1.0 - target_fpr, axis=0, method="higher")
    model.cell_thresholds = np.maximum(clean_q, model.cell_level)
    if attacked is None:
        return
    xa, labels = attacked
    a_rows, a_cells = score(model, xa)
    hit = a_rows > model.row_threshold
    if not hit.any() or not labels[hit].any():
        return
    best_tau, best_f1 = model.cell_level, -1.0
    for tau in np.quantile(a_cells[hit], _TAU_QUANTILES):
        model.cell_thresholds = np.maximum(clean_q, tau)
        _, flagged = verdicts(model, a_rows, a_cells)
        f1 = cell_f1(flagged, labels)
        if f1 > best_f1:
            best_tau, best_f1 = float(tau), f1
    model.cell_level = float(best_tau)
    model.cell_thresholds = np.maximum(clean_q, best_tau)


def cell_f1(flagged: np.ndarray, labels: np.ndarray) -> float:
    """Micro F1 of flagged cells against the true falsified cells."""
    tp = float(np.sum(flagged & labels))
    denom = float(np.sum(flagged) + np.sum(labels))
    return 2.0 * tp / denom if denom else 1.0


@dataclass(slots=True)
class _Cache:
    key: bytes
    rows: np.ndarray
    cells: np.ndarray


class DeepDetector:
    """The deep detector behind the ``Detector`` protocol (see the module docstring).

    ``model``: a loaded, verified model; without one, ``fit`` loads the shipped model
    of the layout (``detection.models.registry``). ``recalibrate``: re-derive the
    thresholds from the clean rows given to ``fit`` (at ``target_fpr``, default the
    model's own).
    """

    name = "gnn"

    def __init__(
        self,
        model: TrainedModel | None = None,
        *,
        recalibrate: bool = True,
        target_fpr: float | None = None,
    ) -> None:
        self.model = model
        self.recalibrate = recalibrate
        self.target_fpr = target_fpr
        self._cache: _Cache | None = None

    def fit(self, x_clean: np.ndarray, layout: MeasurementLayout) -> None:
        if self.model is None or layout_hash(self.model.layout) != layout_hash(layout):
            from detection.models.registry import shipped_model_for_layout

            self.model = shipped_model_for_layout(layout)
        self._cache = None
        if self.recalibrate:
            self.model = dataclasses.replace(self.model)  # never re-threshold the caller's copy
            fpr = self.target_fpr if self.target_fpr is not None else self.model.target_fpr
            calibrate(self.model, np.asarray(x_clean, dtype=np.float64), fpr)

    def _scores(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self.model is None:
            raise DetectorNotFittedError("DeepDetector.fit must be called before scoring")
        arr = np.ascontiguousarray(x, dtype=np.float64)
        key = hashlib.blake2b(arr.tobytes(), digest_size=16).digest() + repr(arr.shape).encode()
        if self._cache is None or self._cache.key != key:
            rows, cells = score(self.model, arr)
            self._cache = _Cache(key, rows, cells)
        return self._cache.rows, self._cache.cells

    def score_rows(self, x: np.ndarray) -> np.ndarray:
        return self._scores(x)[0].copy()

    def score_cells(self, x: np.ndarray) -> np.ndarray | None:
        return self._scores(x)[1].copy()

    def verdicts(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Attacked rows (n,) and falsified measurements (n, m), as the gate needs them."""
        rows, cells = self._scores(x)
        assert self.model is not None
        return verdicts(self.model, rows, cells)
