"""Model inputs for a day-ahead forecast made at a cut-off (a local midnight).

A sample is one horizon of :data:`HORIZON` steps starting at the cut-off step ``start``.
Only values before ``start`` (history) and values known in advance (calendar, clear sky)
enter the inputs:

* day features (one vector per sample): the target day's weekday (one-hot), the day of year
  (sin, cos), the normalized daily mean of each of the last 7 days, and for PV and price the
  clear-sky index of each of the last 3 days; the day-ahead weather forecast's mean
  temperature of the target day [degC / 10];
* step features (one vector per horizon step): local time of day (sin, cos), the normalized
  value 1, 2 and 7 days earlier, the value a day earlier smoothed over +-1 h (history only),
  and for PV and price the clear-sky PV power of the step [per unit of rated power] and the
  weather forecast's clear-sky index of the step; for PV also the clear-sky index of the
  same step 1 and 2 days earlier.

Targets: load [kW] and price [EUR/MWh] are standardized with the training period's mean and
standard deviation; PV is expressed per unit of rated power and the model predicts the
clear-sky index, which it multiplies with the clear-sky power, so it never predicts
generation at night.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

import numpy as np
import pandas as pd
from numpy.typing import NDArray

from control_plane.forecast.site import ForecastInputError, ForecastSite
from control_plane.forecast.timeline import STEPS_PER_DAY, Calendar, calendar

FloatArray = NDArray[np.float64]
IntArray = NDArray[np.int64]

HORIZON = STEPS_PER_DAY  #: steps forecast from the cut-off
HISTORY_STEPS = 7 * STEPS_PER_DAY  #: history the inputs read before the cut-off
SMOOTH_HALF_WIDTH = 4  #: half-width of the smoothing window of the 1-day lag [steps]
DAYLIGHT_FRACTION = 0.02  #: clear-sky power share of rated below which a step counts as night


#: The frame columns a forecast reads (history; the ``nwp_*`` forecasts are known at cut-off).
FRAME_COLUMNS = (
    "load_kw",
    "pv_kw",
    "pv_clearsky_kw",
    "price_eur_per_mwh",
    "nwp_air_temp_c",
    "nwp_clear_sky_index",
)


class Target(StrEnum):
    """What is forecast, with the frame column it reads."""

    LOAD = "load"
    PV = "pv"
    PRICE = "price"

    @property
    def column(self) -> str:
        return {"load": "load_kw", "pv": "pv_kw", "price": "price_eur_per_mwh"}[self.value]

    @property
    def unit(self) -> str:
        return {"load": "kW", "pv": "kW", "price": "EUR/MWh"}[self.value]


@dataclass(frozen=True, slots=True)
class Normalizer:
    """``normalized = (value - center) / scale`` in the target's unit."""

    center: float
    scale: float


@dataclass(frozen=True, slots=True)
class Inputs:
    """Model inputs for ``n`` samples: ``day_x`` (n, D), ``step_x`` (n, HORIZON, S) and
    ``multiplier`` (n, HORIZON): what the model output is multiplied by before it is compared
    with the normalized target (clear-sky power per unit for PV, else 1)."""

    day_x: FloatArray
    step_x: FloatArray
    multiplier: FloatArray


@dataclass(frozen=True, slots=True)
class Series:
    """A frame's columns as arrays, its step times ``ts_ms`` [ms since epoch, UTC] and its
    local calendar."""

    values: dict[str, FloatArray]
    ts_ms: IntArray
    cal: Calendar
    site: ForecastSite

    @property
    def steps(self) -> int:
        return len(self.cal.hour)


def series_from_frame(frame: pd.DataFrame, site: ForecastSite) -> Series:
    """Arrays of a generated or loaded history frame."""
    index = pd.DatetimeIndex(frame["ts_utc"])
    values = {c: frame[c].to_numpy(dtype=np.float64) for c in FRAME_COLUMNS}
    ts_ms = np.asarray(index.asi8 // 1_000_000, dtype=np.int64)
    return Series(values, ts_ms, calendar(index, site.tz), site)


def normalizer(series: Series, target: Target, end: int) -> Normalizer:
    """The target's normalizer from steps before ``end`` (the training period only)."""
    if target is Target.PV:
        return Normalizer(0.0, series.site.pv_rated_kw)
    y = series.values[target.column][:end]
    return Normalizer(float(y.mean()), float(max(y.std(), 1e-6)))


def forecast_starts(series: Series) -> IntArray:
    """Cut-off steps (local midnights) with a full history and a full horizon."""
    starts = series.cal.day_starts[:-1]
    ok = (starts >= HISTORY_STEPS) & (starts + HORIZON <= series.steps)
    return np.asarray(starts[ok], dtype=np.int64)


def horizon_index(starts: IntArray, lag: int = 0) -> IntArray:
    """Step positions ``start + t - lag`` for every sample and horizon step, (n, HORIZON)."""
    return np.asarray(starts[:, None] + np.arange(HORIZON)[None, :] - lag, dtype=np.int64)


def truth(series: Series, target: Target, starts: IntArray) -> FloatArray:
    """The target's values over each horizon [unit of the target], (n, HORIZON)."""
    return series.values[target.column][horizon_index(starts)]


def clear_sky_index(series: Series, starts: IntArray, lag: int) -> FloatArray:
    """PV clear-sky index ``lag`` steps before each horizon step; at night the index of the
    whole 24 h before the cut-off (n, HORIZON)."""
    pv, cs = series.values["pv_kw"], series.values["pv_clearsky_kw"]
    idx = horizon_index(starts, lag)
    day = daily_clear_sky_index(series, starts, 1)[:, None]
    lit = cs[idx] > DAYLIGHT_FRACTION * series.site.pv_rated_kw
    ratio = np.divide(pv[idx], cs[idx], out=np.zeros(idx.shape), where=lit)
    return np.where(lit, ratio, day)


def daily_clear_sky_index(series: Series, starts: IntArray, days_back: int) -> FloatArray:
    """PV energy over clear-sky energy in the 24 h that ended ``days_back - 1`` days before
    the cut-off, (n,)."""
    idx = horizon_index(starts, days_back * HORIZON)
    pv = series.values["pv_kw"][idx].sum(axis=1)
    cs = series.values["pv_clearsky_kw"][idx].sum(axis=1)
    return np.asarray(pv / np.maximum(cs, 1e-9), dtype=np.float64)


def build_inputs(series: Series, target: Target, norm: Normalizer, starts: IntArray) -> Inputs:
    """Inputs for the forecasts with cut-offs ``starts`` (see the module docstring)."""
    if len(starts) and (starts.min() < HISTORY_STEPS or starts.max() + HORIZON > series.steps):
        raise ForecastInputError("a cut-off lacks 7 days of history or a full horizon")
    y = (series.values[target.column] - norm.center) / norm.scale
    cs_pu = series.values["pv_clearsky_kw"] / series.site.pv_rated_kw
    idx = horizon_index(starts)
    cal = series.cal
    day_cols = [np.eye(7)[cal.weekday[starts]]]
    doy = 2.0 * np.pi * cal.day_of_year[starts] / 365.25
    day_cols.append(np.stack([np.sin(doy), np.cos(doy)], axis=1))
    day_cols.append(
        np.stack([y[horizon_index(starts, HORIZON * j)].mean(axis=1) for j in range(1, 8)], 1)
    )
    day_cols.append(series.values["nwp_air_temp_c"][idx].mean(axis=1, keepdims=True) / 10.0)
    hour = 2.0 * np.pi * cal.hour[idx] / 24.0
    step_cols = [np.sin(hour), np.cos(hour)]
    step_cols += [y[idx - lag] for lag in (HORIZON, 2 * HORIZON, 7 * HORIZON)]
    window = [
        y[np.minimum(idx - HORIZON + o, starts[:, None] - 1)]
        for o in range(-SMOOTH_HALF_WIDTH, SMOOTH_HALF_WIDTH + 1)
    ]
    step_cols.append(np.mean(window, axis=0))
    multiplier = np.ones(idx.shape)
    if target in (Target.PV, Target.PRICE):
        day_cols.append(
            np.stack([daily_clear_sky_index(series, starts, j) for j in (1, 2, 3)], axis=1)
        )
        step_cols += [cs_pu[idx], series.values["nwp_clear_sky_index"][idx]]
    if target is Target.PV:
        step_cols += [clear_sky_index(series, starts, lag) for lag in (HORIZON, 2 * HORIZON)]
        multiplier = cs_pu[idx]
    return Inputs(
        day_x=np.concatenate(day_cols, axis=1).astype(np.float64),
        step_x=np.stack(step_cols, axis=2).astype(np.float64),
        multiplier=np.asarray(multiplier, dtype=np.float64),
    )
