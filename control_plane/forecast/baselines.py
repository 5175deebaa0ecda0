"""Reference forecasts every model is scored against, from history before the cut-off only.

* persistence: the value of the same step 24 h (96 steps) earlier;
* smart persistence (PV): the clear-sky index of the same step 24 h earlier times the
  clear-sky power of the step (the whole previous day's index where the sun was low or down
  24 h earlier).

Steps are UTC steps, so on a DST day "24 h earlier" is one hour off the local clock.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from control_plane.forecast.features import (
    HORIZON,
    Series,
    Target,
    clear_sky_index,
    horizon_index,
)

FloatArray = NDArray[np.float64]
IntArray = NDArray[np.int64]


def persistence(series: Series, target: Target, starts: IntArray) -> FloatArray:
    """Yesterday's value of each horizon step [target unit], (n, HORIZON)."""
    return series.values[target.column][horizon_index(starts, HORIZON)]


def smart_persistence_pv(series: Series, starts: IntArray) -> FloatArray:
    """Yesterday's clear-sky index times today's clear-sky PV power [kW], (n, HORIZON)."""
    cs = series.values["pv_clearsky_kw"][horizon_index(starts)]
    return np.asarray(clear_sky_index(series, starts, HORIZON) * cs, dtype=np.float64)
