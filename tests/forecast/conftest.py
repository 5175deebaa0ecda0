"""Shared fixtures: one small generated history and models trained on it once per session."""

from __future__ import annotations

import pytest

from control_plane.forecast.evaluate import Scorecard, evaluate_series
from control_plane.forecast.features import Series, Target, series_from_frame
from control_plane.forecast.generate import generate_history
from control_plane.forecast.site import ForecastSite
from control_plane.forecast.train import TrainConfig

SMALL_DAYS = 240
SMALL_CONFIG = TrainConfig(max_epochs=60, patience=12, seed=0, threads=1)


@pytest.fixture(scope="session")
def small_series() -> Series:
    site = ForecastSite()
    return series_from_frame(generate_history(SMALL_DAYS, seed=7, site=site), site)


@pytest.fixture(scope="session")
def small_scorecard(small_series: Series) -> Scorecard:
    return evaluate_series(small_series, SMALL_CONFIG, targets=(Target.LOAD, Target.PV))
