"""Forecast uncertainty as a margin: what the scheduler plans on, in the optimizer's shapes.

The rule (never sell energy that may not come, never promise flexibility the load may eat):

* PV generation is planned at the **lower** quantile (P10): the plant delivers at least this
  in about 9 of 10 cases;
* site load is planned at the **upper** quantile (P90);
* the price is planned at the median (P50); its band is reported, not planned on.

The margin per step is the distance from the median to the planned quantile [target unit],
``P50 - P10`` for PV and ``P90 - P50`` for load: the reserve the plan holds back.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from control_plane.forecast.features import HORIZON, Target
from control_plane.forecast.quantiles import QuantileForecast
from control_plane.forecast.site import ForecastInputError

#: The quantile each target is planned on.
PLAN_QUANTILE = {Target.PV: 0.1, Target.LOAD: 0.9, Target.PRICE: 0.5}
PRICE_LIMIT_EUR_PER_MWH = 1e4  #: bound of the optimizer's ``MarketPrices`` [EUR/MWh]


@dataclass(frozen=True, slots=True)
class ForecastMargin:
    """One target's plan: ``plan`` (the planned quantile), ``expected`` (P50) and ``margin``
    = |expected - plan| (>= 0), each per step [target unit]."""

    target: Target
    quantile: float
    plan: tuple[float, ...]
    expected: tuple[float, ...]
    margin: tuple[float, ...]

    def __post_init__(self) -> None:
        if not len(self.plan) == len(self.expected) == len(self.margin) == HORIZON:
            raise ForecastInputError(f"margin {self.target.value}: needs {HORIZON} steps")
        if min(self.margin) < 0.0:
            raise ForecastInputError(f"margin {self.target.value}: margin must be >= 0")


def conservative_profile(
    forecast: QuantileForecast, quantile: float | None = None
) -> ForecastMargin:
    """The plan for ``forecast`` at ``quantile`` (default :data:`PLAN_QUANTILE` of its target).

    PV and load never go below 0 kW."""
    q = PLAN_QUANTILE[forecast.target] if quantile is None else quantile
    plan = forecast.at(q)
    expected = forecast.at(0.5) if 0.5 in forecast.quantiles else plan
    if forecast.target is not Target.PRICE:
        plan, expected = np.clip(plan, 0.0, None), np.clip(expected, 0.0, None)
    margin = np.abs(expected - plan)
    return ForecastMargin(
        forecast.target,
        q,
        tuple(float(v) for v in plan),
        tuple(float(v) for v in expected),
        tuple(float(v) for v in margin),
    )


def pv_forecast_kw(
    forecasts: Mapping[str, QuantileForecast], quantile: float | None = None
) -> dict[str, tuple[float, ...]]:
    """PV plans per asset id: 96 floats >= 0 [kW] each, the ``pv_forecast_kw`` argument of
    :func:`control_plane.optimizer.from_state.fleet_from_gated_state`."""
    out: dict[str, tuple[float, ...]] = {}
    for asset_id, forecast in forecasts.items():
        if forecast.target is not Target.PV:
            raise ForecastInputError(f"pv_forecast_kw: {asset_id} has a {forecast.target} forecast")
        out[asset_id] = conservative_profile(forecast, quantile).plan
    return out


def energy_prices_eur_per_mwh(forecast: QuantileForecast) -> tuple[float, ...]:
    """The planned price per step [EUR/MWh] (96 values within +-10000, 0.01 resolution), the
    ``energy_eur_per_mwh`` of :class:`control_plane.optimizer.market.MarketPrices`."""
    if forecast.target is not Target.PRICE:
        raise ForecastInputError(f"energy prices need a price forecast, got {forecast.target}")
    plan = np.asarray(conservative_profile(forecast).plan)
    plan = np.clip(plan, -PRICE_LIMIT_EUR_PER_MWH, PRICE_LIMIT_EUR_PER_MWH)
    return tuple(float(v) for v in np.round(plan, 2))
