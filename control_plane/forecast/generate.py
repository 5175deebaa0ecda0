"""A deterministic synthetic history of one site: load, PV and the day-ahead price.

Everything follows from the seed (no downloads). Columns of the returned frame:

* ``ts_utc`` start of each 15-minute step (UTC, tz-aware);
* ``load_kw`` [kW] site load: morning and evening peaks, a working-day plateau, lower on
  weekends, heating/cooling with the slow temperature drift, autocorrelated noise;
* ``pv_kw`` [kW] PV generation = the pvlib clear-sky plane-of-array irradiance times the
  clear-sky index, through the power model of :mod:`control_plane.forecast.solar`;
* ``pv_clearsky_kw`` [kW] the same plant under a clear sky (known in advance);
* ``air_temp_c`` [degC], ``clear_sky_index`` [-] the weather behind it;
* ``nwp_air_temp_c`` [degC], ``nwp_clear_sky_index`` [-] the day-ahead weather forecast of
  each step, issued before the day's cut-off (see :mod:`control_plane.forecast.weather`);
* ``price_eur_per_mwh`` [EUR/MWh] day-ahead price of the zone: follows the zone's load,
  falls with its PV (duck curve, negative on sunny low-load middays) and wind, lower on
  weekends, a slow fuel-cost drift, and occasional evening scarcity spikes.
"""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
from numpy.typing import NDArray
from scipy.special import ndtr

from control_plane.forecast.site import ForecastSite
from control_plane.forecast.solar import ClearSky, clear_sky, pv_power_kw
from control_plane.forecast.timeline import Calendar, calendar, utc_steps
from control_plane.forecast.weather import Weather, ar1, simulate_weather

FloatArray = NDArray[np.float64]

DEFAULT_START = dt.date(2023, 1, 1)
COLUMNS = (
    "ts_utc",
    "load_kw",
    "pv_kw",
    "pv_clearsky_kw",
    "air_temp_c",
    "clear_sky_index",
    "nwp_air_temp_c",
    "nwp_clear_sky_index",
    "price_eur_per_mwh",
)
PRICE_FLOOR_EUR_PER_MWH = -500.0
PRICE_CAP_EUR_PER_MWH = 4000.0


def _bump(hour: FloatArray, centre_h: float, width_h: float) -> FloatArray:
    return np.asarray(np.exp(-0.5 * ((hour - centre_h) / width_h) ** 2), dtype=np.float64)


def _plateau(hour: FloatArray, start_h: float, end_h: float) -> FloatArray:
    up = 1.0 / (1.0 + np.exp(-(hour - start_h) * 3.0))
    down = 1.0 / (1.0 + np.exp((hour - end_h) * 3.0))
    return np.asarray(up * down, dtype=np.float64)


def load_shape(cal: Calendar) -> FloatArray:
    """Relative load [-] by local time and weekday (mean about 0.9)."""
    h = cal.hour
    workday = 0.5 + 0.3 * _bump(h, 7.5, 1.0) + 0.35 * _plateau(h, 8.0, 17.0)
    workday += 0.45 * _bump(h, 19.0, 1.7)
    weekend = 0.5 + 0.2 * _bump(h, 9.5, 1.5) + 0.1 * _plateau(h, 10.0, 16.0)
    weekend += 0.5 * _bump(h, 19.5, 2.0)
    return np.where(cal.weekday >= 5, weekend, workday)


def _thermal(weather: Weather, cal: Calendar) -> FloatArray:
    """Relative heating/cooling load [-] from the daily mean temperature."""
    day_temp = pd.Series(weather.air_temp_c).groupby(cal.day).transform("mean").to_numpy()
    heat = 0.02 * np.clip(14.0 - day_temp, 0.0, None)
    cool = 0.03 * np.clip(day_temp - 21.0, 0.0, None)
    return np.asarray(heat + cool, dtype=np.float64)


def site_load_kw(
    site: ForecastSite, cal: Calendar, weather: Weather, rng: np.random.Generator
) -> FloatArray:
    """Site load [kW]."""
    rel = load_shape(cal) + _thermal(weather, cal)
    noise = ar1(rng, len(rel), 0.97, 0.06) + 0.025 * rng.standard_normal(len(rel))
    return np.asarray(np.clip(site.load_mean_kw / 0.95 * rel * (1.0 + noise), 0.0, None))


def site_pv_kw(site: ForecastSite, sky: ClearSky, weather: Weather) -> FloatArray:
    """PV generation [kW]: clear-sky irradiance dimmed (or enhanced) by the clear-sky index."""
    return pv_power_kw(sky.poa_w_per_m2 * weather.clear_sky_index, weather.air_temp_c, site)


def zone_price_eur_per_mwh(
    cal: Calendar, weather: Weather, sky: ClearSky, rng: np.random.Generator
) -> FloatArray:
    """The price zone's day-ahead price [EUR/MWh] per step."""
    n, days = len(cal.hour), cal.days
    zone_load = load_shape(cal) + _thermal(weather, cal) + ar1(rng, n, 0.95, 0.03)
    zone_pv = weather.regional_index * sky.ghi_w_per_m2 / 1000.0
    wind = ndtr(ar1(rng, days, 0.7, 1.0))[cal.day]
    fuel = ar1(rng, days, 0.97, 15.0)[cal.day]
    weekend = (cal.weekday >= 5).astype(np.float64)
    raw = 105.0 + fuel + 110.0 * (zone_load - 0.85) - 140.0 * zone_pv - 45.0 * wind
    raw += -10.0 * weekend + ar1(rng, n, 0.9, 6.0)
    raw = np.where(raw < 0.0, 1.6 * raw, raw)
    spike_day = rng.random(days) < 0.03 + 0.05 * (wind[cal.day_starts[:-1]] < 0.2)
    start_h = rng.uniform(16.5, 19.5, days)
    length_h = rng.uniform(1.0, 3.0, days)
    height = rng.uniform(80.0, 300.0, days)
    rel_h = cal.hour - start_h[cal.day]
    in_spike = spike_day[cal.day] & (rel_h >= 0.0) & (rel_h < length_h[cal.day])
    raw = raw + np.where(in_spike, height[cal.day], 0.0)
    return np.asarray(np.clip(raw, PRICE_FLOOR_EUR_PER_MWH, PRICE_CAP_EUR_PER_MWH))


def generate_history(
    days: int, *, seed: int = 0, site: ForecastSite | None = None, start: dt.date = DEFAULT_START
) -> pd.DataFrame:
    """``days`` local days of 15-minute history from local midnight of ``start`` (see the
    module docstring for the columns). Identical inputs give identical frames."""
    site = site or ForecastSite()
    index = utc_steps(start, days, site.tz)
    cal = calendar(index, site.tz)
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0x6F726563]))
    weather = simulate_weather(cal, rng)
    sky = clear_sky(index, site, weather.air_temp_c)
    load = site_load_kw(site, cal, weather, rng)
    pv = site_pv_kw(site, sky, weather)
    price = zone_price_eur_per_mwh(cal, weather, sky, rng)
    return pd.DataFrame(
        {
            "ts_utc": index,
            "load_kw": load,
            "pv_kw": pv,
            "pv_clearsky_kw": sky.pv_kw,
            "air_temp_c": weather.air_temp_c,
            "clear_sky_index": weather.clear_sky_index,
            "nwp_air_temp_c": weather.nwp_air_temp_c,
            "nwp_clear_sky_index": weather.nwp_clear_sky_index,
            "price_eur_per_mwh": np.round(price, 2),
        }
    )
