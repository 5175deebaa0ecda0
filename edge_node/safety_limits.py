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
