"""The forecast site: location, PV plant and load size, validated once on construction."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from security.refusals import GridfortError


class ForecastInputError(GridfortError, ValueError):
    """A forecasting input is invalid; the message names the field."""


def _check(name: str, value: float, lo: float, hi: float) -> None:
    if not (math.isfinite(value) and lo <= value <= hi):
        raise ForecastInputError(f"site: {name} = {value!r} must be within [{lo}, {hi}]")


@dataclass(frozen=True, slots=True)
class ForecastSite:
    """A site with a PV plant and a load.

    ``latitude_deg``/``longitude_deg`` [deg], ``altitude_m`` [m], ``tz`` an IANA time zone
    (calendar features and day boundaries use it). The PV plant: ``pv_rated_kw`` [kW] (AC
    limit, DC assumed equal), ``pv_tilt_deg`` [deg from horizontal], ``pv_azimuth_deg``
    [deg, 180 = south], ``pv_system_efficiency`` [-] (wiring, soiling, inverter).
    ``load_mean_kw`` [kW] is the load's long-run mean. The default is a commercial site in
    Berlin with 100 kW of PV.
    """

    latitude_deg: float = 52.52
    longitude_deg: float = 13.40
    altitude_m: float = 34.0
    tz: str = "Europe/Berlin"
    pv_rated_kw: float = 100.0
    pv_tilt_deg: float = 30.0
    pv_azimuth_deg: float = 180.0
    pv_system_efficiency: float = 0.86
    load_mean_kw: float = 60.0

    def __post_init__(self) -> None:
        _check("latitude_deg", self.latitude_deg, -66.0, 66.0)
        _check("longitude_deg", self.longitude_deg, -180.0, 180.0)
        _check("altitude_m", self.altitude_m, -500.0, 6000.0)
        _check("pv_rated_kw", self.pv_rated_kw, 0.1, 1e6)
        _check("pv_tilt_deg", self.pv_tilt_deg, 0.0, 90.0)
        _check("pv_azimuth_deg", self.pv_azimuth_deg, 0.0, 360.0)
        _check("pv_system_efficiency", self.pv_system_efficiency, 0.3, 1.0)
        _check("load_mean_kw", self.load_mean_kw, 0.1, 1e6)
        try:
            ZoneInfo(self.tz)
        except (ZoneInfoNotFoundError, ValueError) as e:
            raise ForecastInputError(f"site: tz {self.tz!r} is not a known IANA time zone") from e

    def to_json(self) -> dict[str, Any]:
        """The site as a JSON-able dict (the dataset and artifact metadata)."""
        return asdict(self)

    @classmethod
    def from_json(cls, raw: Any) -> ForecastSite:
        """A site from :meth:`to_json` output; ``ForecastInputError`` if it is not one."""
        if not isinstance(raw, dict):
            raise ForecastInputError("site: expected an object")
        try:
            return cls(**raw)
        except TypeError as e:
            raise ForecastInputError(f"site: unexpected fields ({e})") from None
