"""Uncertainty as margin: the plan in the optimizer's shapes, and what it refuses."""

from __future__ import annotations

import numpy as np
import pytest

from control_plane.forecast.evaluate import Scorecard, split_starts
from control_plane.forecast.features import HORIZON, Series, Target, forecast_starts
from control_plane.forecast.margin import (
    conservative_profile,
    energy_prices_eur_per_mwh,
    pv_forecast_kw,
)
from control_plane.forecast.quantiles import QuantileForecast
from control_plane.forecast.site import ForecastInputError
from control_plane.optimizer.assets import STEPS, Pv
from control_plane.optimizer.market import MarketPrices


def _forecast(target: Target, p50: np.ndarray, spread: float) -> QuantileForecast:
    values = np.stack([p50 - spread, p50, p50 + spread])
    return QuantileForecast.from_array(target, 0, (0.1, 0.5, 0.9), values)


def test_horizon_matches_the_optimizer() -> None:
    assert HORIZON == STEPS


def test_pv_is_planned_at_p10_and_load_at_p90_with_nonnegative_margins(
    small_series: Series, small_scorecard: Scorecard
) -> None:
    _, _, test = split_starts(forecast_starts(small_series))
    start = int(test[0])
    for target in (Target.PV, Target.LOAD):
        model = small_scorecard.result(target).forecaster
        fc = model.forecast(small_series, start)
        assert fc.start_ts_ms == small_series.ts_ms[start]
        m = conservative_profile(fc)
        assert len(m.plan) == len(m.margin) == STEPS
        assert min(m.margin) >= 0.0 and min(m.plan) >= 0.0
        plan, p50 = np.asarray(m.plan), np.asarray(m.expected)
        if target is Target.PV:
            assert m.quantile == 0.1 and (plan <= p50 + 1e-9).all()
        else:
            assert m.quantile == 0.9 and (plan >= p50 - 1e-9).all()
        np.testing.assert_allclose(np.asarray(m.margin), np.abs(p50 - plan))
    pv = small_scorecard.result(Target.PV).forecaster.forecast(small_series, start)
    shapes = pv_forecast_kw({"site-1-pv": pv})
    assert list(shapes) == ["site-1-pv"] and len(shapes["site-1-pv"]) == STEPS
    Pv("site-1-pv", "site-1", shapes["site-1-pv"])  # the optimizer accepts it


def test_pv_plan_is_clipped_at_zero_even_when_p10_is_negative() -> None:
    fc = _forecast(Target.PV, np.full(HORIZON, 1.0), 2.0)
    plan = pv_forecast_kw({"pv-a": fc})["pv-a"]
    assert min(plan) == 0.0 and all(isinstance(v, float) for v in plan)


def test_prices_build_market_prices_and_are_bounded() -> None:
    p50 = np.linspace(-20000.0, 20000.0, HORIZON)
    prices = energy_prices_eur_per_mwh(_forecast(Target.PRICE, p50, 5.0))
    mp = MarketPrices(prices, (10.0,) * 6)
    assert mp.energy().shape == (STEPS,) and max(prices) == 1e4 and min(prices) == -1e4


def test_crossing_or_short_forecasts_are_refused() -> None:
    with pytest.raises(ForecastInputError, match="cross"):
        _forecast(Target.LOAD, np.full(HORIZON, 5.0), -1.0)
    with pytest.raises(ForecastInputError, match="96"):
        QuantileForecast(Target.LOAD, 0, (0.5,), ((1.0,) * 10,))
    with pytest.raises(ForecastInputError, match="price forecast"):
        energy_prices_eur_per_mwh(_forecast(Target.LOAD, np.full(HORIZON, 5.0), 1.0))
    with pytest.raises(ForecastInputError, match="pv_forecast_kw"):
        pv_forecast_kw({"x": _forecast(Target.LOAD, np.full(HORIZON, 5.0), 1.0)})
