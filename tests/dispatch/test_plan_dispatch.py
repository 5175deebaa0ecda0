"""Plan -> dispatch: the current quarter-hour as signed group setpoints, acknowledgements,
plan-vs-actual from gated telemetry, and the flag on a site that does not follow."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from control_plane.dispatch.follow import FollowPolicy, Verdict
from control_plane.dispatch.plan_dispatcher import PlanDispatcher
from control_plane.dispatch.plan_setpoints import QUARTER_HOUR_MS, plan_step, step_at
from control_plane.ingest.types import GatedBatch, GateEvidence, QuarantinedMeasurement
from control_plane.optimizer.assets import STEPS, Battery, EvSession, FleetState, FlexibleLoad, Pv
from control_plane.optimizer.plan import Plan
from control_plane.state import FleetState as GatedState
from edge_node.devices.base import AssetKind
from gridfort.v1 import telemetry_pb2 as tpb
from security.clock import ManualClock
from security.refusals import Reason
from tests.dispatch.sites import Control, add_site, build_control

DAY = 1_800_000_000_000 - 1_800_000_000_000 % 86_400_000
P = tpb.QUANTITY_ACTIVE_POWER
POLICY = FollowPolicy(grace_ms=60_000, settle_ms=5_000, max_age_ms=30_000, ack_timeout_ms=10_000)


def fleet() -> FleetState:
    return FleetState(
        batteries=(Battery("b1", "s1", 20.0, 10.0, 50.0), Battery("b2", "s2", 20.0, 10.0, 50.0)),
        evs=(EvSession("e1", "s2", 60.0, 7.4, 0, 40, 50.0, 80.0, 28),),
        pvs=(Pv("p1", "s1", (6.0,) * STEPS), Pv("p2", "s2", (3.0,) * STEPS)),
        loads=(FlexibleLoad("l1", "s1", 2.0, 2.0, 0, 96),),
    )


def plan(f: FleetState) -> Plan:
    """b1 +4, b2 -3, e1 -7.4, l1 -1, p1 curtailed to 2 (forecast 6), p2 uncurtailed (3)."""
    rows = {"b1": 4.0, "b2": -3.0, "e1": -7.4, "l1": -1.0, "p1": 2.0, "p2": 3.0}
    p_kw = np.array([[rows[a]] * STEPS for a in f.asset_ids])
    return Plan(f.asset_ids, p_kw, np.zeros((2, 6)), "optimal", bids=True)


RATED = {"p1": 8.0, "p2": 5.0}


def test_step_at_finds_the_quarter_hour() -> None:
    assert step_at(DAY, DAY) == 0
    assert step_at(DAY, DAY + QUARTER_HOUR_MS - 1) == 0
    assert step_at(DAY, DAY + 95 * QUARTER_HOUR_MS) == 95
    assert step_at(DAY, DAY - 1) is None
    assert step_at(DAY, DAY + 96 * QUARTER_HOUR_MS) is None


def test_plan_step_makes_setpoints_and_caps_per_site() -> None:
    f = fleet()
    out = plan_step(plan(f), f, 3, day_start_ms=DAY, rated_kw=RATED)
    assert (out.start_ms, out.end_ms) == (DAY + 3 * QUARTER_HOUR_MS, DAY + 4 * QUARTER_HOUR_MS)
    by_site = {s.site_id: dict(zip(s.asset_ids, s.p_kw, strict=True)) for s in out.sections}
    assert by_site == {
        "s1": {"b1": 4.0, "p1": 2.0, "l1": -1.0},
        "s2": {"b2": -3.0, "e1": -7.4, "p2": 5.0},
    }
    assert out.expected["p1"].mode == "cap" and out.expected["b1"].mode == "setpoint"
    assert out.expected["l1"].mode == "draw_limit"  # a hot tank drawing less follows
    assert out.skipped == {}
    unrated = plan_step(plan(f), f, 3, day_start_ms=DAY, rated_kw={})
    assert "rating unknown" in unrated.skipped["p2"]
    assert unrated.expected["p1"].p_kw == 2.0  # a curtailment needs no rating


@pytest.mark.parametrize(
    ("planned_kw", "rated", "expected_kw"),
    [
        (-1.5, {}, -1.5),  # within [-p_max, 0]: as planned
        (-5.0, {}, -2.0),  # beyond the load's maximum draw (p_max_kw 2)
        (0.7, {}, 0.0),  # a load cannot export
        (-5.0, {"l1": 1.2}, -1.2),  # the registry's lower rating bounds it too
    ],
)
def test_flexible_loads_are_dispatched_clipped_to_their_draw(
    planned_kw: float, rated: dict[str, float], expected_kw: float
) -> None:
    f = fleet()
    p = plan(f)
    p.p_kw[f.asset_ids.index("l1"), :] = planned_kw
    out = plan_step(p, f, 10, day_start_ms=DAY, rated_kw={**RATED, **rated})
    s1 = next(s for s in out.sections if s.site_id == "s1")
    assert dict(zip(s1.asset_ids, s1.p_kw, strict=True))["l1"] == expected_kw
    assert out.expected["l1"].p_kw == expected_kw


def test_a_plan_for_another_fleet_is_refused() -> None:
    f = fleet()
    other = Plan(("x",), np.zeros((1, STEPS)), np.zeros((0, 6)), "optimal", bids=False)
    with pytest.raises(ValueError, match="not made for this fleet"):
        plan_step(other, f, 0, day_start_ms=DAY, rated_kw=RATED)


def telemetry(state: GatedState, ts_ms: int, values: dict[str, float], suspect: str = "") -> None:
    rows = [(a, P, ts_ms, v) for a, v in values.items()]
    quarantined = []
    if suspect:
        evidence = GateEvidence("temporal:test", "1", 9.0, 1.0)
        quarantined.append(
            QuarantinedMeasurement(
                0, suspect, P, ts_ms, 99.0, Reason.FDI_TEMPORAL_INCONSISTENT, evidence
            )
        )
    state.apply(GatedBatch(None, rows, quarantined, "test"))  # type: ignore[arg-type]


def setup(tmp_path: Path) -> tuple[Control, PlanDispatcher, GatedState, ManualClock]:
    clock = ManualClock(DAY + 2 * QUARTER_HOUR_MS + 60_000)
    control = build_control(tmp_path, clock)
    add_site(
        control,
        tmp_path,
        clock,
        "s1",
        {"b1": AssetKind.BATTERY, "p1": AssetKind.PV_INVERTER, "l1": AssetKind.FLEXIBLE_LOAD},
    )
    add_site(
        control,
        tmp_path,
        clock,
        "s2",
        {"b2": AssetKind.BATTERY, "e1": AssetKind.EV_CHARGER, "p2": AssetKind.PV_INVERTER},
    )
    state = GatedState()
    dispatcher = PlanDispatcher(
        groups=control.groups,
        state=state,
        audit=control.audit,
        clock=clock,
        identity=control.signer.signer,
        policy=POLICY,
    )
    return control, dispatcher, state, clock


def flags(control: Control) -> list[tuple[str, str, str]]:
    lines = control.audit.path.read_text().splitlines()
    records = [json.loads(line) for line in lines]
    return [
        (r["event"], r["details"]["site"], r["reason"])
        for r in records
        if r["event"].startswith("dispatch_site_")
    ]


async def test_the_current_step_is_applied_and_a_deviating_site_is_flagged(
    tmp_path: Path,
) -> None:
    control, dispatcher, state, clock = setup(tmp_path)
    f = fleet()
    sent = await dispatcher.dispatch_async(plan(f), f, day_start_ms=DAY, rated_kw=RATED)
    assert sent is not None
    setpoints, report = sent
    assert setpoints.step == 2 and report.signatures == 1 and report.sites_sent == 2
    assert report.expires_ms == setpoints.end_ms  # valid until the quarter-hour ends
    assert {s: st.verdict for s, st in dispatcher.evaluate().items()} == {
        "s1": Verdict.AWAITING,
        "s2": Verdict.AWAITING,
    }
    await control.deliver()
    assert control.sites["s1"].setpoint("b1") == 4.0
    assert control.sites["s1"].setpoint("l1") == -1.0  # the edge applied the load's draw
    assert control.sites["s2"].setpoint("e1") == -7.4
    statuses = dispatcher.evaluate()
    assert statuses["s1"].verdict is Verdict.UNOBSERVABLE  # no gated telemetry yet
    assert statuses["s1"].result_deviation_kw == 0.0
    # s1 follows (PV below its cap is fine); s2's battery stays at 0 instead of -3
    t = clock.now_ms() + 6_000
    clock.set(t)
    telemetry(state, t, {"b1": 3.9, "p1": 1.0, "l1": -1.0, "b2": 0.0, "e1": -7.4, "p2": 2.5})
    statuses = dispatcher.evaluate()
    assert statuses["s1"].verdict is Verdict.FOLLOWING
    assert statuses["s2"].verdict is Verdict.DEVIATING
    assert statuses["s2"].deviation_kw == pytest.approx(3.0)
    assert statuses["s2"].tolerance_kw == pytest.approx(1.04)  # 10 % of 3 + 7.4 kW
    clock.set(t + 61_000)
    row = {"b1": 4.0, "p1": 1.0, "l1": -1.0, "b2": 0.0, "e1": -7.4, "p2": 2.5}
    telemetry(state, t + 60_000, row)
    assert dispatcher.evaluate()["s2"].verdict is Verdict.NOT_FOLLOWING
    assert dispatcher.flagged() == {"s2": Verdict.NOT_FOLLOWING}
    dispatcher.evaluate()  # still flagged: audited once
    clock.set(t + 70_000)
    telemetry(state, t + 69_000, {**row, "b2": -2.9})
    assert dispatcher.evaluate()["s2"].verdict is Verdict.FOLLOWING
    assert flags(control) == [
        ("dispatch_site_flagged", "s2", Reason.DISPATCH_NOT_FOLLOWED.value),
        ("dispatch_site_cleared", "s2", ""),
    ]


async def test_a_silent_site_is_flagged_and_a_suspect_one_is_not_judged(tmp_path: Path) -> None:
    control, dispatcher, state, clock = setup(tmp_path)
    f = fleet()
    assert (
        await dispatcher.dispatch_async(plan(f), f, day_start_ms=DAY, rated_kw=RATED)
    ) is not None
    await control.deliver(skip=frozenset({"s2"}))
    t = clock.now_ms() + 11_000
    clock.set(t)
    telemetry(state, t - 1_000, {"b1": 4.0, "p1": 2.0}, suspect="p1")
    statuses = dispatcher.evaluate()
    assert statuses["s2"].verdict is Verdict.NO_ACK
    assert statuses["s1"].verdict is Verdict.UNOBSERVABLE
    assert "suspect" in statuses["s1"].note
    assert flags(control) == [
        ("dispatch_site_flagged", "s2", Reason.DISPATCH_NOT_ACKNOWLEDGED.value)
    ]


async def test_entries_the_edge_refused_are_reported_not_judged(tmp_path: Path) -> None:
    control, dispatcher, state, clock = setup(tmp_path)
    f = fleet()
    p = plan(f)
    p.p_kw[f.asset_ids.index("b2"), :] = -50.0  # beyond the battery's 10 kW rating
    assert (await dispatcher.dispatch_async(p, f, day_start_ms=DAY, rated_kw=RATED)) is not None
    await control.deliver()
    assert [(a.site_id, a.status) for a in control.acks] == [("s1", "applied"), ("s2", "partial")]
    t = clock.now_ms() + 6_000
    clock.set(t)
    telemetry(state, t, {"b1": 4.0, "p1": 2.0, "l1": -1.0, "b2": 0.0, "e1": -7.4, "p2": 3.0})
    s2 = dispatcher.evaluate()["s2"]
    assert s2.refused == {"b2": Reason.COMMAND_UNSAFE.value}
    assert s2.verdict is Verdict.FOLLOWING  # judged on e1 and p2 only


async def test_outside_the_plan_day_nothing_is_sent(tmp_path: Path) -> None:
    control, dispatcher, _, clock = setup(tmp_path)
    clock.set(DAY + 96 * QUARTER_HOUR_MS)
    f = fleet()
    assert (await dispatcher.dispatch_async(plan(f), f, day_start_ms=DAY, rated_kw=RATED)) is None
    assert control.outbox == []
