"""The ramp stage: calibrated on clean residuals, it catches a slow ramp earlier than the
row test alone, keeps its false-positive rate, and forgets an attack once it is judged."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np

from detection.models.artifacts import TrainedModel
from detection.models.detector import set_thresholds, verdicts
from detection.models.sequential import RAMP_LENGTHS, RampMonitor, ramp_scores

M = 40  # measurements
TARGET = 0.01


@dataclass
class _Thresholds:
    """The fields of a TrainedModel that calibration and verdicts use."""

    row_threshold: float = float("inf")
    cell_thresholds: np.ndarray = field(default_factory=lambda: np.zeros(M))
    target_fpr: float = TARGET
    cell_level: float = -1e9
    ramp_scale: np.ndarray | None = None
    ramp_threshold: float = float("inf")


def _calibrated(rng: np.random.Generator) -> tuple[Any, np.ndarray]:
    """A row test on |r| (the largest normalized residual) plus the ramp stage, both
    calibrated on 3,000 clean rows of white residuals."""
    clean = rng.standard_normal((3000, M))
    model = _Thresholds()
    set_thresholds(
        cast(TrainedModel, model), np.abs(clean).max(axis=1), np.abs(clean), TARGET, [clean]
    )
    return model, clean


def _ramp_delay(model: Any, r: np.ndarray, start: int, with_ramp: bool) -> int | None:
    rows, cells = np.abs(r).max(axis=1), np.abs(r)
    ramp = ramp_scores(model.ramp_scale, r, rows > model.row_threshold, model.ramp_threshold)
    attacked, _ = verdicts(cast(TrainedModel, model), rows, cells, ramp if with_ramp else None)
    hit = np.flatnonzero(attacked[start:])
    return int(hit[0]) if hit.size else None


def test_the_ramp_stage_catches_a_slow_ramp_earlier_than_the_row_test() -> None:
    rng = np.random.default_rng(0)
    model, _ = _calibrated(rng)
    assert model.ramp_scale.shape == (len(RAMP_LENGTHS), M)
    assert np.isfinite(model.ramp_threshold)
    earlier = 0
    for k in range(10):
        r = rng.standard_normal((150, M))
        start, length = 60, 60
        r[start : start + length, k] += 0.15 * np.arange(1, length + 1)  # 0.15 sd per step
        with_stage = _ramp_delay(model, r, start, with_ramp=True)
        without = _ramp_delay(model, r, start, with_ramp=False)
        assert with_stage is not None
        if without is None or with_stage < without:
            earlier += 1
    assert earlier >= 8


def test_the_two_stages_together_keep_the_target_on_clean_rows() -> None:
    rng = np.random.default_rng(1)
    model, _ = _calibrated(rng)
    r = rng.standard_normal((4000, M))
    rows = np.abs(r).max(axis=1)
    ramp = ramp_scores(model.ramp_scale, r, rows > model.row_threshold, model.ramp_threshold)
    attacked, _ = verdicts(cast(TrainedModel, model), rows, np.abs(r), ramp)
    assert attacked.mean() <= 2.5 * TARGET


def test_a_judged_attack_is_forgotten_so_clean_rows_after_it_are_not_flagged() -> None:
    scale = np.ones((len(RAMP_LENGTHS), 3))
    mon = RampMonitor(scale)
    for _ in range(20):
        mon.push(np.array([5.0, 0.0, 0.0]))  # an attack the row test caught
    assert mon.push(np.zeros(3)).max() > 5.0  # without forgetting, clean rows stay high
    mon.reset()
    assert mon.push(np.zeros(3)).max() == 0.0


def test_the_monitor_and_the_batch_path_agree() -> None:
    rng = np.random.default_rng(2)
    scale = rng.uniform(0.8, 1.5, size=(len(RAMP_LENGTHS), 5))
    r = rng.standard_normal((80, 5))
    attacked = np.zeros(80, dtype=bool)
    attacked[[10, 40]] = True
    batch = ramp_scores(scale, r, attacked)
    mon = RampMonitor(scale)
    for t in range(80):
        np.testing.assert_allclose(mon.push(r[t]), batch[t])
        if attacked[t]:
            mon.reset()
