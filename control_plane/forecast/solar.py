"""Clear-sky irradiance and clear-sky PV power with pvlib (no downloads).

The Ineichen clear-sky model (Linke turbidity from the table shipped with pvlib), the NREL
solar position, isotropic transposition to the plane of array, a cell temperature from the
air temperature and the plane-of-array irradiance, and a linear power model with a
temperature coefficient, clipped at the inverter's rating.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import pvlib
from numpy.typing import NDArray

from control_plane.forecast.site import ForecastSite

FloatArray = NDArray[np.float64]

STC_IRRADIANCE_W_PER_M2 = 1000.0
TEMP_COEFF_PER_K = -0.004  #: relative power change per kelvin of cell temperature [1/K]
CELL_HEATING_K_PER_W_M2 = 0.03  #: cell temperature rise over air per W/m2 on the plane [K m2/W]


@dataclass(frozen=True, slots=True)
class ClearSky:
    """Clear-sky quantities per step: ``ghi_w_per_m2`` and ``poa_w_per_m2`` [W/m2],
    ``elevation_deg`` (apparent solar elevation) [deg], ``pv_kw`` clear-sky PV power [kW]."""

    ghi_w_per_m2: FloatArray
    poa_w_per_m2: FloatArray
    elevation_deg: FloatArray
    pv_kw: FloatArray


def clear_sky(index_utc: pd.DatetimeIndex, site: ForecastSite, air_temp_c: FloatArray) -> ClearSky:
    """Clear-sky irradiance and PV power at the middle of each 15-minute step.

    ``air_temp_c`` [degC] per step sets the cell temperature. PV power is zero whenever the
    sun is below the horizon.
    """
    mid = index_utc + pd.Timedelta(minutes=7.5)
    loc = pvlib.location.Location(
        site.latitude_deg, site.longitude_deg, tz="UTC", altitude=site.altitude_m
    )
    sp = loc.get_solarposition(mid)
    cs = loc.get_clearsky(mid, model="ineichen", solar_position=sp)
    poa = pvlib.irradiance.get_total_irradiance(
        site.pv_tilt_deg,
        site.pv_azimuth_deg,
        sp["apparent_zenith"],
        sp["azimuth"],
        cs["dni"],
        cs["ghi"],
        cs["dhi"],
        model="isotropic",
    )["poa_global"]
    elevation = np.asarray(sp["apparent_elevation"], dtype=np.float64)
    poa_w = np.nan_to_num(np.asarray(poa, dtype=np.float64), nan=0.0).clip(min=0.0)
    poa_w[elevation <= 0.0] = 0.0
    ghi_w = np.asarray(cs["ghi"], dtype=np.float64).clip(min=0.0)
    ghi_w[elevation <= 0.0] = 0.0
    pv_kw = pv_power_kw(poa_w, air_temp_c, site)
    return ClearSky(ghi_w, poa_w, elevation, pv_kw)


def pv_power_kw(poa_w_per_m2: FloatArray, air_temp_c: FloatArray, site: ForecastSite) -> FloatArray:
    """AC power [kW] from plane-of-array irradiance [W/m2] and air temperature [degC]."""
    cell_c = air_temp_c + CELL_HEATING_K_PER_W_M2 * poa_w_per_m2
    derate = 1.0 + TEMP_COEFF_PER_K * (cell_c - 25.0)
    p = site.pv_rated_kw * poa_w_per_m2 / STC_IRRADIANCE_W_PER_M2 * site.pv_system_efficiency
    return np.asarray(np.clip(p * derate, 0.0, site.pv_rated_kw), dtype=np.float64)
