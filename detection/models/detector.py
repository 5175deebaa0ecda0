"""Scoring, verdicts and adaptation of the deep detector; ``DeepDetector`` for the evaluator.

Scores: per measurement, the network's attack logit; per row, the largest cell logit.
Verdicts (:func:`verdicts`): a row is attacked when its score exceeds the calibrated
row threshold. In an attacked row, the falsified measurements are found by structured
localization (:mod:`detection.models.localize`: the row's residual explained by a few
buses of the AC state Jacobian and single measurements, replayed and DER-coordinated
rows recognized) when the row's conditional residuals are at hand (:func:`judge`,
:func:`judge_latest`, ``DeepDetector.verdicts``); from scores alone, a measurement is
judged falsified when its logit exceeds its cell threshold. The row's top cell is
always flagged, so the gate can quarantine just those measurements. A row that continues
a run of attacked rows is localized with the evidence of the run's earlier rows too
(:class:`~detection.models.localize.LocalizationMemory`: :func:`judge` keeps one over its
rows, the live gate one per stream, from :func:`localization_memory`).

Two ways to score:

* :func:`score` judges every row of a block of consecutive snapshots, each with the
  rows before it (within the block) as context; the batch path of ``detect score`` and
  the evaluator;
* :func:`score_latest` judges only the last snapshot of a context window (the live
  gate's path): it computes the residual history of the last ``config.temporal`` rows
  and the replay look-back of the last row only, so its cost does not grow with the
  window (``config.window`` rows: the current snapshot and three days before it).

Adaptation (:func:`adapt`, what ``--history`` and ``DeepDetector.fit`` do): the model of
normal operation is re-estimated from the operator's clean history, and the thresholds
are recalibrated on *out-of-sample* scores of that history (each of up to ten
contiguous folds, at least a day each, scored by a model fitted on the others), so
the promised false-positive rate is not an in-sample illusion. The learned weights
are not changed.

Inference runs in batches under ``torch.inference_mode`` on the CPU.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
from dataclasses import dataclass

import numpy as np
import torch

from detection.generate import STEPS_PER_DAY
from detection.layout import MeasurementLayout
from detection.models.artifacts import TrainedModel
from detection.models.localize import LocalizationMemory, localizer_for
from detection.models.network import GridDetectorNet, RowFeatures, layout_hash
from detection.models.normal import factor_count
from detection.models.sequential import (
    RAMP_FPR_SHARE,
    RampMonitor,
    fit_ramp_scale,
    ramp_scores,
)
from detection.thresholds import tail_threshold
from security.refusals import GridfortError

INFER_BATCH = 256
#: Rows whose features are computed at once by :func:`score` (bounds memory).
SCORE_BLOCK = 8192
#: Fewest clean history rows :func:`adapt` accepts (one week of 15-minute snapshots).
MIN_HISTORY_ROWS = 672
#: Contiguous folds of the history for out-of-sample calibration scores (at most).
ADAPT_FOLDS = 10
#: A column's cell threshold is at least its clean ``1 - CELL_FLOOR_FPR`` quantile.
CELL_FLOOR_FPR = 0.01
#: Candidate common cell levels when tuning localization (quantiles of attacked-row logits).
_LEVEL_QUANTILES = np.linspace(0.5, 0.999, 60)


class DetectorNotFittedError(GridfortError):
    """The detector was used before ``fit`` gave it a model for a layout."""


def _as_rows(model: TrainedModel, x: np.ndarray) -> np.ndarray:
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[1] != len(model.layout):
        raise ValueError(f"expected an (n, {len(model.layout)}) array, got shape {arr.shape}")
    return arr


def _eval_net(model: TrainedModel) -> GridDetectorNet:
    """The model's network in inference mode (switched only if needed: ``eval()`` walks
    every module, a noticeable share of one snapshot's latency)."""
    if model.net.training:
        model.net.eval()
    return model.net


def _logits(model: TrainedModel, feats: RowFeatures, first: int = 0) -> np.ndarray:
    """Cell logits of rows ``first..`` of the featurized rows (earlier rows: context)."""
    net = _eval_net(model)
    n, m = feats.r.shape
    t = net.config.temporal
    padded = torch.cat([torch.zeros(t - 1, m), feats.r], dim=0)
    offsets = torch.arange(t)[None, :]
    out = np.empty((n - first, m), dtype=np.float32)
    for s in range(first, n, INFER_BATCH):
        rows = torch.arange(s, min(n, s + INFER_BATCH))
        hist = padded[rows[:, None] + offsets]
        logits = net(hist, feats.z[rows], feats.replay[rows], feats.g[rows])
        out[s - first : s - first + len(rows)] = logits.numpy()
    return out


def score(model: TrainedModel, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Row scores (n,) and cell scores (n, m) of consecutive snapshots ``x`` (n, m).

    Row ``i`` is judged with rows ``i - window + 1 .. i`` of ``x`` as context; before
    the first row there is no context (no residual history, no replay look-back).
    """
    arr = _as_rows(model, x)
    n, m = arr.shape
    cells = np.empty((n, m), dtype=np.float64)
    context = model.config.window - 1
    with torch.inference_mode():
        # blocks bound the memory of long inputs; each brings its own context rows
        for s in range(0, n, SCORE_BLOCK):
            e = min(n, s + SCORE_BLOCK)
            a = max(0, s - context)
            cells[s:e] = _logits(model, model.net.row_features(arr[a:e]), first=s - a)
    rows = cells.max(axis=1) if n else np.empty(0)
    return rows, cells


def _latest(model: TrainedModel, window_x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cell logits (m,), conditional residuals (m,) and bit-exact repeats (m,) bool of the
    last snapshot of a window."""
    arr = np.asarray(window_x, dtype=np.float64)
    if arr.ndim == 1:
        arr = arr[None, :]
    arr = _as_rows(model, arr)
    if len(arr) == 0:
        raise ValueError("score_latest needs at least the snapshot to judge")
    net = _eval_net(model)
    cfg = net.config
    arr = arr[-cfg.window :]
    t = cfg.temporal
    with torch.inference_mode():
        r, z, g = net.residual_features(arr[-t:])
        hist = torch.zeros(1, t, arr.shape[1])
        hist[0, t - len(r) :] = r
        replay = net.replay_flags(arr, np.array([len(arr) - 1]))
        logits = net(hist, z[-1:], replay, g[-1:])[0].numpy().astype(np.float64)
    repeats = np.asarray(replay[0].numpy().any(axis=1), dtype=bool)
    return logits, r[-1].numpy().astype(np.float64), repeats


def score_latest(model: TrainedModel, window_x: np.ndarray) -> tuple[float, np.ndarray]:
    """Row score and cell scores (m,) of the last snapshot of ``window_x`` (k, m).

    ``window_x`` holds consecutive snapshots, oldest first, ending with the one to judge;
    up to ``model.config.window`` rows are used (fewer: less context, as at the start of
    :func:`score`). Equal to the last row of ``score(model, window_x)``, at the cost
    of a single snapshot.
    """
    logits, _, _ = _latest(model, window_x)
    return float(logits.max()), logits


def verdicts(
    model: TrainedModel,
    rows: np.ndarray,
    cells: np.ndarray,
    ramp_cells: np.ndarray | None = None,
    *,
    resid: np.ndarray | None = None,
    replay: np.ndarray | None = None,
    memory: LocalizationMemory | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Attacked rows (n,) and falsified cells (n, m) from scores, with the model's thresholds.

    With ``resid`` (n, m), the conditional residuals of the same rows (:func:`residuals`;
    only the attacked rows are read), an attacked row's cells come from structured
    localization (:mod:`detection.models.localize`), with ``replay`` (n, m) bool the
    bit-exact repeats of the replay look-back if known; without, from the cell
    thresholds. The rows are consecutive snapshots: a row that continues a run of rows
    the row test judged attacked is localized with the run's earlier rows (up to
    ``pool_rows``); ``memory`` (:func:`localization_memory`) holds the run of the rows
    before the first (None: none), and is left holding the run at the last row (emptied
    by a row the row test judges clean). With ``ramp_cells`` (n, m) (:func:`judge`,
    :func:`judge_latest`), a row is also attacked when its ramp score exceeds the ramp
    threshold, and the measurements above it are flagged (at least the row's top one);
    such a row, not localized, ends a run all the same.
    """
    attacked = rows > model.row_threshold
    top = np.argmax(cells, axis=1)
    if resid is None:
        flagged = attacked[:, None] & (cells > model.cell_thresholds[None, :])
        flagged[np.flatnonzero(attacked), top[attacked]] = True
    else:
        flagged = np.zeros(cells.shape, dtype=bool)
        hit = np.flatnonzero(attacked)
        run = LocalizationMemory() if memory is None else memory
        if len(hit):
            loc = localizer_for(model)
            prev = -1  # the memory continues into the first row only
            for i in hit:
                if i != prev + 1:
                    run.reset()  # a row judged clean ended the run
                rep = None if replay is None else replay[i]
                hot = cells[i] > model.cell_thresholds
                flagged[i] = loc.localize(resid[i], rep, int(top[i]), hot, run)
                prev = int(i)
        if len(attacked) and not attacked[-1]:
            run.reset()
    if ramp_cells is not None and model.ramp_scale is not None:
        ramp_hit = ramp_cells > model.ramp_threshold
        ramp_rows = ramp_hit.any(axis=1)
        flagged |= ramp_hit
        ramp_top = np.argmax(ramp_cells, axis=1)
        flagged[np.flatnonzero(ramp_rows), ramp_top[ramp_rows]] = True
        attacked = attacked | ramp_rows
    return attacked, flagged


def residuals(model: TrainedModel, x: np.ndarray, rows: np.ndarray | None = None) -> np.ndarray:
    """Conditional residuals (n, m) of rows ``x`` under the model of normal operation.

    ``rows``: compute only those rows (the others are zero); default every row.
    """
    arr = _as_rows(model, x)
    if rows is not None:
        idx = np.asarray(rows, dtype=np.int64)
        out = np.zeros(arr.shape, dtype=np.float64)
        if len(idx):
            out[idx] = residuals(model, arr[idx])
        return out
    out = np.empty(arr.shape, dtype=np.float64)
    with torch.inference_mode():
        for s in range(0, len(arr), SCORE_BLOCK):
            out[s : s + SCORE_BLOCK] = model.net.residual_features(arr[s : s + SCORE_BLOCK])[0]
    return out


def ramp_monitor(model: TrainedModel) -> RampMonitor | None:
    """A fresh ramp-stage state for one stream of snapshots (None: the model has no stage)."""
    return RampMonitor(model.ramp_scale) if model.ramp_scale is not None else None


def localization_memory(model: TrainedModel) -> LocalizationMemory:
    """A fresh localization state for one stream of snapshots (:func:`judge_latest`): the
    current run of attacked rows, pooled by structured localization."""
    del model  # one type for every model; tied to the localizer on first use
    return LocalizationMemory()


@dataclass(frozen=True, slots=True)
class Judgement:
    """Scores and verdicts of consecutive snapshots: ``rows`` (n,), ``cells`` (n, m) of the
    row test; ``ramp_cells`` (n, m) of the ramp stage (zeros without one); ``attacked``
    (n,) and ``flagged`` (n, m) of both stages together (:func:`verdicts`)."""

    rows: np.ndarray
    cells: np.ndarray
    ramp_cells: np.ndarray
    attacked: np.ndarray
    flagged: np.ndarray

    @property
    def ramp_rows(self) -> np.ndarray:
        return np.asarray(self.ramp_cells.max(axis=1)) if self.ramp_cells.size else np.zeros(0)


def replay_repeats(model: TrainedModel, x: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """(n, m) bool: at ``rows`` of consecutive snapshots ``x``, the measurements that repeat,
    bit for bit, their value of one to ``replay_days`` days earlier (the replay look-back
    of the network's input; the rest is False)."""
    arr = _as_rows(model, x)
    out = np.zeros(arr.shape, dtype=bool)
    idx = np.asarray(rows, dtype=np.int64)
    if len(idx):
        out[idx] = model.net.replay_flags(arr, idx).numpy().any(axis=2)
    return out


def judge(model: TrainedModel, x: np.ndarray) -> Judgement:
    """Both stages on consecutive snapshots ``x`` (n, m), in order (the batch path of
    ``detect score``); row ``i`` is judged as :func:`judge_latest` would judge it with a
    monitor and a localization memory that saw rows ``0..i-1``. Attacked rows are
    localized (:mod:`detection.models.localize`), a run of them with its earlier rows."""
    rows, cells = score(model, x)
    hit = np.flatnonzero(rows > model.row_threshold)
    if model.ramp_scale is None:
        ramp = np.zeros_like(cells)
        resid = residuals(model, x, rows=hit)
        rep = replay_repeats(model, x, hit)
        attacked, flagged = verdicts(model, rows, cells, resid=resid, replay=rep)
    else:
        resid = residuals(model, x)
        ramp = ramp_scores(
            model.ramp_scale, resid, rows > model.row_threshold, model.ramp_threshold
        )
        rep = replay_repeats(model, x, hit)
        attacked, flagged = verdicts(model, rows, cells, ramp, resid=resid, replay=rep)
    return Judgement(rows, cells, ramp, attacked, flagged)


@dataclass(frozen=True, slots=True)
class LatestJudgement:
    """One snapshot's scores and verdicts (see :func:`judge_latest`)."""

    row_score: float
    cells: np.ndarray  # (m,) cell logits of the row test
    ramp_score: float  # largest ramp score (0 without a ramp stage)
    ramp_cells: np.ndarray  # (m,)
    attacked: bool
    flagged: np.ndarray  # (m,) bool


def judge_latest(
    model: TrainedModel,
    window_x: np.ndarray,
    monitor: RampMonitor | None,
    memory: LocalizationMemory | None = None,
) -> LatestJudgement:
    """Both stages on the last snapshot of ``window_x`` (as :func:`score_latest`).

    ``monitor`` (from :func:`ramp_monitor`, one per stream, kept by the caller between
    snapshots) is advanced by this snapshot and emptied when it is judged attacked;
    None: the row test only. An attacked snapshot is localized like a row of
    :func:`judge` (:mod:`detection.models.localize`): ``memory`` (from
    :func:`localization_memory`, one per stream, kept by the caller) holds the run of
    attacked snapshots this one continues, and is advanced by it (emptied when the row
    test judges it clean); None: the snapshot is localized on its own.
    """
    logits, r, rep = _latest(model, window_x)
    ramp = monitor.push(r) if monitor is not None else np.zeros_like(logits)
    attacked, flagged = verdicts(
        model,
        np.array([logits.max()]),
        logits[None, :],
        ramp[None, :] if monitor is not None else None,
        resid=r[None, :],
        replay=rep[None, :],
        memory=memory,
    )
    if attacked[0] and monitor is not None:
        monitor.reset()
    return LatestJudgement(
        float(logits.max()), logits, float(ramp.max()), ramp, bool(attacked[0]), flagged[0]
    )


def cell_f1(flagged: np.ndarray, labels: np.ndarray) -> float:
    """Micro F1 of flagged cells against the true falsified cells."""
    tp = float(np.sum(flagged & labels))
    denom = float(np.sum(flagged) + np.sum(labels))
    return 2.0 * tp / denom if denom else 1.0


def set_thresholds(
    model: TrainedModel,
    clean_rows: np.ndarray,
    clean_cells: np.ndarray,
    target_fpr: float,
    clean_residuals: list[np.ndarray] | None = None,
) -> None:
    """Row threshold from clean row scores (tail-extrapolated, :mod:`thresholds`); cell
    thresholds: each column's clean ``1 - CELL_FLOOR_FPR`` quantile, at least the model's
    ``cell_level``. Scores must be out of sample for the model of normal operation.

    ``clean_residuals``: the conditional residuals of the same clean rows, as streams of
    consecutive rows in the order of ``clean_rows``; with them the ramp stage is
    calibrated too (its scale and threshold) and the target is split between the two
    stages (:data:`RAMP_FPR_SHARE` to the ramp stage).
    """
    model.target_fpr = target_fpr
    floor = np.quantile(clean_cells, 1.0 - CELL_FLOOR_FPR, axis=0, method="higher")
    model.cell_thresholds = np.maximum(floor, model.cell_level)
    if not clean_residuals:
        model.row_threshold = tail_threshold(clean_rows, target_fpr)
        return
    model.row_threshold = tail_threshold(clean_rows, (1.0 - RAMP_FPR_SHARE) * target_fpr)
    model.ramp_scale = fit_ramp_scale(clean_residuals)
    stats, start = [], 0
    for r in clean_residuals:
        hit = clean_rows[start : start + len(r)] > model.row_threshold
        stats.append(ramp_scores(model.ramp_scale, r, hit).max(axis=1))
        start += len(r)
    model.ramp_threshold = tail_threshold(np.concatenate(stats), RAMP_FPR_SHARE * target_fpr)


def tune_cell_level(
    model: TrainedModel,
    clean_cells: np.ndarray,
    rows: np.ndarray,
    cells: np.ndarray,
    labels: np.ndarray,
) -> float:
    """Set ``cell_level`` to the common cell threshold that maximizes cell F1 on attacked
    validation rows (``rows``, ``cells`` scores, ``labels`` falsified cells); returns the F1."""
    floor = np.quantile(clean_cells, 1.0 - CELL_FLOOR_FPR, axis=0, method="higher")
    hit = rows > model.row_threshold
    if not hit.any() or not labels[hit].any():
        return 0.0
    best_level, best_f1 = model.cell_level, -1.0
    for level in np.quantile(cells[hit], _LEVEL_QUANTILES):
        model.cell_thresholds = np.maximum(floor, level)
        _, flagged = verdicts(model, rows, cells)
        f1 = cell_f1(flagged, labels)
        if f1 > best_f1:
            best_level, best_f1 = float(level), f1
    model.cell_level = best_level
    model.cell_thresholds = np.maximum(floor, best_level)
    return best_f1


def adapt_folds(n_rows: int) -> int:
    """Folds for :func:`out_of_sample_scores`: :data:`ADAPT_FOLDS`, but no fold shorter
    than a day (a shorter fold sits between training rows of nearly the same load
    state, so its scores are not out of sample in time), and at least two."""
    return max(2, min(ADAPT_FOLDS, n_rows // STEPS_PER_DAY))


def adapt_factors(model: TrainedModel, n_rows: int, folds: int) -> int:
    """Factors of every fit of one adaptation: what the smallest fold fit supports, so
    the calibration folds and the final model are the same kind of model."""
    smallest = n_rows - -(-n_rows // folds)
    return factor_count(model.config.factors, len(model.layout), smallest)


def out_of_sample_scores(
    model: TrainedModel, x_clean: np.ndarray, folds: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Scores of clean rows, each contiguous fold judged by a model of normal operation
    fitted on the other folds (the learned weights are shared)."""
    rows, cells, _ = out_of_sample_evidence(model, x_clean, folds)
    return rows, cells


def out_of_sample_evidence(
    model: TrainedModel, x_clean: np.ndarray, folds: int | None = None
) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """:func:`out_of_sample_scores` plus each fold's conditional residuals (a stream of
    consecutive rows per fold, for the ramp stage)."""
    n = len(x_clean)
    folds = folds if folds is not None else adapt_folds(n)
    bounds = np.linspace(0, n, folds + 1).astype(np.int64)
    k = adapt_factors(model, n, folds)
    rows, cells, resid = [], [], []
    for a, b in itertools.pairwise(bounds):
        trial = copy.deepcopy(model)
        trial.net.fit_normal(np.concatenate([x_clean[:a], x_clean[b:]]), k)
        trial.net.fit_replay_mask(x_clean)
        r, c = score(trial, x_clean[a:b])
        rows.append(r)
        cells.append(c)
        resid.append(residuals(trial, x_clean[a:b]))
    return np.concatenate(rows), np.concatenate(cells), resid


def adapt(
    model: TrainedModel,
    x_history: np.ndarray,
    target_fpr: float | None = None,
    *,
    ramp_stage: bool | None = None,
) -> TrainedModel:
    """A copy of ``model`` adapted to an operator's clean history ``x_history`` (n, m).

    Re-estimates the model of normal operation on the history and recalibrates the
    thresholds at ``target_fpr`` (default: the model's) on out-of-sample scores of it.
    ``ramp_stage``: calibrate the ramp stage (:mod:`detection.models.sequential`) too,
    splitting the target between the two stages; default: if the model ships one. The
    caller's model is never changed. Raises ``ValueError`` when the history is too
    short or not in the model's layout.
    """
    x = _as_rows(model, x_history)
    if len(x) < MIN_HISTORY_ROWS:
        raise ValueError(
            f"history has {len(x)} rows; at least {MIN_HISTORY_ROWS} clean snapshots are needed"
        )
    if not np.all(np.isfinite(x)):
        raise ValueError("history must hold finite values only")
    fpr = target_fpr if target_fpr is not None else model.target_fpr
    adapted = copy.deepcopy(model)
    folds = adapt_folds(len(x))
    with torch.inference_mode():
        clean_rows, clean_cells, clean_r = out_of_sample_evidence(adapted, x, folds)
    adapted.net.fit_normal(x, adapt_factors(model, len(x), folds))
    adapted.net.fit_replay_mask(x)
    # by default the ramp stage is calibrated only for a model that ships one (a model
    # trained before it keeps the row test alone, at the whole target)
    with_ramp = model.ramp_scale is not None if ramp_stage is None else ramp_stage
    ramp = clean_r if with_ramp else None
    if not with_ramp:
        adapted.ramp_scale, adapted.ramp_threshold = None, float("inf")
    set_thresholds(adapted, clean_rows, clean_cells, fpr, ramp)
    adapted.metadata = {**model.metadata, "adapted": {"history_rows": len(x), "target_fpr": fpr}}
    return adapted


@dataclass(slots=True)
class _Cache:
    key: bytes
    rows: np.ndarray
    cells: np.ndarray


class DeepDetector:
    """The deep detector behind the ``Detector`` protocol (see the module docstring).

    ``model``: a loaded, verified model; without one, ``fit`` loads the shipped model
    of the layout (``detection.models.registry``). ``recalibrate``: ``fit`` adapts the
    model to the clean rows it is given (:func:`adapt`, at ``target_fpr``, default the
    model's own); otherwise ``fit`` only picks the model. ``ramp_stage``: passed to
    :func:`adapt` (default: the ramp stage if the model ships one).
    """

    name = "gnn"

    def __init__(
        self,
        model: TrainedModel | None = None,
        *,
        recalibrate: bool = True,
        target_fpr: float | None = None,
        ramp_stage: bool | None = None,
    ) -> None:
        self.model = model
        self.recalibrate = recalibrate
        self.target_fpr = target_fpr
        self.ramp_stage = ramp_stage
        self._cache: _Cache | None = None

    def fit(self, x_clean: np.ndarray, layout: MeasurementLayout) -> None:
        if self.model is None or layout_hash(self.model.layout) != layout_hash(layout):
            from detection.models.registry import shipped_model_for_layout

            self.model = shipped_model_for_layout(layout)
        self._cache = None
        if self.recalibrate:
            self.model = adapt(
                self.model,
                np.asarray(x_clean, dtype=np.float64),
                self.target_fpr,
                ramp_stage=self.ramp_stage,
            )

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
        """Attacked rows (n,) and falsified measurements (n, m) of both stages (row test and
        ramp stage, :func:`judge`), as the gate needs them."""
        rows, cells = self._scores(x)
        if self.model is None:
            raise DetectorNotFittedError("DeepDetector.fit must be called before scoring")
        arr = np.asarray(x, dtype=np.float64)
        hit = np.flatnonzero(rows > self.model.row_threshold)
        rep = replay_repeats(self.model, arr, hit)
        if self.model.ramp_scale is None:
            resid = residuals(self.model, arr, rows=hit)
            return verdicts(self.model, rows, cells, resid=resid, replay=rep)
        resid = residuals(self.model, arr)
        ramp = ramp_scores(
            self.model.ramp_scale, resid, rows > self.model.row_threshold, self.model.ramp_threshold
        )
        return verdicts(self.model, rows, cells, ramp, resid=resid, replay=rep)
