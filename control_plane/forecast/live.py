"""PV forecasts for the running planning cycle, where no weather feed is connected yet.

The trained models of :mod:`control_plane.forecast.train` need a day-ahead weather
forecast and the plant's measured history; a control plane without either still has
to plan its PV plants, and must not plan on sunshine that may not come. This source
plans each PV asset at its clear-sky power over the horizon (pvlib: solar position and
Ineichen clear sky at the fleet's location, plane-of-array power of a plant the size of
the asset's rating) times a *quantile of the clear-sky index* for that calendar month,
learned from :func:`control_plane.forecast.generate.generate_history` at the same
location (daylight steps only). With the default P10 that is the margin rule of
:mod:`control_plane.forecast.margin`: the plan holds back ``P50 - P10`` per step.

Stated plainly: this is a climatological forecast (it knows the season and the hour,
not tomorrow's clouds); it is conservative by construction, and replaced by the quantile
model as soon as a weather feed and the plant's gated history are wired in.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd

from control_plane.assets.model import AssetKind
from control_plane.assets.registry import RegistrySnapshot
from control_plane.forecast.generate import generate_history
from control_plane.forecast.site import ForecastInputError, ForecastSite
from control_plane.forecast.solar import clear_sky

STEPS = 96
STEP = pd.Timedelta(minutes=15)
CLIMATE_DAYS = 730
#: Air temperature assumed for the cell-temperature derate when no forecast is known [degC].
DEFAULT_AIR_C = 15.0


@dataclass(frozen=True, slots=True)
class ClimatologicalPv:
    """Monthly quantiles of the clear-sky index at ``site`` (index 0 = January) [-]."""

    site: ForecastSite
    quantile: float
    monthly_index: tuple[float, ...]
    monthly_median: tuple[float, ...]

    @classmethod
    def learn(
        cls, site: ForecastSite, *, quantile: float = 0.1, days: int = CLIMATE_DAYS, seed: int = 0
    ) -> ClimatologicalPv:
        """Learn the monthly quantiles from generated history at ``site`` (~1 s)."""
        if not 0.0 < quantile < 1.0:
            raise ForecastInputError(f"quantile must be in (0, 1), got {quantile!r}")
        frame = generate_history(days, seed=seed, site=site)
        day = frame["pv_clearsky_kw"].to_numpy() > 0.05 * site.pv_rated_kw
        months = frame["ts_utc"].dt.tz_convert(site.tz).dt.month.to_numpy()
        csi = frame["clear_sky_index"].to_numpy()
        low, mid = [], []
        for m in range(1, 13):
            values = csi[day & (months == m)]
            low.append(float(np.quantile(values, quantile)) if values.size else 0.0)
            mid.append(float(np.quantile(values, 0.5)) if values.size else 0.0)
        return cls(site, quantile, tuple(low), tuple(mid))

    def profile(
        self, start_ms: int, rated_kw: float
    ) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """The planned (quantile) and the median PV power [kW] per step of the 96-step
        horizon from ``start_ms``, for a plant of ``rated_kw``."""
        site = replace(self.site, pv_rated_kw=rated_kw)
        index = pd.date_range(pd.Timestamp(start_ms, unit="ms", tz="UTC"), periods=STEPS, freq=STEP)
        sky = clear_sky(index, site, np.full(STEPS, DEFAULT_AIR_C))
        months = index.tz_convert(site.tz).month.to_numpy() - 1
        low = np.asarray(self.monthly_index)[months]
        mid = np.asarray(self.monthly_median)[months]
        plan = np.clip(sky.pv_kw * low, 0.0, rated_kw)
        median = np.clip(sky.pv_kw * mid, 0.0, rated_kw)
        return tuple(float(v) for v in plan), tuple(float(v) for v in median)


class PvForecastSource:
    """The planning cycle's PV source: every PV asset of the registry snapshot, planned at
    the climatological quantile (see the module docstring). ``margin_kw`` after a call
    holds the median minus the plan per asset [kW per step], for the record."""

    def __init__(self, climate: ClimatologicalPv) -> None:
        self.climate = climate
        self.margin_kw: dict[str, tuple[float, ...]] = {}

    def __call__(
        self, start_ms: int, registry: RegistrySnapshot
    ) -> Mapping[str, tuple[float, ...]]:
        out: dict[str, tuple[float, ...]] = {}
        margins: dict[str, tuple[float, ...]] = {}
        cache: dict[float, tuple[tuple[float, ...], tuple[float, ...]]] = {}
        for asset in registry.assets.values():
            if asset.kind is not AssetKind.PV_INVERTER:
                continue
            if asset.rated_p_kw not in cache:
                cache[asset.rated_p_kw] = self.climate.profile(start_ms, asset.rated_p_kw)
            plan, median = cache[asset.rated_p_kw]
            out[asset.asset_id] = plan
            margins[asset.asset_id] = tuple(m - p for m, p in zip(median, plan, strict=True))
        self.margin_kw = margins
        return out
