"""Battery physics for the simulator: state of charge integrates power. No I/O.

Sign convention (the project's one): ``p_kw`` > 0 discharges (exports),
``p_kw`` < 0 charges (imports). Power is AC-side at the inverter terminals; the
cells see it through the charge/discharge efficiency. State of charge stays
within [soc_min_pct, soc_max_pct]: at a bound the battery stops, it does not
overshoot.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class BatteryConfig:
    """A battery.

    Parameters
    ----------
    rated_kw : float
        Maximum |AC power| for charge and discharge [kW], > 0.
    e_kwh : float
        Usable energy capacity at 100 % state of charge [kWh], > 0.
    soc_min_pct, soc_max_pct : float
        State-of-charge window [%], 0 <= min < max <= 100.
    charge_efficiency, discharge_efficiency : float
        One-way efficiencies (0, 1]: AC->cells when charging, cells->AC when discharging.
    nominal_v : float
        Nominal DC bus voltage [V], > 0.
    """

    rated_kw: float
    e_kwh: float
    soc_min_pct: float = 5.0
    soc_max_pct: float = 95.0
    charge_efficiency: float = 0.95
    discharge_efficiency: float = 0.95
    nominal_v: float = 400.0

    def __post_init__(self) -> None:
        for name in ("rated_kw", "e_kwh", "nominal_v"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"BatteryConfig.{name} must be > 0, got {value}")
        if not 0.0 <= self.soc_min_pct < self.soc_max_pct <= 100.0:
            raise ValueError(
                f"BatteryConfig needs 0 <= soc_min_pct < soc_max_pct <= 100, "
                f"got {self.soc_min_pct}..{self.soc_max_pct}"
            )
        for name in ("charge_efficiency", "discharge_efficiency"):
            value = getattr(self, name)
            if not 0.0 < value <= 1.0:
                raise ValueError(f"BatteryConfig.{name} must be in (0, 1], got {value}")


@dataclass(frozen=True, slots=True)
class BatteryState:
    """State: ``soc_pct`` [%], AC power ``p_kw`` [kW, + discharge], lifetime AC
    energy counters ``e_charged_kwh`` and ``e_discharged_kwh`` [kWh]."""

    soc_pct: float
    p_kw: float = 0.0
    e_charged_kwh: float = 0.0
    e_discharged_kwh: float = 0.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.soc_pct <= 100.0:
            raise ValueError(f"BatteryState.soc_pct must be in 0..100 %, got {self.soc_pct}")


def _charge(cfg: BatteryConfig, state: BatteryState, p_kw: float, dt_h: float) -> BatteryState:
    room_kwh = max(0.0, (cfg.soc_max_pct - state.soc_pct) / 100 * cfg.e_kwh)
    full = -p_kw * dt_h >= room_kwh / cfg.charge_efficiency  # the window ends this step
    ac_kwh = room_kwh / cfg.charge_efficiency if full else -p_kw * dt_h
    stored_kwh = ac_kwh * cfg.charge_efficiency
    soc = (
        max(state.soc_pct, cfg.soc_max_pct)
        if full
        else state.soc_pct + stored_kwh / cfg.e_kwh * 100
    )
    return BatteryState(
        soc_pct=soc,
        p_kw=0.0 if full else p_kw,
        e_charged_kwh=state.e_charged_kwh + ac_kwh,
        e_discharged_kwh=state.e_discharged_kwh,
    )


def _discharge(cfg: BatteryConfig, state: BatteryState, p_kw: float, dt_h: float) -> BatteryState:
    avail_kwh = max(0.0, (state.soc_pct - cfg.soc_min_pct) / 100 * cfg.e_kwh)
    empty = p_kw * dt_h >= avail_kwh * cfg.discharge_efficiency  # the window ends this step
    ac_kwh = avail_kwh * cfg.discharge_efficiency if empty else p_kw * dt_h
    drawn_kwh = ac_kwh / cfg.discharge_efficiency
    soc = (
        min(state.soc_pct, cfg.soc_min_pct)
        if empty
        else state.soc_pct - drawn_kwh / cfg.e_kwh * 100
    )
    return BatteryState(
        soc_pct=soc,
        p_kw=0.0 if empty else p_kw,
        e_charged_kwh=state.e_charged_kwh,
        e_discharged_kwh=state.e_discharged_kwh + ac_kwh,
    )


def step_battery(
    cfg: BatteryConfig, state: BatteryState, p_cmd_kw: float, dt_s: float
) -> BatteryState:
    """Hold the commanded AC power ``p_cmd_kw`` [kW] for ``dt_s`` [s] of simulated time.

    The command is clipped to +-``rated_kw``. If a state-of-charge bound is reached
    within the step, the battery stops there and reports 0 kW. ``dt_s`` = 0 just
    applies the new command (still 0 kW at a bound).
    """
    if dt_s < 0 or not math.isfinite(dt_s):
        raise ValueError(f"dt_s must be a finite number >= 0 s, got {dt_s}")
    if not math.isfinite(p_cmd_kw):
        raise ValueError(f"p_cmd_kw must be finite, got {p_cmd_kw}")
    p_kw = max(-cfg.rated_kw, min(cfg.rated_kw, p_cmd_kw))
    dt_h = dt_s / 3600
    if p_kw < 0:
        return _charge(cfg, state, p_kw, dt_h)
    if p_kw > 0:
        return _discharge(cfg, state, p_kw, dt_h)
    return BatteryState(state.soc_pct, 0.0, state.e_charged_kwh, state.e_discharged_kwh)


def dc_voltage_v(cfg: BatteryConfig, soc_pct: float) -> float:
    """DC bus voltage [V]: linear from 90 % of nominal when empty to 105 % when full."""
    return cfg.nominal_v * (0.90 + 0.15 * soc_pct / 100)


def dc_power_kw(cfg: BatteryConfig, p_ac_kw: float) -> float:
    """Power at the cells [kW, + discharge] for AC power ``p_ac_kw`` [kW]."""
    if p_ac_kw >= 0:
        return p_ac_kw / cfg.discharge_efficiency
    return p_ac_kw * cfg.charge_efficiency
