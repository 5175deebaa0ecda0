"""The trained models: better than persistence, ordered quantiles, dark nights, no leakage."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from control_plane.forecast.baselines import persistence
from control_plane.forecast.evaluate import Scorecard, split_starts
from control_plane.forecast.features import (
    HORIZON,
    Series,
    Target,
    forecast_starts,
    horizon_index,
    truth,
)
from control_plane.forecast.metrics import point_scores
from control_plane.forecast.network import DayAheadQuantileNet, NetworkShape
from tests.forecast.conftest import SMALL_CONFIG

#: Least skill vs persistence (1 - MAE/MAE_persistence) a working model reaches on the small
#: run; persistence itself scores 0 and a model that outputs zeros scores far below 0.
MIN_SKILL = {Target.LOAD: 0.2, Target.PV: 0.15}


@pytest.mark.parametrize("target", [Target.LOAD, Target.PV])
def test_model_beats_persistence_on_held_out_days(
    small_scorecard: Scorecard, target: Target
) -> None:
    r = small_scorecard.result(target)
    assert r.model.skill is not None and r.model.skill > MIN_SKILL[target]
    assert r.model.mae < r.persistence.mae
    assert r.test_days >= 40


@pytest.mark.parametrize("target", [Target.LOAD, Target.PV])
def test_the_skill_threshold_fails_broken_models(small_series: Series, target: Target) -> None:
    _, _, test = split_starts(forecast_starts(small_series))
    y = truth(small_series, target, test)
    ref = point_scores(persistence(small_series, target, test), y, 1.0)
    for broken in (np.zeros_like(y), persistence(small_series, target, test)):
        skill = point_scores(broken, y, 1.0, ref).skill
        assert skill is not None and skill <= MIN_SKILL[target]


@pytest.mark.parametrize("target", [Target.LOAD, Target.PV])
def test_quantiles_are_ordered_and_cover_about_80_percent(
    small_series: Series, small_scorecard: Scorecard, target: Target
) -> None:
    r = small_scorecard.result(target)
    _, _, test = split_starts(forecast_starts(small_series))
    pred = r.forecaster.predict(small_series, test)
    assert pred.shape == (len(test), 3, HORIZON)
    assert np.all(np.diff(pred, axis=1) >= -1e-9)
    assert r.model.coverage is not None and 0.6 <= r.model.coverage <= 0.95
    assert (pred >= 0.0).all()


def test_pv_model_never_predicts_generation_at_night(
    small_series: Series, small_scorecard: Scorecard
) -> None:
    model = small_scorecard.result(Target.PV).forecaster
    starts = forecast_starts(small_series)
    pred = model.predict(small_series, starts)
    cs = small_series.values["pv_clearsky_kw"][horizon_index(starts)]
    night = np.broadcast_to((cs == 0.0)[:, None, :], pred.shape)
    assert night.any() and (pred[night] == 0.0).all()


def test_splits_are_in_time_order_without_overlapping_horizons(small_series: Series) -> None:
    train, val, test = split_starts(forecast_starts(small_series))
    assert train.max() + HORIZON <= val.min() and val.max() + HORIZON <= test.min()
    assert len(train) > len(test) > len(val) > 0


def test_training_is_deterministic(small_series: Series) -> None:
    from control_plane.forecast.features import normalizer
    from control_plane.forecast.train import TrainConfig, train_forecaster

    train, val, _ = split_starts(forecast_starts(small_series))
    cfg = TrainConfig(max_epochs=2, patience=2, seed=SMALL_CONFIG.seed)
    norm = normalizer(small_series, Target.PV, int(val[0]))
    a = train_forecaster(small_series, Target.PV, norm, train[:40], val[:5], cfg)
    b = train_forecaster(small_series, Target.PV, norm, train[:40], val[:5], cfg)
    for (ka, va), (kb, vb) in zip(
        a.net.state_dict().items(), b.net.state_dict().items(), strict=True
    ):
        assert ka == kb and torch.equal(va, vb)


def test_network_quantiles_cannot_cross_even_untrained() -> None:
    torch.manual_seed(0)
    net = DayAheadQuantileNet(NetworkShape(day_features=5, step_features=4, quantiles=5))
    out = net(torch.randn(8, 5) * 10, torch.randn(8, HORIZON, 4) * 10)
    assert out.shape == (8, HORIZON, 5)
    assert (out.diff(dim=2) >= 0).all()
