"""Local safety limits: ratings, SOC bounds, PV caps, the EV owner's target."""

from __future__ import annotations

import math

from edge_node.devices.base import AssetKind, DeviceLimits, EvSession
from edge_node.safety_limits import SiteLimits, check_active_power, required_ev_power_kw

NOW = 1_800_000_000_000
H = 3_600_000
BAT = DeviceLimits(rated_p_kw=5.0, e_kwh=10.0, soc_min_pct=10.0, soc_max_pct=90.0)
PV = DeviceLimits(rated_p_kw=10.0)
EV = DeviceLimits(rated_p_kw=11.0, e_kwh=60.0)


def check(
    kind: AssetKind,
    p: float,
    limits: DeviceLimits,
    soc: float | None = 50.0,
    ev: EvSession | None = None,
    site: SiteLimits | None = None,
) -> str | None:
    return check_active_power(
        kind, p, limits, soc_pct=soc, ev=ev, site=site or SiteLimits(), now_ms=NOW
    )


def test_within_limits_is_allowed() -> None:
    assert check(AssetKind.BATTERY, 4.0, BAT) is None
    assert check(AssetKind.BATTERY, -5.0, BAT) is None
    assert check(AssetKind.PV_INVERTER, 6.0, PV) is None


def test_above_rated_power_is_refused() -> None:
    assert "exceeds the rated" in (check(AssetKind.BATTERY, 5.5, BAT) or "")
    assert check(AssetKind.BATTERY, math.nan, BAT) == "setpoint is not a finite number"


def test_battery_soc_bounds() -> None:
    assert "may not discharge" in (check(AssetKind.BATTERY, 1.0, BAT, soc=10.0) or "")
    assert "may not charge" in (check(AssetKind.BATTERY, -1.0, BAT, soc=90.0) or "")
    assert check(AssetKind.BATTERY, 0.0, BAT, soc=None) is None
    assert "unknown" in (check(AssetKind.BATTERY, 1.0, BAT, soc=None) or "")


def test_pv_cap_must_not_be_negative() -> None:
    assert check(AssetKind.PV_INVERTER, -1.0, PV) is not None


def test_site_limits_apply() -> None:
    assert check(AssetKind.BATTERY, 4.0, BAT, site=SiteLimits(max_export_kw=3.0)) is not None


def test_ev_target_must_stay_reachable() -> None:
    # 40 % -> 80 % of 60 kWh = 24 kWh / 0.92 = 26.1 kWh in 4 h: needs 6.52 kW
    ev = EvSession(True, 40.0, 80.0, NOW + 4 * H, 60.0, 11.0)
    assert math.isclose(required_ev_power_kw(ev, 0.92, NOW), 26.0869 / 4, rel_tol=1e-3)
    assert check(AssetKind.EV_CHARGER, -7.0, EV, ev=ev) is None
    assert "would miss the owner's target" in (check(AssetKind.EV_CHARGER, -3.0, EV, ev=ev) or "")
    assert check(AssetKind.EV_CHARGER, 1.0, EV, ev=ev) is not None  # no export


def test_ev_target_unreachable_requires_full_power() -> None:
    ev = EvSession(True, 10.0, 80.0, NOW + 1 * H, 60.0, 11.0)
    assert check(AssetKind.EV_CHARGER, -11.0, EV, ev=ev) is None
    assert check(AssetKind.EV_CHARGER, -10.0, EV, ev=ev) is not None


def test_ev_without_session_accepts_any_charging_power() -> None:
    assert check(AssetKind.EV_CHARGER, -2.0, EV, ev=None) is None
