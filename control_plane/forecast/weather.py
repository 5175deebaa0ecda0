"""Seeded weather processes: air temperature and the clear-sky index of the sky.

Temperature [degC]: a seasonal cycle, a daily cycle and a slow AR(1) drift over days.
Clear-sky index [-]: a latent daily cloud regime (AR(1) across days, cloudier in winter) plus
an intraday latent with a few hours of persistence and fast fluctuations that are strongest
in broken-cloud conditions. Clear days (index near 1), overcast days (0.15-0.35) and broken
clouds all occur. A regional index (smoother, same daily regime) drives the price.

A weather forecast issued before the cut-off (like a numerical weather prediction the day
before) is part of the history too: the expected clear-sky index of each step from the
daily regime seen with an error, and the daily mean temperature with an error. It knows the
kind of day, never the intraday cloud pattern.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
from numpy.typing import NDArray
from scipy.special import ndtr

from control_plane.forecast.timeline import Calendar

FloatArray = NDArray[np.float64]

DAY_PHI = 0.6  #: day-to-day persistence of the cloud regime [-]
STEP_PHI = 0.96  #: step-to-step persistence of intraday clouds (about 6 h) [-]
FAST_PHI = 0.6  #: persistence of fast fluctuations [-]
NWP_REGIME_ERROR = 0.45  #: error of the forecast daily cloud regime [latent sd]
NWP_TEMP_ERROR_K = 1.5  #: error of the forecast daily mean temperature [K]


@dataclass(frozen=True, slots=True)
class Weather:
    """Per step: ``air_temp_c`` [degC], ``clear_sky_index`` (site) and ``regional_index``
    (the price zone's mean) [-], and their day-ahead forecasts ``nwp_air_temp_c`` (the
    day's mean) [degC] and ``nwp_clear_sky_index`` [-]."""

    air_temp_c: FloatArray
    clear_sky_index: FloatArray
    regional_index: FloatArray
    nwp_air_temp_c: FloatArray
    nwp_clear_sky_index: FloatArray


def ar1(rng: np.random.Generator, n: int, phi: float, sd: float) -> FloatArray:
    """An AR(1) series of length ``n`` with stationary standard deviation ``sd``."""
    eps = rng.standard_normal(n) * sd * math.sqrt(1.0 - phi * phi)
    out = np.empty(n, dtype=np.float64)
    prev = rng.standard_normal() * sd
    for i in range(n):
        prev = phi * prev + eps[i]
        out[i] = prev
    return out


def simulate_weather(cal: Calendar, rng: np.random.Generator) -> Weather:
    """Temperature and clear-sky indices for every step of ``cal``."""
    n, days = len(cal.hour), cal.days
    season = np.cos(2.0 * np.pi * (cal.day_of_year - 200) / 365.25)  # +1 mid-July
    anomaly_day = ar1(rng, days, 0.85, 3.0)
    anomaly = _smooth_days(anomaly_day, cal)
    daily = -np.cos(2.0 * np.pi * (cal.hour - 3.0) / 24.0)  # coldest 03:00, warmest 15:00
    air = 10.0 + 9.0 * season + (4.0 + 2.0 * season) * daily + anomaly
    regime_day = ar1(rng, days, DAY_PHI, 1.0) + 0.45 * np.cos(
        2.0 * np.pi * (cal.day_of_year[cal.day_starts[:-1]] - 190) / 365.25
    )
    regime = regime_day[cal.day]
    slow = ar1(rng, n, STEP_PHI, 0.7)
    clearness = ndtr(1.3 * regime + slow)
    broken = 4.0 * clearness * (1.0 - clearness)
    fast = ar1(rng, n, FAST_PHI, 1.0) * 0.22 * broken
    csi = np.clip(0.12 + 0.9 * clearness + fast, 0.05, 1.2)
    regional = np.clip(0.15 + 0.85 * ndtr(1.3 * regime + 0.5 * slow), 0.05, 1.0)
    seen = regime + NWP_REGIME_ERROR * rng.standard_normal(days)[cal.day]
    nwp_csi = 0.12 + 0.9 * ndtr(1.3 * seen / math.sqrt(1.0 + 0.7**2))
    day_mean = pd.Series(air).groupby(cal.day).transform("mean").to_numpy()
    nwp_temp = day_mean + NWP_TEMP_ERROR_K * rng.standard_normal(days)[cal.day]
    return Weather(air, csi, regional, nwp_temp, nwp_csi)


def _smooth_days(per_day: FloatArray, cal: Calendar) -> FloatArray:
    """Per-day values interpolated linearly between local noons, per step."""
    noon = cal.day_starts[:-1] + np.diff(cal.day_starts) / 2.0
    return np.interp(np.arange(len(cal.hour), dtype=np.float64), noon, per_day)
