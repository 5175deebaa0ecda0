"""Train each target's model and score it against persistence on held-out days, in one run.

The cut-offs (local midnights with 7 days of history) are split in time order: the first
70 % train, the next 10 % validate (early stopping), the last 20 % are the test days. A
horizon never reaches into the next split (a boundary day whose horizon would is dropped),
normalizers use only steps before the validation days, and every input reads only history
before its own cut-off, so no test value leaks into training.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from control_plane.forecast.baselines import persistence, smart_persistence_pv
from control_plane.forecast.features import (
    DAYLIGHT_FRACTION,
    HORIZON,
    Series,
    Target,
    forecast_starts,
    horizon_index,
    normalizer,
    truth,
)
from control_plane.forecast.metrics import Scores, band_scores, pinball, point_scores
from control_plane.forecast.site import ForecastInputError
from control_plane.forecast.train import Forecaster, TrainConfig, train_forecaster

IntArray = NDArray[np.int64]
Progress = Callable[[str], None]

VAL_SHARE = 0.1
TEST_SHARE = 0.2
MIN_DAYS = 7 + 10  #: history days + the fewest forecast days that still split sensibly


@dataclass(slots=True)
class TargetResult:
    """One target's test scores: the model's P50 and band, and the baselines."""

    target: Target
    model: Scores
    persistence: Scores
    smart_persistence: Scores | None
    forecaster: Forecaster
    test_days: int

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "unit": self.target.unit,
            "test_days": self.test_days,
            "model": self.model.to_json(),
            "persistence": self.persistence.to_json(),
            "training": self.forecaster.metadata,
        }
        if self.smart_persistence is not None:
            out["smart_persistence"] = self.smart_persistence.to_json()
        return out


@dataclass(slots=True)
class Scorecard:
    """The results of one evaluation run."""

    results: list[TargetResult]
    settings: dict[str, Any] = field(default_factory=dict)

    def result(self, target: Target) -> TargetResult:
        return next(r for r in self.results if r.target is target)

    def to_json(self) -> dict[str, Any]:
        return {
            "settings": self.settings,
            "targets": {r.target.value: r.to_json() for r in self.results},
        }


def split_starts(starts: IntArray) -> tuple[IntArray, IntArray, IntArray]:
    """(train, validation, test) cut-offs in time order, with no horizon overlapping the
    next split."""
    n = len(starts)
    n_test = max(1, round(TEST_SHARE * n))
    n_val = max(1, round(VAL_SHARE * n))
    if n - n_test - n_val < 2:
        raise ForecastInputError(f"too few forecast days to split ({n}); generate more days")
    train, val, test = (
        starts[: n - n_test - n_val],
        starts[n - n_test - n_val : n - n_test],
        starts[n - n_test :],
    )
    train = train[train + HORIZON <= val[0]]
    val = val[val + HORIZON <= test[0]]
    return train, val, test


def _scale(series: Series, target: Target, end: int) -> float:
    if target is Target.PV:
        return series.site.pv_rated_kw
    return float(np.mean(np.abs(series.values[target.column][:end])))


def evaluate_target(
    series: Series, target: Target, config: TrainConfig, progress: Progress | None = None
) -> TargetResult:
    """Train ``target``'s model and score it and the baselines on the test days."""
    train_s, val_s, test_s = split_starts(forecast_starts(series))
    norm = normalizer(series, target, int(val_s[0]))
    model = train_forecaster(series, target, norm, train_s, val_s, config, progress)
    y = truth(series, target, test_s)
    pred = model.predict(series, test_s)
    scale = _scale(series, target, int(val_s[0]))
    ref = point_scores(persistence(series, target, test_s), y, scale)
    ref = point_scores(persistence(series, target, test_s), y, scale, ref)
    mid = list(config.quantiles).index(0.5) if 0.5 in config.quantiles else len(pred[0]) // 2
    scores = point_scores(pred[:, mid, :], y, scale, ref)
    scored = np.ones(y.shape, dtype=bool)
    smart = None
    if target is Target.PV:
        cs = series.values["pv_clearsky_kw"][horizon_index(test_s)]
        scored = cs > DAYLIGHT_FRACTION * series.site.pv_rated_kw
        smart = point_scores(smart_persistence_pv(series, test_s), y, scale, ref)
    coverage, band = band_scores(pred[:, 0, :], pred[:, -1, :], y, scored)
    scores = Scores(
        scores.mae,
        scores.rmse,
        scores.nmae,
        scores.skill,
        scores.skill_rmse,
        coverage,
        band,
        pinball(pred, y, config.quantiles),
    )
    return TargetResult(target, scores, ref, smart, model, len(test_s))


def evaluate_series(
    series: Series,
    config: TrainConfig,
    targets: tuple[Target, ...] = tuple(Target),
    progress: Progress | None = None,
) -> Scorecard:
    """Evaluate every target of ``targets`` on ``series``."""
    if series.cal.days < MIN_DAYS:
        raise ForecastInputError(f"need at least {MIN_DAYS} days of history, got {series.cal.days}")
    results = []
    for target in targets:
        started = time.perf_counter()
        if progress is not None:
            progress(f"training {target.value} ...")
        results.append(evaluate_target(series, target, config, progress))
        if progress is not None:
            r = results[-1]
            progress(
                f"{target.value}: skill {r.model.skill:+.3f} vs persistence "
                f"({time.perf_counter() - started:.1f} s)"
            )
    return Scorecard(results, {"train": config.to_json(), "days": series.cal.days})
