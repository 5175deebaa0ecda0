"""Detection metrics: pure functions of scores, labels and thresholds (no I/O, no clock).

Conventions: scores are "higher = more anomalous"; a row (or cell) is flagged when its
score is strictly above the threshold, the same rule :func:`detection.detector.
calibrate_threshold` calibrates for. ``y`` arrays are booleans, true = attacked.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def auc(scores: np.ndarray, y: np.ndarray) -> float | None:
    """Area under the ROC curve of ``scores`` for the labels ``y``; None if ``y`` has one class."""
    from sklearn.metrics import roc_auc_score

    y = np.asarray(y, dtype=bool)
    if y.all() or not y.any():
        return None
    return float(roc_auc_score(y, np.asarray(scores, dtype=np.float64)))


def recall(scores: np.ndarray, y: np.ndarray, threshold: float) -> float | None:
    """Share of attacked rows (``y``) flagged at ``threshold``; None without attacked rows."""
    y = np.asarray(y, dtype=bool)
    if not y.any():
        return None
    return float(np.mean(np.asarray(scores)[y] > threshold))


def false_positive_rate(scores: np.ndarray, y: np.ndarray, threshold: float) -> float | None:
    """Share of clean rows (not ``y``) flagged at ``threshold``; None without clean rows."""
    clean = ~np.asarray(y, dtype=bool)
    if not clean.any():
        return None
    return float(np.mean(np.asarray(scores)[clean] > threshold))


def recall_per_kind(
    scores: np.ndarray, kinds: np.ndarray, threshold: float, *, clean_kind: str = "none"
) -> dict[str, float]:
    """Recall per attack kind (row label), over the rows of each kind present."""
    kinds = np.asarray(kinds, dtype=object)
    flagged = np.asarray(scores) > threshold
    return {
        str(k): float(np.mean(flagged[kinds == k]))
        for k in sorted({str(x) for x in kinds})
        if k != clean_kind
    }


def calibrate_cell_thresholds(clean_cell_scores: np.ndarray, target_fpr: float) -> np.ndarray:
    """Per-measurement thresholds: the ``1 - target_fpr`` quantile of each column on clean rows.

    The cell-level analogue of :func:`detection.detector.calibrate_threshold` (conservative
    "higher" quantile), shape ``(n_measurements,)``.
    """
    if not 0 < target_fpr < 1:
        raise ValueError("target_fpr must be in (0, 1)")
    if clean_cell_scores.ndim != 2 or clean_cell_scores.shape[0] == 0:
        raise ValueError("need a non-empty (rows, measurements) array of clean cell scores")
    return np.asarray(
        np.quantile(clean_cell_scores, 1.0 - target_fpr, axis=0, method="higher"),
        dtype=np.float64,
    )


@dataclass(frozen=True, slots=True)
class Localization:
    """Micro-averaged precision, recall and F1 of flagged cells against labelled cells."""

    precision: float
    recall: float
    f1: float
    rows: int  # attacked rows the scores were counted over


def localization_f1(
    cell_scores: np.ndarray, cell_labels: np.ndarray, cell_thresholds: np.ndarray
) -> Localization | None:
    """Cell-level localization on attacked rows (rows with at least one labelled cell).

    A cell is flagged when its score exceeds its column's threshold. Counts true
    positives, false positives and false negatives over all those rows (micro average).
    None if no row has a labelled cell.
    """
    labels = np.asarray(cell_labels, dtype=bool)
    if cell_scores.shape != labels.shape:
        raise ValueError(f"cell scores {cell_scores.shape} and labels {labels.shape} differ")
    rows = labels.any(axis=1)
    if not rows.any():
        return None
    flagged = cell_scores[rows] > np.asarray(cell_thresholds)[None, :]
    truth = labels[rows]
    tp = int(np.sum(flagged & truth))
    fp = int(np.sum(flagged & ~truth))
    fn = int(np.sum(~flagged & truth))
    precision = tp / (tp + fp) if tp + fp else 0.0
    rec = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * rec / (precision + rec) if precision + rec else 0.0
    return Localization(precision, rec, f1, int(rows.sum()))


def episodes(kinds: np.ndarray, kind: str) -> list[tuple[int, int]]:
    """``[start, stop)`` row ranges of the contiguous runs of rows labelled ``kind``."""
    on = np.concatenate([[False], np.asarray(kinds, dtype=object) == kind, [False]])
    edges = np.flatnonzero(np.diff(on.astype(np.int8)))
    return [(int(a), int(b)) for a, b in zip(edges[::2], edges[1::2], strict=True)]


def detection_delays(flags: np.ndarray, kinds: np.ndarray, kind: str = "ramp") -> list[int | None]:
    """Per episode of ``kind``: steps from its first row to its first flagged row.

    0 = caught on the first attacked row; None = never flagged during the episode.
    One step is one row (15 minutes in Gridfort datasets).
    """
    flags = np.asarray(flags, dtype=bool)
    out: list[int | None] = []
    for start, stop in episodes(kinds, kind):
        hit = np.flatnonzero(flags[start:stop])
        out.append(int(hit[0]) if hit.size else None)
    return out


def throughput(n_rows: int, n_measurements: int, elapsed_s: float) -> tuple[float, float]:
    """(rows/s, measurements/s) of scoring ``n_rows`` rows of ``n_measurements`` each.

    ``elapsed_s`` [s] is the wall time of the scoring call (injected by the caller).
    """
    if elapsed_s <= 0:
        elapsed_s = 1e-9
    return n_rows / elapsed_s, n_rows * n_measurements / elapsed_s
