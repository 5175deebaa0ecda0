"""Frequency response, the pure core, and the safety bounds that clamp every reaction."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edge_node.devices.base import AssetKind, DeviceLimits, EvSession
from edge_node.frequency_control import ResponseState, clamp, fcr_response_kw, react
from edge_node.safety_limits import (
    FrequencyResponseParams,
    SiteLimits,
    active_power_bounds,
    check_active_power,
    check_frequency_arming,
)

NOW = 1_800_000_000_000
BAT = DeviceLimits(rated_p_kw=5.0, e_kwh=10.0, soc_min_pct=10.0, soc_max_pct=90.0)
PARAMS = FrequencyResponseParams(
    nominal_hz=50.0,
    fcr_deadband_hz=0.01,
    fcr_kw_per_hz=10.0,
    fcr_max_kw=1.5,
    ffr_trigger_hz=49.7,
    ffr_p_kw=4.0,
    ffr_duration_ms=2_000,
)


def test_no_fcr_response_inside_the_deadband() -> None:
    assert fcr_response_kw(PARAMS, 50.0) == 0.0
    assert fcr_response_kw(PARAMS, 50.01) == 0.0
    assert fcr_response_kw(PARAMS, 49.99) == 0.0


def test_fcr_droop_is_proportional_beyond_the_deadband_and_capped() -> None:
    assert fcr_response_kw(PARAMS, 49.91) == pytest.approx(0.8)  # under-frequency: export more
    assert fcr_response_kw(PARAMS, 50.06) == pytest.approx(-0.5)  # over-frequency: export less
    assert fcr_response_kw(PARAMS, 49.5) == pytest.approx(1.5)  # the capacity sold
    assert fcr_response_kw(PARAMS, 50.8) == pytest.approx(-1.5)


def test_ffr_fires_once_at_the_trigger_and_holds_for_its_duration() -> None:
    state = ResponseState()
    r = react(PARAMS, state, 49.8, 0.0)
    assert not r.ffr_fired and r.response_kw == pytest.approx(1.5)
    r = react(PARAMS, r.state, 49.7, 1.0)
    assert r.ffr_fired and r.response_kw == 4.0
    r = react(PARAMS, r.state, 49.6, 1.5)  # still low: no new activation
    assert not r.ffr_fired and r.response_kw == 4.0
    r = react(PARAMS, r.state, 49.6, 3.1)  # duration over: only the droop remains
    assert not r.ffr_fired and r.response_kw == pytest.approx(1.5)
    r = react(PARAMS, r.state, 49.72, 3.2)  # within the re-arm hysteresis: still latched
    assert r.state.ffr_latched
    r = react(PARAMS, r.state, 49.9, 3.3)  # recovered
    assert not r.state.ffr_latched
    r = react(PARAMS, r.state, 49.65, 4.0)  # a new dip: a new activation
    assert r.ffr_fired and r.response_kw == 4.0


@pytest.mark.parametrize("hz", [0.0, math.nan, math.inf, 44.0, 56.0])
def test_an_implausible_reading_never_fires(hz: float) -> None:
    r = react(PARAMS, ResponseState(), hz, 0.0)
    assert (r.plausible, r.ffr_fired, r.response_kw) == (False, False, 0.0)


def test_without_a_trigger_there_is_no_ffr() -> None:
    params = FrequencyResponseParams(50.0, 0.0, 10.0, 2.0, 0.0, 0.0, 0)
    r = react(params, ResponseState(), 49.0, 0.0)
    assert not r.ffr_fired and r.response_kw == 2.0


# -- safety: what a reaction may write ----------------------------------------------------


def bounds(kind: AssetKind, limits: DeviceLimits, soc: float | None, **site: float) -> object:
    return active_power_bounds(
        kind, limits, soc_pct=soc, ev=None, site=SiteLimits(**site), now_ms=NOW
    )


def test_bounds_follow_ratings_soc_and_site_limits() -> None:
    assert bounds(AssetKind.BATTERY, BAT, 50.0) == (-5.0, 5.0)
    assert bounds(AssetKind.BATTERY, BAT, 10.0) == (-5.0, 0.0)  # empty: no discharge
    assert bounds(AssetKind.BATTERY, BAT, 95.0) == (0.0, 5.0)  # full: no charge
    assert bounds(AssetKind.BATTERY, BAT, None) == (0.0, 0.0)
    assert bounds(AssetKind.BATTERY, BAT, 50.0, max_export_kw=2.0) == (-5.0, 2.0)
    assert bounds(AssetKind.PV_INVERTER, DeviceLimits(10.0), None) == (0.0, 10.0)
    assert bounds(AssetKind.EV_CHARGER, DeviceLimits(11.0), None) == (-11.0, 0.0)
    assert clamp(7.0, (-5.0, 5.0)) == 5.0
    assert clamp(1.0, None) is None


@given(
    kind=st.sampled_from(list(AssetKind)),
    p=st.floats(-20, 20),
    soc=st.one_of(st.none(), st.floats(0, 100)),
    export=st.floats(0, 20),
    imp=st.floats(0, 20),
    ev_soc=st.floats(0, 100),
    hours=st.floats(0.1, 12),
)
def test_bounds_agree_with_the_setpoint_check(
    kind: AssetKind,
    p: float,
    soc: float | None,
    export: float,
    imp: float,
    ev_soc: float,
    hours: float,
) -> None:
    """Every value inside the bounds passes ``check_active_power``; every value it refuses
    lies outside them (a reaction can never write what a command could not)."""
    limits = DeviceLimits(rated_p_kw=11.0, e_kwh=10.0, soc_min_pct=10.0, soc_max_pct=90.0)
    ev = EvSession(True, ev_soc, 80.0, NOW + int(hours * 3_600_000), 60.0, 7.4)
    site = SiteLimits(max_export_kw=export, max_import_kw=imp)
    ev_ = ev if kind is AssetKind.EV_CHARGER else None
    b = active_power_bounds(kind, limits, soc_pct=soc, ev=ev_, site=site, now_ms=NOW)
    refused = check_active_power(kind, p, limits, soc_pct=soc, ev=ev_, site=site, now_ms=NOW)
    inside = b is not None and b[0] + 1e-6 <= p <= b[1] - 1e-6
    outside = b is None or p < b[0] - 1e-6 or p > b[1] + 1e-6
    if inside:
        assert refused is None, (b, p, refused)
    if refused is None:
        assert not outside, (b, p)


def arming(**changes: float) -> FrequencyResponseParams:
    values = {
        "nominal_hz": 50.0,
        "fcr_deadband_hz": 0.01,
        "fcr_kw_per_hz": 10.0,
        "fcr_max_kw": 2.0,
        "ffr_trigger_hz": 49.7,
        "ffr_p_kw": 3.0,
        "ffr_duration_ms": 5_000,
        **changes,
    }
    return FrequencyResponseParams(**values)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("changes", "problem"),
    [
        ({}, None),
        ({"ffr_trigger_hz": 0.0, "ffr_p_kw": 0.0}, None),
        ({"nominal_hz": 55.0}, "neither 50 nor 60"),
        ({"fcr_deadband_hz": 0.6}, "deadband"),
        ({"fcr_max_kw": 5.5}, "FCR cap"),
        ({"fcr_kw_per_hz": -1.0}, ">= 0"),
        ({"fcr_kw_per_hz": math.nan}, "finite"),
        ({"ffr_trigger_hz": 50.1}, "FFR trigger"),
        ({"ffr_trigger_hz": 47.5}, "FFR trigger"),
        ({"ffr_trigger_hz": 49.995}, "FFR trigger"),
        ({"ffr_p_kw": 6.0}, "FFR power"),
        ({"ffr_duration_ms": 0}, "FFR duration"),
        ({"ffr_duration_ms": 600_000}, "FFR duration"),
        ({"ffr_trigger_hz": 0.0, "ffr_p_kw": 1.0}, "without a trigger"),
    ],
)
def test_arming_is_checked_against_local_limits(
    changes: dict[str, float], problem: str | None
) -> None:
    found = check_frequency_arming(AssetKind.BATTERY, arming(**changes), BAT, SiteLimits())
    if problem is None:
        assert found is None
    else:
        assert found is not None and problem in found


def test_arming_respects_site_limits_and_asset_kind() -> None:
    tight = SiteLimits(max_export_kw=1.0)
    assert "FCR cap" in (check_frequency_arming(AssetKind.BATTERY, arming(), BAT, tight) or "")
    pv = check_frequency_arming(AssetKind.PV_INVERTER, arming(), DeviceLimits(10.0), SiteLimits())
    assert pv is not None and "batteries only" in pv
