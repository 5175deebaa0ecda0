"""Photovoltaic array physics for the simulator: a clear-sky-like daily curve. No I/O.

Output follows a half-sine between sunrise and sunset in *local solar time*
(UTC plus a fixed offset), peaking at solar noon, scaled by the rated power and
capped by the inverter's curtailment limit. Time is always passed in, never read.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

MS_PER_HOUR = 3_600_000
MS_PER_DAY = 24 * MS_PER_HOUR


@dataclass(frozen=True, slots=True)
class PvConfig:
    """A PV plant.

    Parameters
    ----------
    rated_kw : float
        Rated AC output [kW], > 0.
    utc_offset_h : float
        Local solar time minus UTC [h], -14..14.
    sunrise_h, sunset_h : float
        Local solar times of sunrise and sunset [h], 0 <= sunrise < sunset <= 24.
    """

    rated_kw: float
    utc_offset_h: float = 0.0
    sunrise_h: float = 6.0
    sunset_h: float = 18.0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.rated_kw) and self.rated_kw > 0):
            raise ValueError(f"PvConfig.rated_kw must be > 0 kW, got {self.rated_kw}")
        if not -14.0 <= self.utc_offset_h <= 14.0:
            raise ValueError(f"PvConfig.utc_offset_h must be in -14..14 h, got {self.utc_offset_h}")
        if not 0.0 <= self.sunrise_h < self.sunset_h <= 24.0:
            raise ValueError(
                f"PvConfig needs 0 <= sunrise_h < sunset_h <= 24, "
                f"got {self.sunrise_h}..{self.sunset_h}"
            )


@dataclass(frozen=True, slots=True)
class PvState:
    """What the plant is doing: output ``p_kw`` [kW], lifetime export ``e_exported_kwh`` [kWh]."""

    p_kw: float
    e_exported_kwh: float


def scaled_time_ms(anchor_ms: int, now_ms: int, time_scale: float) -> int:
    """Simulated time [ms, Unix epoch]: ``anchor_ms`` plus the elapsed time times ``time_scale``.

    With ``time_scale`` 1440 a simulated day passes in one real minute.
    """
    return anchor_ms + round((now_ms - anchor_ms) * time_scale)


def local_hour(ts_ms: int, utc_offset_h: float) -> float:
    """Local solar time of day [h, 0..24) at ``ts_ms`` [ms, Unix epoch UTC]."""
    local_ms = ts_ms + round(utc_offset_h * MS_PER_HOUR)
    return (local_ms % MS_PER_DAY) / MS_PER_HOUR


def clear_sky_fraction(hour: float, sunrise_h: float, sunset_h: float) -> float:
    """Fraction of rated output [0..1] at local ``hour`` [h]; 1 at solar noon, 0 at night."""
    if not sunrise_h < hour < sunset_h:
        return 0.0
    return math.sin(math.pi * (hour - sunrise_h) / (sunset_h - sunrise_h))


def available_kw(cfg: PvConfig, ts_ms: int) -> float:
    """What the array could deliver at ``ts_ms`` without curtailment [kW]."""
    hour = local_hour(ts_ms, cfg.utc_offset_h)
    return cfg.rated_kw * clear_sky_fraction(hour, cfg.sunrise_h, cfg.sunset_h)


def output_kw(cfg: PvConfig, ts_ms: int, cap_kw: float) -> float:
    """Delivered power [kW]: the available power capped at ``cap_kw`` [kW] (>= 0)."""
    return max(0.0, min(available_kw(cfg, ts_ms), cap_kw))


def step_pv(cfg: PvConfig, state: PvState, ts_ms: int, dt_s: float, cap_kw: float) -> PvState:
    """Advance to ``ts_ms`` after ``dt_s`` [s] of simulated time under export cap ``cap_kw``.

    Exported energy integrates the mean of the old and new output (trapezoid rule).
    """
    if dt_s < 0:
        raise ValueError(f"dt_s must be >= 0 s, got {dt_s}")
    p_kw = output_kw(cfg, ts_ms, cap_kw)
    e_kwh = state.e_exported_kwh + (state.p_kw + p_kw) / 2 * dt_s / 3600
    return PvState(p_kw=p_kw, e_exported_kwh=e_kwh)
