"""The optimizer's fleet is built from gated state only: lies, stale and missing state stay out."""

from __future__ import annotations

from types import MappingProxyType

from control_plane.assets.model import Asset
from control_plane.assets.registry import RegistrySnapshot
from control_plane.gate.gate import FdiGate
from control_plane.optimizer.assets import STEPS
from control_plane.optimizer.from_state import fleet_from_gated_state
from control_plane.state import FleetState
from gridfort.v1 import telemetry_pb2 as tpb
from tests.control_plane.test_gate_temporal import (
    BAT,
    EV,
    PV,
    SOC,
    T0,
    P,
    battery_samples,
    validated,
)

Q = tpb.Quantity


def registry(*assets: Asset) -> RegistrySnapshot:
    return RegistrySnapshot(1, MappingProxyType({a.asset_id: a for a in assets}), frozenset({"s1"}))


def test_honest_battery_is_planned_from_its_gated_soc() -> None:
    gate, state = FdiGate(), FleetState()
    rows, soc = battery_samples(0, 13, -4.0, 40.0)
    state.apply(gate.judge(validated(rows)))
    now = T0 + 130_000
    out = fleet_from_gated_state(registry(BAT), state, now_ms=now)
    assert [b.asset_id for b in out.fleet.batteries] == ["s1-bat"]
    assert out.fleet.batteries[0].soc_init_pct == round(soc, 1)
    assert out.fleet.as_of_ts_ms == now and out.excluded == ()


def test_a_battery_caught_lying_is_left_out_until_the_suspicion_expires() -> None:
    gate, state = FdiGate(), FleetState()
    rows, soc = battery_samples(0, 13, -4.0, 40.0)
    state.apply(gate.judge(validated(rows)))
    t = T0 + 130_000
    state.apply(gate.judge(validated([("s1-bat", P, t, -4.0), ("s1-bat", SOC, t, 90.0)], 2)))
    out = fleet_from_gated_state(registry(BAT), state, now_ms=t + 1000)
    assert out.fleet.batteries == ()
    assert [e.asset_id for e in out.excluded] == ["s1-bat"]
    assert "suspect" in out.excluded[0].reason
    later = t + state.suspect_hold_ms + 1
    out = fleet_from_gated_state(registry(BAT), state, now_ms=later, max_age_ms=10**9)
    assert out.fleet.batteries[0].soc_init_pct == round(soc, 1)  # never the 90 % lie


def test_missing_and_stale_state_and_missing_forecast_are_excluded_with_reasons() -> None:
    gate, state = FdiGate(), FleetState()
    rows, _ = battery_samples(0, 2, 0.0, 50.0)
    state.apply(gate.judge(validated(rows)))
    now = T0 + 60 * 60_000
    out = fleet_from_gated_state(registry(BAT, EV, PV), state, now_ms=now)
    reasons = {e.asset_id: e.reason for e in out.excluded}
    assert reasons["s1-bat"].startswith("gated state_of_charge is 60 min old")
    assert reasons["s1-ev"] == "no gated ev_connected yet"
    assert reasons["s1-pv"] == "no PV forecast"
    out = fleet_from_gated_state(
        registry(PV), state, now_ms=now, pv_forecast_kw={"s1-pv": (1.0,) * STEPS}
    )
    assert [p.asset_id for p in out.fleet.pvs] == ["s1-pv"]


def test_plugged_in_ev_gets_its_owner_target_from_gated_state() -> None:
    gate, state = FdiGate(), FleetState()
    t = T0
    rows = [
        ("s1-ev", Q.QUANTITY_EV_CONNECTED, t, 1.0),
        ("s1-ev", P, t, -11.0),
        ("s1-ev", SOC, t, 30.0),
        ("s1-ev", Q.QUANTITY_EV_TARGET_SOC, t, 80.0),
    ]
    state.apply(gate.judge(validated(rows)))
    out = fleet_from_gated_state(registry(EV), state, now_ms=t + 1000)
    (ev,) = out.fleet.evs
    assert (ev.soc_init_pct, ev.target_soc_pct, ev.deadline_step) == (30.0, 80.0, 28)
