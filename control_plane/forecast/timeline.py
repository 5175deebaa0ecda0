"""15-minute UTC steps over whole local days, and the local-time calendar of each step.

Series are stored in UTC steps; day boundaries and calendar features use the site's local
time. A local day therefore has 96 steps, 92 on the spring DST day and 100 on the autumn one.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import numpy as np
import pandas as pd
from numpy.typing import NDArray

from control_plane.forecast.site import ForecastInputError

STEP_MINUTES = 15
STEPS_PER_DAY = 96  #: steps in a 24-hour horizon (and in a local day without a DST change)

FloatArray = NDArray[np.float64]
IntArray = NDArray[np.int64]


def utc_steps(start: dt.date, days: int, tz: str) -> pd.DatetimeIndex:
    """UTC timestamps of every 15-minute step from local midnight of ``start`` over ``days``
    local days (end exclusive)."""
    if days < 1:
        raise ForecastInputError(f"days must be at least 1, got {days}")
    first = pd.Timestamp(start).tz_localize(tz)
    last = pd.Timestamp(start + dt.timedelta(days=days)).tz_localize(tz)
    return pd.date_range(
        first, last, freq=f"{STEP_MINUTES}min", inclusive="left", tz=tz
    ).tz_convert("UTC")


@dataclass(frozen=True, slots=True)
class Calendar:
    """Local-time calendar of each UTC step.

    ``hour``: local time of day [h, 0..24), ``weekday`` 0 = Monday, ``day_of_year`` [1..366],
    ``day``: index of the local day the step belongs to (0 = first), ``day_starts``: the
    step position of each local midnight, plus one past the end.
    """

    hour: FloatArray
    weekday: IntArray
    day_of_year: IntArray
    day: IntArray
    day_starts: IntArray

    @property
    def days(self) -> int:
        return len(self.day_starts) - 1

    def steps_in_day(self, day: int) -> int:
        """Number of steps of local day ``day`` (92, 96 or 100)."""
        return int(self.day_starts[day + 1] - self.day_starts[day])


def calendar(index_utc: pd.DatetimeIndex, tz: str) -> Calendar:
    """The local calendar of ``index_utc`` (tz-aware UTC steps) in time zone ``tz``."""
    local = index_utc.tz_convert(tz)
    hour = np.asarray(local.hour + local.minute / 60.0, dtype=np.float64)
    dates = np.asarray(local.normalize().tz_localize(None).values)
    change = np.flatnonzero(np.r_[True, dates[1:] != dates[:-1]])
    day = np.cumsum(np.r_[True, dates[1:] != dates[:-1]]).astype(np.int64) - 1
    return Calendar(
        hour=hour,
        weekday=np.asarray(local.weekday, dtype=np.int64),
        day_of_year=np.asarray(local.dayofyear, dtype=np.int64),
        day=day,
        day_starts=np.r_[change, len(index_utc)].astype(np.int64),
    )
