"""A quantile forecast over the day-ahead horizon, valid by construction."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from control_plane.forecast.features import HORIZON, Target
from control_plane.forecast.site import ForecastInputError

FloatArray = NDArray[np.float64]


@dataclass(frozen=True, slots=True)
class QuantileForecast:
    """One target's forecast for the ``HORIZON`` steps after ``start_ts_ms`` [ms since epoch].

    ``quantiles`` are increasing probabilities in (0, 1) (e.g. 0.1, 0.5, 0.9);
    ``values[i]`` holds the ``quantiles[i]`` forecast per step in the target's unit ([kW] for
    load and PV, [EUR/MWh] for price). Values never cross between quantiles.
    """

    target: Target
    start_ts_ms: int
    quantiles: tuple[float, ...]
    values: tuple[tuple[float, ...], ...]

    def __post_init__(self) -> None:
        who = f"forecast {self.target.value}"
        if not self.quantiles or list(self.quantiles) != sorted(set(self.quantiles)):
            raise ForecastInputError(f"{who}: quantiles must be strictly increasing")
        if not all(0.0 < q < 1.0 for q in self.quantiles):
            raise ForecastInputError(f"{who}: quantiles must lie in (0, 1)")
        if len(self.values) != len(self.quantiles):
            raise ForecastInputError(f"{who}: one row of values per quantile")
        for row in self.values:
            if len(row) != HORIZON or not all(math.isfinite(v) for v in row):
                raise ForecastInputError(f"{who}: each row needs {HORIZON} finite values")
        arr = self.array()
        if np.any(np.diff(arr, axis=0) < -1e-9):
            raise ForecastInputError(f"{who}: quantile values cross")

    def array(self) -> FloatArray:
        """Values as an array (quantiles, HORIZON)."""
        return np.asarray(self.values, dtype=np.float64)

    def at(self, quantile: float) -> FloatArray:
        """The forecast at ``quantile`` (one of ``quantiles``), per step."""
        for i, q in enumerate(self.quantiles):
            if math.isclose(q, quantile, abs_tol=1e-9):
                return np.asarray(self.values[i], dtype=np.float64)
        raise ForecastInputError(
            f"forecast {self.target.value}: no quantile {quantile} (has {self.quantiles})"
        )

    @classmethod
    def from_array(
        cls, target: Target, start_ts_ms: int, quantiles: tuple[float, ...], values: FloatArray
    ) -> QuantileForecast:
        """From an array (quantiles, HORIZON)."""
        rows = tuple(tuple(float(v) for v in row) for row in np.asarray(values))
        return cls(target, int(start_ts_ms), tuple(float(q) for q in quantiles), rows)
