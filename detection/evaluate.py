"""Side-by-side evaluation of detectors on one labelled dataset: the scorecard.

Protocol (no leakage, time order kept): the rows are split in time order into
training, validation and test segments (default 50 / 20 / 30 %). Each detector is
fitted on the *clean* training rows, its row threshold (and per-measurement cell
thresholds) are calibrated to ``target_fpr`` on the clean validation rows, and it scores
the whole test segment, attacks included, as one contiguous block in time order (so a
detector with temporal context sees the rows before each one). The row threshold is
:func:`detection.thresholds.tail_threshold` of the clean validation scores (the
empirical quantile, raised where an exponential fit of the tail says the target rate
needs more: at 0.1 % and a thousand validation rows the empirical quantile alone is
the second-largest score, whose false-positive rate is about 0.2 %), the same rule for
every detector.

Rows attacked only through the price signal (kind ``price``) carry no falsified
measurement: the price is not in the measurement layout, which is all a grid detector
sees. They are left out of AUC, recall and FPR and reported only in the per-kind
recall, so a reader sees that the grid detectors are blind to them.

A detector with a ``max_rows`` attribute (WLS: seconds per hundred rows) is scored on
a deterministic subsample of at most that many validation rows and that many test
rows (half attacked, half clean where possible); its scorecard says so, and its ramp
delay is not computed (the subsample breaks the episodes).
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from detection import metrics
from detection.dataset import ATTACK_COLUMN, NO_ATTACK, Dataset
from detection.detector import Detector
from detection.layout import MeasurementLayout
from detection.scenarios import Scenario
from detection.thresholds import tail_threshold
from security.refusals import GridfortError

PRICE_KIND = "price"
#: Names of :func:`baseline_detectors` (WLS only when the noise model is known).
BASELINE_NAMES: tuple[str, ...] = ("pca_q", "iforest", "knn", "ecod", "copod", "wls_chi2")
DEFAULT_TARGET_FPR = 0.01
Clock = Callable[[], float]
Progress = Callable[[str], None]


@dataclass(frozen=True, slots=True)
class EvaluationData:
    """Rows of one grid in layout order with their labels.

    ``x`` (n_rows, n_measurements) [layout units]; ``kinds`` the attack kind per row
    (``"none"`` = clean); ``cell_labels`` true where a measurement was falsified;
    ``price_eur_per_mwh`` (n_rows,) the price signal as received (attacked where the
    kind is ``price``), None when the data has none; ``injected`` (n_rows,
    n_measurements) what the attacks changed (attacked minus clean) [layout units], known
    for generated data only (for :func:`detection.bounds.recall_bound`).
    """

    grid: str
    layout: MeasurementLayout
    x: np.ndarray
    kinds: np.ndarray
    cell_labels: np.ndarray
    price_eur_per_mwh: np.ndarray | None = None
    injected: np.ndarray | None = None

    def __post_init__(self) -> None:
        n, m = self.x.shape
        if m != len(self.layout):
            raise ValueError(f"x has {m} columns, the layout {len(self.layout)}")
        if self.kinds.shape != (n,) or self.cell_labels.shape != (n, m):
            raise ValueError("kinds and cell_labels must be row-aligned with x")
        if self.price_eur_per_mwh is not None and self.price_eur_per_mwh.shape != (n,):
            raise ValueError("the price must be row-aligned with x")
        if self.injected is not None and self.injected.shape != (n, m):
            raise ValueError("injected must have the shape of x")


def evaluation_data(dataset: Dataset, grid: str, layout: MeasurementLayout) -> EvaluationData:
    """The layout columns of a labelled dataset, and its price column if it has one."""
    from detection.generate import PRICE_COLUMN

    if dataset.labels is None:
        raise ValueError("evaluation needs the labels file next to the data")
    cols = layout.columns
    price = (
        dataset.data[PRICE_COLUMN].to_numpy(dtype=np.float64)
        if PRICE_COLUMN in dataset.data.columns
        else None
    )
    return EvaluationData(
        grid=grid,
        layout=layout,
        x=dataset.data[cols].to_numpy(dtype=np.float64),
        kinds=dataset.labels[ATTACK_COLUMN].astype(str).to_numpy(dtype=object),
        cell_labels=dataset.labels[cols].to_numpy(dtype=bool),
        price_eur_per_mwh=price,
    )


@dataclass(frozen=True, slots=True)
class Split:
    """Row ranges ``[start, stop)`` of the training, validation and test segments."""

    train: slice
    validation: slice
    test: slice


def time_split(n_rows: int, train_share: float = 0.5, validation_share: float = 0.2) -> Split:
    """Consecutive training, validation and test segments, in time order."""
    if min(train_share, validation_share) <= 0 or train_share + validation_share >= 1:
        raise ValueError("shares must be positive and leave rows for the test segment")
    a = int(n_rows * train_share)
    b = int(n_rows * (train_share + validation_share))
    if a < 1 or b <= a or b >= n_rows:
        raise ValueError(f"{n_rows} rows are too few to split into train/validation/test")
    return Split(slice(0, a), slice(a, b), slice(b, n_rows))


@dataclass(frozen=True, slots=True)
class Scorecard:
    """One detector's results on the test segment (None = not defined for this data).

    Rates are shares in [0, 1]; delays in steps (rows, 15 min each); throughput of
    ``score_rows`` in rows/s and measurements/s; times in seconds.
    """

    detector: str
    grid: str
    target_fpr: float
    threshold: float
    test_rows: int
    attacked_rows: int
    clean_rows: int
    subsampled: bool
    auc: float | None
    recall: float | None
    false_positive_rate: float | None
    recall_per_kind: dict[str, float]
    localizes: bool
    localization_precision: float | None
    localization_recall: float | None
    localization_f1: float | None
    ramp_episodes: int
    ramps_detected: int
    ramp_delay_mean_steps: float | None
    ramp_delay_median_steps: float | None
    rows_per_s: float
    measurements_per_s: float
    fit_s: float
    notes: list[str] = field(default_factory=list)
    #: thresholds of each stage of a combined view (e.g. ``{"row": .., "ramp": ..}``)
    stage_thresholds: dict[str, float] | None = None
    #: at the detector's own calibration (its ``verdicts``: what the gate and ``detect
    #: score --history --no-physics`` use), for detectors that have one; None otherwise
    own_threshold: float | None = None
    own_recall: float | None = None
    own_false_positive_rate: float | None = None
    own_recall_per_kind: dict[str, float] | None = None
    own_localization_f1: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _subsample(
    rows: np.ndarray, attacked: np.ndarray, budget: int, rng: np.random.Generator
) -> np.ndarray:
    """At most ``budget`` of ``rows`` (half attacked, half clean where possible), sorted."""
    if len(rows) <= budget:
        return rows
    att, cln = rows[attacked[rows]], rows[~attacked[rows]]
    n_att = min(len(att), budget // 2)
    n_cln = min(len(cln), budget - n_att)
    n_att = min(len(att), budget - n_cln)
    pick = np.concatenate(
        [rng.choice(att, n_att, replace=False), rng.choice(cln, n_cln, replace=False)]
    )
    return np.sort(pick)


def _timed(fn: Callable[[], Any], clock: Clock) -> tuple[Any, float]:
    started = clock()
    out = fn()
    return out, clock() - started


def _finite(x: float | None) -> float | None:
    return x if x is not None and math.isfinite(x) else None


def evaluate_detector(
    detector: Detector,
    data: EvaluationData,
    split: Split,
    *,
    target_fpr: float = DEFAULT_TARGET_FPR,
    clock: Clock = time.perf_counter,
    seed: int = 0,
) -> Scorecard:
    """Fit, calibrate and score one detector (see the module docstring)."""
    n = data.x.shape[0]
    idx = np.arange(n)
    clean = data.kinds == NO_ATTACK
    measured_attack = (~clean) & (data.kinds != PRICE_KIND)
    train = idx[split.train][clean[split.train]]
    val = idx[split.validation][clean[split.validation]]
    test = idx[split.test]
    notes: list[str] = []
    budget = getattr(detector, "max_rows", None)
    rng = np.random.default_rng(seed)
    if isinstance(budget, int) and budget > 0 and (len(val) > budget or len(test) > budget):
        val = _subsample(val, measured_attack, budget, rng)
        test = _subsample(test, measured_attack, budget, rng)
        notes.append(
            f"slow detector: scored a subsample of {len(val)} validation and "
            f"{len(test)} test rows (half attacked); ramp delay not computed"
        )
    subsampled = bool(notes)
    if len(train) == 0 or len(val) == 0:
        raise ValueError("no clean training or validation rows to fit and calibrate on")

    _, fit_s = _timed(lambda: detector.fit(data.x[train], data.layout), clock)
    val_rows = np.asarray(detector.score_rows(data.x[val]), dtype=np.float64)
    threshold = tail_threshold(val_rows, target_fpr)
    val_cells = detector.score_cells(data.x[val])
    rows, elapsed = _timed(lambda: detector.score_rows(data.x[test]), clock)
    rows = np.asarray(rows, dtype=np.float64)
    cells = detector.score_cells(data.x[test])
    rows_per_s, meas_per_s = metrics.throughput(len(test), data.x.shape[1], elapsed)

    kinds = data.kinds[test]
    y = measured_attack[test]
    scored = kinds != PRICE_KIND  # clean + measurement attacks
    loc = None
    if val_cells is not None and cells is not None:
        cell_thr = metrics.calibrate_cell_thresholds(np.asarray(val_cells), target_fpr)
        loc = metrics.localization_f1(np.asarray(cells), data.cell_labels[test], cell_thr)
    delays: list[int | None] = []
    if not subsampled:
        delays = metrics.detection_delays(rows > threshold, kinds, "ramp")
    caught = [d for d in delays if d is not None]
    if PRICE_KIND in set(kinds):
        notes.append("price attacks change no measurement in the layout: not in AUC/recall/FPR")
    own = _own_calibration(detector, data.x[test], y, scored, kinds, data.cell_labels[test])
    return Scorecard(
        detector=detector.name,
        grid=data.grid,
        target_fpr=target_fpr,
        threshold=threshold,
        test_rows=len(test),
        attacked_rows=int(y.sum()),
        clean_rows=int((kinds == NO_ATTACK).sum()),
        subsampled=subsampled,
        auc=_finite(metrics.auc(rows[scored], y[scored])),
        recall=metrics.recall(rows, y, threshold),
        false_positive_rate=metrics.false_positive_rate(rows[scored], y[scored], threshold),
        recall_per_kind=metrics.recall_per_kind(rows, kinds, threshold),
        localizes=cells is not None,
        localization_precision=loc.precision if loc else None,
        localization_recall=loc.recall if loc else None,
        localization_f1=loc.f1 if loc else None,
        ramp_episodes=len(delays),
        ramps_detected=len(caught),
        ramp_delay_mean_steps=float(np.mean(caught)) if caught else None,
        ramp_delay_median_steps=float(np.median(caught)) if caught else None,
        rows_per_s=rows_per_s,
        measurements_per_s=meas_per_s,
        fit_s=fit_s,
        notes=notes,
        **own,
    )


def _own_calibration(
    detector: Detector,
    x: np.ndarray,
    y: np.ndarray,
    scored: np.ndarray,
    kinds: np.ndarray,
    cell_labels: np.ndarray,
) -> dict[str, Any]:
    """Recall, FPR and localization at the detector's own thresholds (its ``verdicts``)."""
    fn = getattr(detector, "verdicts", None)
    model = getattr(detector, "model", None)
    if fn is None or model is None:
        return {}
    attacked, flagged = fn(x)
    rows = np.asarray(attacked, dtype=np.float64)
    cells = np.asarray(flagged, dtype=np.float64)
    loc = metrics.localization_f1(cells, cell_labels, np.full(cells.shape[1], 0.5))
    return {
        "own_threshold": float(model.row_threshold),
        "own_recall": metrics.recall(rows, y, 0.5),
        "own_false_positive_rate": metrics.false_positive_rate(rows[scored], y[scored], 0.5),
        "own_recall_per_kind": metrics.recall_per_kind(rows, kinds, 0.5),
        "own_localization_f1": loc.f1 if loc else None,
    }


@dataclass(frozen=True, slots=True)
class Evaluation:
    """Scorecards of the detectors that ran, and why the others could not."""

    scorecards: list[Scorecard]
    skipped: dict[str, str]  # detector name -> one-line reason


def evaluate(
    data: EvaluationData,
    detectors: Sequence[Detector],
    *,
    target_fpr: float = DEFAULT_TARGET_FPR,
    split: Split | None = None,
    clock: Clock = time.perf_counter,
    progress: Progress | None = None,
) -> Evaluation:
    """A scorecard per detector, all on the same split and the same target FPR.

    A detector that refuses this data (a ``GridfortError``, ``ValueError`` or
    ``RuntimeError``, e.g. a deep detector without a model for this grid) is skipped
    with its reason; the others still run.
    """
    split = split or time_split(data.x.shape[0])
    cards, skipped = [], {}
    for det in detectors:
        if progress:
            progress(f"evaluating {det.name}")
        started = clock()
        try:
            card = evaluate_detector(det, data, split, target_fpr=target_fpr, clock=clock)
        except (GridfortError, ValueError, RuntimeError) as e:
            skipped[det.name] = str(e).splitlines()[0] if str(e) else type(e).__name__
            if progress:
                progress(f"{det.name}: skipped: {skipped[det.name]}")
            continue
        cards.append(card)
        if progress:
            progress(f"{det.name}: done in {clock() - started:.1f} s")
    return Evaluation(cards, skipped)


def stderr_progress(message: str) -> None:
    print(f"detect eval: {message}", file=sys.stderr, flush=True)


def baseline_detectors(
    grid: str, std: np.ndarray | None, *, wls_max_rows: int | None = None
) -> list[Detector]:
    """Every baseline: PCA Q, the pyod detectors and (when ``std`` is known) WLS chi-square."""
    from detection.baselines.pca import PcaResidualDetector
    from detection.baselines.pyod_detectors import pyod_detectors

    out: list[Detector] = [PcaResidualDetector(), *pyod_detectors()]
    if std is not None:
        from detection.baselines.wls_detector import DEFAULT_MAX_ROWS, WlsDetector

        out.append(WlsDetector(grid, std, max_rows=wls_max_rows or DEFAULT_MAX_ROWS))
    return out


def optional_detectors() -> list[Detector]:
    """Detectors of ``detection.models.registry.available_detectors()``, if that module exists.

    It may return a list of detectors or a mapping of name to detector.
    """
    try:
        from detection.models.registry import (  # type: ignore[import-not-found,unused-ignore]
            available_detectors,
        )
    except ImportError:
        return []
    found = available_detectors()
    items = list(found.values()) if isinstance(found, dict) else list(found)
    return [d for d in items if isinstance(d, Detector)]


def generated_evaluation_data(
    grid: str,
    steps: int,
    *,
    seed: int = 0,
    attack_rate: float = 0.3,
    train_share: float = 0.5,
    validation_share: float = 0.2,
    workers: int | None = None,
    scenario: Scenario | None = None,
) -> tuple[EvaluationData, Split, np.ndarray]:
    """Generate ``steps`` rows of ``grid``; attacks only in the (last) test segment.

    Training and validation rows stay clean, so every generated row is used; the test
    segment gets ``attack_rate`` of its rows attacked (every kind, seed ``seed + 1``;
    replays draw from earlier test rows). ``scenario`` (e.g.
    :data:`detection.scenarios.HELD_OUT`) sets the noise, the load pattern and the attack
    ranges (default: the reference grid); ``seed`` is used either way. Returns the data,
    its split and the noise standard deviation per measurement (for WLS).
    """
    import dataclasses

    from detection.attacks import inject_attacks
    from detection.generate import PRICE_COLUMN, generate_series

    sc = scenario or Scenario(seed=seed)
    series = generate_series(
        grid, steps, seed=seed, noise=sc.noise, pattern=sc.pattern, workers=workers
    )
    split = time_split(steps, train_share, validation_share)
    s = split.test
    test_series = dataclasses.replace(
        series,
        t=series.t[s],
        true=series.true[s],
        measured=series.measured[s],
        price_eur_per_mwh=series.price_eur_per_mwh[s],
        voltages=series.voltages[s],
    )
    attacked = inject_attacks(
        test_series, rate=attack_rate, seed=seed + 1, magnitudes=sc.magnitudes
    )
    cols = series.layout.columns
    x = series.measured.copy()
    x[s] = attacked.data[cols].to_numpy(dtype=np.float64)
    kinds = np.full(steps, NO_ATTACK, dtype=object)
    kinds[s] = attacked.labels[ATTACK_COLUMN].astype(str).to_numpy(dtype=object)
    cells = np.zeros(x.shape, dtype=bool)
    cells[s] = attacked.labels[cols].to_numpy(dtype=bool)
    price = series.price_eur_per_mwh.astype(np.float64)
    price[s] = attacked.data[PRICE_COLUMN].to_numpy(dtype=np.float64)
    data = EvaluationData(grid, series.layout, x, kinds, cells, price, x - series.measured)
    return data, split, series.std
