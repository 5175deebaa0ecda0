"""The deep detector's judgement united with the physics ramp stage (``detect score --history``).

The false-positive target is split as in the evaluator's ``gnn+physics`` row
(:mod:`detection.evaluate_stages`): the deep detector (its row test and its own ramp
stage, :func:`detection.models.detector.adapt`) is calibrated at ``1 - physics_share``
of it, the physics ramp stage (:mod:`detection.models.physics_ramp`) at the rest, both
on the same clean history; a row is flagged when either flags it, so the union keeps
the target (its rate is at most the sum of the parts').

Verdicts (:func:`judge_with_physics`): ``attacked`` is the deep judgement OR the
physics stage's flag; the falsified measurements are the deep detector's flagged cells
OR the (p, q) columns of the element the physics stage flagged on that row. The deep
verdicts are fed to the physics stage as ``flagged_elsewhere`` (they empty its memory).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from detection.models.artifacts import TrainedModel
from detection.models.detector import Judgement, adapt, judge
from detection.models.physics_ramp import (
    PhysicsRampStage,
    fit_physics_ramp,
    physics_ramp_verdicts,
)


@dataclass(frozen=True, slots=True)
class FittedPair:
    """The adapted deep model and the physics stage fitted on the same history, with the
    overall target [share of clean rows] they split."""

    model: TrainedModel
    stage: PhysicsRampStage
    target_fpr: float


@dataclass(frozen=True, slots=True)
class PhysicsJudgement:
    """Verdicts of consecutive snapshots: ``deep`` the deep detector's judgement alone;
    ``physics`` (n,) the physics stage's flags and ``element`` (n,) the flagged element
    index (-1 = none; names in ``stage.elements``); ``attacked`` (n,) and ``flagged``
    (n, m, layout order) of the union."""

    deep: Judgement
    physics: np.ndarray
    element: np.ndarray
    attacked: np.ndarray
    flagged: np.ndarray


def split_target(target_fpr: float, physics_share: float) -> tuple[float, float]:
    """(deep part, physics part) of ``target_fpr``; their sum is the target."""
    if not 0.0 < physics_share < 1.0:
        raise ValueError(f"physics_share must be in (0, 1), got {physics_share}")
    return (1.0 - physics_share) * target_fpr, physics_share * target_fpr


def adapt_with_physics(
    model: TrainedModel,
    grid: str,
    history_x: np.ndarray,
    target_fpr: float | None,
    *,
    physics_share: float,
    seed: int,
    progress: Callable[[str], None] | None = None,
) -> FittedPair:
    """Adapt ``model`` to clean consecutive rows ``history_x`` (n, m) [layout units] at the
    deep part of ``target_fpr`` (default: the model's own) and fit the physics stage on
    the same rows at the rest (``physics_share``; ``seed`` of its simulated null).

    ``ValueError`` when either cannot be fitted (too short a history, a grid without a
    measurement Jacobian, ...); the physics stage's message is prefixed with its name.
    """
    target = float(target_fpr if target_fpr is not None else model.target_fpr)
    deep_fpr, physics_fpr = split_target(target, physics_share)
    say = progress or (lambda _msg: None)
    say(f"adapting to {len(history_x)} clean history rows (deep detector at {deep_fpr:.3%} FPR)")
    adapted = adapt(model, history_x, target_fpr=deep_fpr)
    say(f"fitting the physics ramp stage at {physics_fpr:.3%} FPR (a minute or more on case118)")
    try:
        stage = fit_physics_ramp(
            grid, model.layout, history_x, physics_fpr, seed=seed, progress=say
        )
    except ValueError as e:
        raise ValueError(f"physics ramp stage: {e}") from e
    return FittedPair(adapted, stage, target)


def physics_cells(stage: PhysicsRampStage, element: np.ndarray) -> np.ndarray:
    """(n, m) bool in layout order: the (p, q) columns of the element flagged on each row
    (``element`` (n,), -1 = none)."""
    element = np.asarray(element, dtype=np.int64)
    out = np.zeros((len(element), len(stage.columns)), dtype=bool)
    rows = np.flatnonzero(element >= 0)
    out[rows[:, None], stage.pairs[element[rows]]] = True
    return out


def judge_with_physics(
    model: TrainedModel, stage: PhysicsRampStage, x: np.ndarray
) -> PhysicsJudgement:
    """The deep judgement (:func:`detection.models.detector.judge`) and the physics stage
    over consecutive snapshots ``x`` (n, m) of a fresh stream, united (module docstring)."""
    if tuple(model.layout.columns) != stage.columns:
        raise ValueError("the physics stage was fitted for another layout than the model's")
    deep = judge(model, x)
    physics, _, element = physics_ramp_verdicts(stage, x, deep.attacked)
    flagged = deep.flagged | physics_cells(stage, np.where(physics, element, -1))
    return PhysicsJudgement(deep, physics, element, deep.attacked | physics, flagged)
