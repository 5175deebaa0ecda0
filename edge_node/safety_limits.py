"""Local safety limits: the edge's last word on any setpoint, whoever signed it.

Pure functions of the device's ratings, its latest state and ``now_ms``.
Sign convention: + export/discharge, - import/charge [kW].
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from edge_node.devices.base import AssetKind, DeviceLimits, EvSession

_MS_PER_H = 3_600_000


@dataclass(frozen=True, slots=True)
class SiteLimits:
    """Limits the site owner configured on the gateway, on top of device ratings."""

    max_export_kw: float = math.inf  # site-wide cap for any single setpoint [kW]
    max_import_kw: float = math.inf
    ev_charge_efficiency: float = 0.92


def check_active_power(
    kind: AssetKind,
    p_kw: float,
    limits: DeviceLimits,
    *,
    soc_pct: float | None,
    ev: EvSession | None,
    site: SiteLimits,
    now_ms: int,
) -> str | None:
    """None if ``p_kw`` is safe for this asset now, else a human reason."""
    if not math.isfinite(p_kw):
        return "setpoint is not a finite number"
    if abs(p_kw) > limits.rated_p_kw + 1e-9:
        return f"|{p_kw:.3f}| kW exceeds the rated {limits.rated_p_kw:.3f} kW"
    if p_kw > site.max_export_kw or -p_kw > site.max_import_kw:
        return f"{p_kw:.3f} kW exceeds the site's configured import/export limits"
    if kind is AssetKind.PV_INVERTER:
        return None if p_kw >= 0 else "a PV inverter setpoint is an export cap and must be >= 0"
    if kind is AssetKind.BATTERY:
        return _battery(p_kw, limits, soc_pct)
    if kind is AssetKind.FLEXIBLE_LOAD:
        return None if p_kw <= 0 else "a flexible load cannot export (setpoint must be <= 0)"
    return _ev(p_kw, ev, site, now_ms)


def _battery(p_kw: float, limits: DeviceLimits, soc_pct: float | None) -> str | None:
    if p_kw == 0:
        return None
    if soc_pct is None:
        return "battery state of charge unknown; only 0 kW is allowed"
    if p_kw > 0 and soc_pct <= limits.soc_min_pct:
        return f"battery at {soc_pct:.1f} % may not discharge (minimum {limits.soc_min_pct:.1f} %)"
    if p_kw < 0 and soc_pct >= limits.soc_max_pct:
        return f"battery at {soc_pct:.1f} % may not charge (maximum {limits.soc_max_pct:.1f} %)"
    return None


def _ev(p_kw: float, ev: EvSession | None, site: SiteLimits, now_ms: int) -> str | None:
    if p_kw > 0:
        return "an EV charger cannot export (setpoint must be <= 0)"
    if ev is None or not ev.connected or ev.departure_ms <= 0:
        return None
    if -p_kw > ev.max_charge_kw + 1e-9:
        return f"{-p_kw:.2f} kW exceeds the vehicle's maximum {ev.max_charge_kw:.2f} kW"
    required = required_ev_power_kw(ev, site.ev_charge_efficiency, now_ms)
    if required <= 0:
        return None
    # The owner's target must stay reachable: if it needs more than the charger
    # can give, only full power is acceptable.
    needed = min(required, ev.max_charge_kw)
    if -p_kw + 1e-6 < needed:
        return (
            f"{-p_kw:.2f} kW would miss the owner's target of {ev.target_soc_pct:.0f} % by "
            f"departure (needs at least {needed:.2f} kW)"
        )
    return None


def required_ev_power_kw(ev: EvSession, efficiency: float, now_ms: int) -> float:
    """Constant charging power [kW] needed from now to reach the target at departure."""
    missing_kwh = max(0.0, (ev.target_soc_pct - ev.soc_pct) / 100.0 * ev.e_kwh) / efficiency
    if missing_kwh <= 0:
        return 0.0
    hours_left = (ev.departure_ms - now_ms) / _MS_PER_H
    if hours_left <= 0:
        return math.inf
    return missing_kwh / hours_left


def active_power_bounds(
    kind: AssetKind,
    limits: DeviceLimits,
    *,
    soc_pct: float | None,
    ev: EvSession | None,
    site: SiteLimits,
    now_ms: int,
) -> tuple[float, float] | None:
    """The range [lo, hi] of setpoints [kW] that :func:`check_active_power` allows now,
    or None if no setpoint is safe. Used to clamp local reactions (frequency response),
    which must never wait for a refusal."""
    lo = max(-limits.rated_p_kw, -site.max_import_kw)
    hi = min(limits.rated_p_kw, site.max_export_kw)
    if kind is AssetKind.PV_INVERTER:
        lo = max(lo, 0.0)
    elif kind is AssetKind.BATTERY:
        if soc_pct is None:
            lo, hi = max(lo, 0.0), min(hi, 0.0)
        else:
            if soc_pct <= limits.soc_min_pct:
                hi = min(hi, 0.0)
            if soc_pct >= limits.soc_max_pct:
                lo = max(lo, 0.0)
    elif kind is AssetKind.FLEXIBLE_LOAD:
        hi = min(hi, 0.0)
    else:
        hi = min(hi, 0.0)
        if ev is not None and ev.connected and ev.departure_ms > 0:
            lo = max(lo, -ev.max_charge_kw)
            required = required_ev_power_kw(ev, site.ev_charge_efficiency, now_ms)
            if required > 0:
                hi = min(hi, -min(required, ev.max_charge_kw))
    return (lo, hi) if lo <= hi else None


#: Frequencies a grid may be operated at [Hz].
NOMINAL_HZ = (50.0, 60.0)
MAX_DEADBAND_HZ = 0.5
MAX_TRIGGER_DEPTH_HZ = 2.0  # an FFR trigger further than this below nominal is nonsense
MAX_FFR_DURATION_MS = 60_000


@dataclass(frozen=True, slots=True)
class FrequencyResponseParams:
    """One asset's signed droop/trigger parameters, in canonical units (see command.proto)."""

    nominal_hz: float
    fcr_deadband_hz: float
    fcr_kw_per_hz: float
    fcr_max_kw: float
    ffr_trigger_hz: float
    ffr_p_kw: float
    ffr_duration_ms: int


def check_frequency_arming(
    kind: AssetKind, params: FrequencyResponseParams, limits: DeviceLimits, site: SiteLimits
) -> str | None:
    """None if arming ``params`` on this asset is within local limits, else a human reason.

    State-dependent limits (state of charge, the EV owner's target) are applied again,
    by clamping, at every reaction (:func:`active_power_bounds`)."""
    p = params
    values = (p.nominal_hz, p.fcr_deadband_hz, p.fcr_kw_per_hz, p.fcr_max_kw)
    if not all(math.isfinite(v) for v in (*values, p.ffr_trigger_hz, p.ffr_p_kw)):
        return "frequency response parameters must be finite numbers"
    if kind is not AssetKind.BATTERY:
        return f"frequency response is armed on batteries only, not on a {kind.value}"
    if p.nominal_hz not in NOMINAL_HZ:
        return f"nominal frequency {p.nominal_hz} Hz is neither 50 nor 60 Hz"
    if not 0 <= p.fcr_deadband_hz <= MAX_DEADBAND_HZ:
        return f"FCR deadband {p.fcr_deadband_hz} Hz outside 0..{MAX_DEADBAND_HZ} Hz"
    if p.fcr_kw_per_hz < 0 or p.fcr_max_kw < 0 or p.ffr_p_kw < 0:
        return "droop gain, FCR cap and FFR power must be >= 0"
    room_kw = min(limits.rated_p_kw, site.max_export_kw, site.max_import_kw)
    if p.fcr_max_kw > room_kw + 1e-9:
        return f"FCR cap {p.fcr_max_kw:.3f} kW exceeds the {room_kw:.3f} kW this asset may move"
    if p.ffr_trigger_hz == 0:
        return None if p.ffr_p_kw == 0 else "FFR power without a trigger frequency"
    if (
        not p.nominal_hz - MAX_TRIGGER_DEPTH_HZ
        <= p.ffr_trigger_hz
        < p.nominal_hz - (p.fcr_deadband_hz)
    ):
        return (
            f"FFR trigger {p.ffr_trigger_hz} Hz must lie below the deadband and within "
            f"{MAX_TRIGGER_DEPTH_HZ} Hz of nominal"
        )
    export_kw = min(limits.rated_p_kw, site.max_export_kw)
    if p.ffr_p_kw > export_kw + 1e-9:
        return f"FFR power {p.ffr_p_kw:.3f} kW exceeds the {export_kw:.3f} kW export limit"
    if not 0 < p.ffr_duration_ms <= MAX_FFR_DURATION_MS:
        return f"FFR duration {p.ffr_duration_ms} ms outside 1..{MAX_FFR_DURATION_MS} ms"
    return None
