"""Scorecards of the checks that are not one score per row: the deep detector's ramp stage,
the price check, and the gate that combines them (``detect eval``, after :func:`evaluate`).

Same protocol as :mod:`detection.evaluate`: fitted on the clean training rows,
thresholds from the clean validation rows with :func:`detection.thresholds.tail_threshold`,
the test segment scored as one block in time order.

* ``gnn+ramp``: the deep detector's row test and its ramp stage
  (:mod:`detection.models.sequential`) on the deep detector already fitted (adapted) by
  :func:`evaluate`; the target is split between the two (the row test at
  ``1 - RAMP_FPR_SHARE`` of it, the ramp stage at the rest), so the union keeps it.
  Measurement attacks only, like the grid detectors (price rows excluded).
* ``gnn+physics``: the deep detector's row test at ``1 - PHYSICS_FPR_SHARE`` of the
  target and the physics ramp stage (:mod:`detection.models.physics_ramp`) at the rest:
  a sequential ramp test on the white residual of a tracking state estimator, fitted on
  the clean training rows only (its noise std estimated from them, its threshold from
  a simulated null); a row is flagged when either flags it. Measurement attacks only.
* ``price``: the price check (:mod:`detection.price`) at the target on its own. Its
  attacked rows are the price rows; rows attacked through measurements are left out of
  its AUC, recall and FPR and only reported per kind.
* ``gate``: a row is flagged when ``gnn+ramp`` or ``price`` flags it, each part
  calibrated at half of the target (:data:`GATE_PART_SHARE`, on the same clean
  validation rows), so the union keeps the target (its rate is at most the sum of the
  parts'); recall over every attacked row (price rows included) and the measured FPR of
  the union. The ``gnn+ramp`` and ``price`` rows themselves are at the whole target.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from detection import metrics
from detection.dataset import NO_ATTACK
from detection.detector import Detector
from detection.evaluate import PRICE_KIND, Clock, EvaluationData, Scorecard, Split
from detection.models.physics_ramp.stage import PHYSICS_FPR_SHARE, PHYSICS_SEED
from detection.thresholds import tail_threshold
from security.refusals import GridfortError

#: Share of the target false-positive rate each of the gate's two parts is calibrated at.
GATE_PART_SHARE = 0.5


def _flag_card(
    name: str,
    data: EvaluationData,
    test: np.ndarray,
    flags: np.ndarray,
    y: np.ndarray,
    scored: np.ndarray,
    *,
    target_fpr: float,
    threshold: float,
    scores: np.ndarray | None,
    elapsed_s: float,
    fit_s: float,
    notes: list[str],
    **extra: Any,
) -> Scorecard:
    """A scorecard from boolean verdicts ``flags`` on the test rows ``test``."""
    kinds = data.kinds[test]
    f = flags.astype(np.float64)
    delays = metrics.detection_delays(flags, kinds, "ramp")
    caught = [d for d in delays if d is not None]
    rows_per_s, meas_per_s = metrics.throughput(len(test), data.x.shape[1], elapsed_s)
    auc = metrics.auc(scores[scored], y[scored]) if scores is not None else None
    return Scorecard(
        detector=name,
        grid=data.grid,
        target_fpr=target_fpr,
        threshold=threshold,
        test_rows=len(test),
        attacked_rows=int(y.sum()),
        clean_rows=int((kinds == NO_ATTACK).sum()),
        subsampled=False,
        auc=auc if auc is None or np.isfinite(auc) else None,
        recall=metrics.recall(f, y, 0.5),
        false_positive_rate=metrics.false_positive_rate(f[scored], y[scored], 0.5),
        recall_per_kind=metrics.recall_per_kind(f, kinds, 0.5),
        localizes=extra.pop("localizes", False),
        localization_precision=extra.pop("localization_precision", None),
        localization_recall=extra.pop("localization_recall", None),
        localization_f1=extra.pop("localization_f1", None),
        ramp_episodes=len(delays),
        ramps_detected=len(caught),
        ramp_delay_mean_steps=float(np.mean(caught)) if caught else None,
        ramp_delay_median_steps=float(np.median(caught)) if caught else None,
        rows_per_s=rows_per_s,
        measurements_per_s=meas_per_s,
        fit_s=fit_s,
        notes=notes,
        **extra,
    )


def _segments(data: EvaluationData, split: Split) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    idx = np.arange(len(data.kinds))
    clean = data.kinds == NO_ATTACK
    return (
        idx[split.train][clean[split.train]],
        idx[split.validation][clean[split.validation]],
        idx[split.test],
    )


def evaluate_ramp_stage(
    detector: Detector,
    data: EvaluationData,
    split: Split,
    *,
    target_fpr: float,
    clock: Clock = time.perf_counter,
) -> tuple[Scorecard, np.ndarray]:
    """The ``gnn+ramp`` scorecard and its verdicts on the test rows (see the module
    docstring). ``detector`` is a fitted ``DeepDetector``."""
    from detection.models.detector import judge, replay_repeats, residuals, score, verdicts
    from detection.models.sequential import RAMP_FPR_SHARE, fit_ramp_scale, ramp_scores

    model = getattr(detector, "model", None)
    if model is None:
        raise ValueError("the deep detector must be fitted before its ramp stage is evaluated")
    _, val, test = _segments(data, split)
    kinds = data.kinds[test]
    y = (kinds != NO_ATTACK) & (kinds != PRICE_KIND)
    scored = kinds != PRICE_KIND
    notes = []
    scale = model.ramp_scale
    if scale is None:
        scale = fit_ramp_scale([residuals(model, data.x[val])])
        notes.append("the model ships no ramp stage: its scale is fitted on the validation rows")
    val_rows, _ = score(model, data.x[val])
    row_thr = tail_threshold(val_rows, (1.0 - RAMP_FPR_SHARE) * target_fpr)
    val_ramp = ramp_scores(scale, residuals(model, data.x[val]), val_rows > row_thr)
    ramp_thr = tail_threshold(val_ramp.max(axis=1), RAMP_FPR_SHARE * target_fpr)

    started = clock()
    rows, cells = score(model, data.x[test])
    resid = residuals(model, data.x[test])
    ramp = ramp_scores(scale, resid, rows > row_thr, ramp_thr)
    at = copy.copy(model)
    at.row_threshold, at.ramp_scale, at.ramp_threshold = row_thr, scale, ramp_thr
    rep = replay_repeats(model, data.x[test], np.flatnonzero(rows > row_thr))
    flags, flagged = verdicts(at, rows, cells, ramp, resid=resid, replay=rep)
    elapsed = clock() - started
    loc = metrics.localization_f1(
        flagged.astype(np.float64), data.cell_labels[test], np.full(cells.shape[1], 0.5)
    )
    own: dict[str, Any] = {}
    if model.ramp_scale is not None:
        j = judge(model, data.x[test])
        own_f = j.attacked.astype(np.float64)
        own_loc = metrics.localization_f1(
            j.flagged.astype(np.float64), data.cell_labels[test], np.full(cells.shape[1], 0.5)
        )
        own = {
            "own_threshold": float(model.row_threshold),
            "own_recall": metrics.recall(own_f, y, 0.5),
            "own_false_positive_rate": metrics.false_positive_rate(own_f[scored], y[scored], 0.5),
            "own_recall_per_kind": metrics.recall_per_kind(own_f, kinds, 0.5),
            "own_localization_f1": own_loc.f1 if own_loc else None,
        }
    notes.append(
        f"row test at {1 - RAMP_FPR_SHARE:.0%} and ramp stage at {RAMP_FPR_SHARE:.0%} of the "
        "target FPR; price attacks not in AUC/recall/FPR; no AUC (two thresholds)"
    )
    card = _flag_card(
        f"{detector.name}+ramp",
        data,
        test,
        flags,
        y,
        scored,
        target_fpr=target_fpr,
        threshold=row_thr,
        scores=None,
        elapsed_s=elapsed,
        fit_s=0.0,
        notes=notes,
        localizes=True,
        localization_precision=loc.precision if loc else None,
        localization_recall=loc.recall if loc else None,
        localization_f1=loc.f1 if loc else None,
        stage_thresholds={"row": row_thr, "ramp": ramp_thr},
        **own,
    )
    return card, flags


def evaluate_physics_stage(
    detector: Detector,
    data: EvaluationData,
    split: Split,
    *,
    target_fpr: float,
    clock: Clock = time.perf_counter,
) -> tuple[Scorecard, np.ndarray]:
    """The ``gnn+physics`` scorecard and its verdicts on the test rows (see the module
    docstring). ``detector`` is a fitted ``DeepDetector``; ``ValueError`` when the
    stage cannot be fitted on this data (e.g. too little history)."""
    from detection.models.detector import score
    from detection.models.physics_ramp import fit_physics_ramp, physics_ramp_verdicts

    model = getattr(detector, "model", None)
    if model is None:
        raise ValueError("the deep detector must be fitted before the physics stage is evaluated")
    train, val, test = _segments(data, split)
    kinds = data.kinds[test]
    y = (kinds != NO_ATTACK) & (kinds != PRICE_KIND)
    scored = kinds != PRICE_KIND
    started = clock()
    stage = fit_physics_ramp(
        data.grid, data.layout, data.x[train], PHYSICS_FPR_SHARE * target_fpr, seed=PHYSICS_SEED
    )
    fit_s = clock() - started
    val_rows, _ = score(model, data.x[val])
    row_thr = tail_threshold(val_rows, (1.0 - PHYSICS_FPR_SHARE) * target_fpr)
    started = clock()
    rows, _ = score(model, data.x[test])
    physics, _, _ = physics_ramp_verdicts(stage, data.x[test], rows > row_thr)
    flags = (rows > row_thr) | physics
    elapsed = clock() - started
    notes = [
        f"row test at {1 - PHYSICS_FPR_SHARE:.0%} and physics ramp stage at "
        f"{PHYSICS_FPR_SHARE:.0%} of the target FPR (null FPR {stage.null_fpr:.4%} over "
        f"{stage.null_rows:,} simulated rows); noise std estimated from "
        f"{len(train)} clean training rows; price attacks not in recall/FPR; no AUC",
    ]
    if len(train) and train[-1] - train[0] + 1 != len(train):
        notes.append("the clean training rows are not consecutive: the tracker jumps gaps")
    card = _flag_card(
        f"{detector.name}+physics",
        data,
        test,
        flags,
        y,
        scored,
        target_fpr=target_fpr,
        threshold=row_thr,
        scores=None,
        elapsed_s=elapsed,
        fit_s=fit_s,
        notes=notes,
        stage_thresholds={"row": row_thr, "physics": stage.threshold},
    )
    return card, flags


def stage_scorecards(
    data: EvaluationData,
    split: Split,
    detectors: Sequence[Detector],
    *,
    target_fpr: float,
    clock: Clock = time.perf_counter,
) -> tuple[list[Scorecard], dict[str, str]]:
    """``gnn+ramp`` and ``gnn+physics`` (for the first fitted deep detector), ``price``
    (when the data has a price) and ``gate`` (deep + ramp OR price); returns the cards
    and why any could not run."""
    cards: list[Scorecard] = []
    skipped: dict[str, str] = {}
    parts: list[tuple[Scorecard, np.ndarray]] = []  # each at GATE_PART_SHARE of the target
    part_fpr = GATE_PART_SHARE * target_fpr
    for det in detectors:
        if getattr(det, "model", None) is None or not hasattr(det, "verdicts"):
            continue
        card, _ = evaluate_ramp_stage(det, data, split, target_fpr=target_fpr, clock=clock)
        cards.append(card)
        parts.append(evaluate_ramp_stage(det, data, split, target_fpr=part_fpr, clock=clock))
        try:
            card, _ = evaluate_physics_stage(det, data, split, target_fpr=target_fpr, clock=clock)
        except (GridfortError, ValueError, RuntimeError) as e:
            skipped[f"{det.name}+physics"] = str(e).splitlines()[0] if str(e) else type(e).__name__
        else:
            cards.append(card)
        break  # one deep detector feeds the gate
    else:
        skipped["gnn+physics"] = "needs a fitted deep detector (its row test)"
    if data.price_eur_per_mwh is None:
        skipped["price"] = "the data carries no price signal"
    else:
        try:
            card, _ = evaluate_price(data, split, target_fpr=target_fpr, clock=clock)
        except ValueError as e:
            skipped["price"] = str(e)
        else:
            cards.append(card)
            parts.append(evaluate_price(data, split, target_fpr=part_fpr, clock=clock))
    if len(parts) == 2:
        cards.append(gate_scorecard(data, split, parts, target_fpr=target_fpr))
    else:
        skipped["gate"] = "needs both the deep detector and the price check"
    return cards, skipped


def evaluate_price(
    data: EvaluationData,
    split: Split,
    *,
    target_fpr: float,
    clock: Clock = time.perf_counter,
) -> tuple[Scorecard, np.ndarray]:
    """The ``price`` scorecard and its verdicts on the test rows (see the module docstring)."""
    from detection.price import fit_price_model, price_scores

    if data.price_eur_per_mwh is None:
        raise ValueError("the data carries no price signal")
    price = data.price_eur_per_mwh
    train, val, test = _segments(data, split)
    started = clock()
    model = fit_price_model(data.x[train], price[train], data.layout)
    fit_s = clock() - started
    threshold = tail_threshold(price_scores(model, data.x[val], price[val]), target_fpr)
    started = clock()
    s = price_scores(model, data.x[test], price[test], threshold)
    elapsed = clock() - started
    kinds = data.kinds[test]
    y = kinds == PRICE_KIND
    scored = (kinds == NO_ATTACK) | y
    card = _flag_card(
        "price",
        data,
        test,
        s > threshold,
        y,
        scored,
        target_fpr=target_fpr,
        threshold=threshold,
        scores=s,
        elapsed_s=elapsed,
        fit_s=fit_s,
        notes=[
            "price check: its attacked rows are the price rows; measurement attacks only "
            f"per kind (load-model residual sd {model.sd:.2f} EUR/MWh, AR(1) phi {model.phi:.3f})"
        ],
    )
    return card, s > threshold


def gate_scorecard(
    data: EvaluationData,
    split: Split,
    parts: Sequence[tuple[Scorecard, np.ndarray]],
    *,
    target_fpr: float,
) -> Scorecard:
    """A row flagged by any of ``parts`` (scorecard, test verdicts, each part calibrated at
    its share of ``target_fpr``); every attack counts."""
    _, _, test = _segments(data, split)
    kinds = data.kinds[test]
    flags = np.zeros(len(test), dtype=bool)
    for _, f in parts:
        flags |= f
    y = kinds != NO_ATTACK
    names = " OR ".join(c.detector for c, _ in parts)
    return _flag_card(
        "gate",
        data,
        test,
        flags,
        y,
        np.ones(len(test), dtype=bool),
        target_fpr=target_fpr,
        threshold=0.5,  # a verdict: flagged by at least one part
        scores=None,
        elapsed_s=sum(c.test_rows / max(c.rows_per_s, 1e-9) for c, _ in parts),
        fit_s=sum(c.fit_s for c, _ in parts),
        notes=[
            f"{names}, each calibrated at "
            + " and ".join(f"{c.target_fpr:.3%}" for c, _ in parts)
            + f" FPR (the union keeps {target_fpr:.2%}): every attacked row counts "
            "(price rows included)"
        ],
        stage_thresholds={c.detector: c.threshold for c, _ in parts},
    )
