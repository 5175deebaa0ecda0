"""The planning cycle: gated state -> plan -> signed setpoints at the sites, on a timer."""

from __future__ import annotations

import asyncio
import json
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from control_plane.assets.grid_limits import GridLimits
from control_plane.assets.model import Asset, AssetKind
from control_plane.assets.registry import AssetRegistry
from control_plane.config import ControlPlaneConfig
from control_plane.dispatch.plan_dispatcher import PlanDispatcher
from control_plane.optimizer.assets import STEPS, DemandResponse, OptimizerInputError
from control_plane.optimizer.market import MarketPrices, MarketRules
from control_plane.planning import (
    PlanningConfig,
    PlanningCycle,
    block_delivery_start,
    ev_owner_steps,
    horizon_start_ms,
    load_window_steps,
    market_block_starts,
    reference_prices,
    steps_until,
)
from control_plane.state import FleetState
from edge_node.devices.base import AssetKind as EdgeKind
from gridfort.v1 import command_pb2 as cpb
from gridfort.v1 import telemetry_pb2 as tpb
from security.clock import ManualClock
from security.refusals import ConfigError
from tests.dispatch.sites import Control, add_site, build_control
from tests.markets.gated_fleet import SOC, P, gated_batch

BERLIN = ZoneInfo("Europe/Berlin")
T0 = int(datetime(2026, 6, 1, 10, 5, tzinfo=UTC).timestamp() * 1000)
ASSETS = (
    Asset("s1-b1", "s1", AssetKind.BATTERY, rated_p_kw=5.0, e_kwh=20.0),
    Asset("s2-b1", "s2", AssetKind.BATTERY, rated_p_kw=5.0, e_kwh=20.0),
    Asset("s2-ev", "s2", AssetKind.EV_CHARGER, rated_p_kw=11.0, e_kwh=60.0),
)
#: Expensive now, cheap afterwards: the batteries discharge in the first quarter-hour.
PEAK_NOW = MarketPrices((300.0,) + (20.0,) * (STEPS - 1), (0.0,) * 6)
CONTINUOUS = PlanningConfig(energy_increment_kw=0, reserve_increment_kw=0)


def ms(year: int, month: int, day: int, hour: int, minute: int) -> int:
    """Berlin wall-clock time -> epoch ms."""
    return int(datetime(year, month, day, hour, minute, tzinfo=BERLIN).timestamp() * 1000)


def test_owner_deadlines_are_local_times_and_follow_dst() -> None:
    """07:00 local from local midnight: 28 steps, 24 on the spring DST day, 32 in autumn."""
    seven = datetime(2026, 1, 1, 7, 0).time()
    assert steps_until(ms(2026, 6, 1, 0, 0), seven, BERLIN) == 28
    assert steps_until(ms(2026, 3, 29, 0, 0), seven, BERLIN) == 24
    assert steps_until(ms(2026, 10, 25, 0, 0), seven, BERLIN) == 32
    assert steps_until(ms(2026, 6, 1, 7, 0), seven, BERLIN) == 96  # now: the next one
    owner = ev_owner_steps(ms(2026, 6, 1, 6, 0), PlanningConfig())
    assert (owner.deadline_step, owner.departure_step) == (4, 8)
    late = ev_owner_steps(ms(2026, 6, 1, 7, 30), PlanningConfig())  # departure passed
    assert (late.deadline_step, late.departure_step) == (94, 96)
    assert horizon_start_ms(T0) == T0 - 5 * 60_000


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        ({"interval_s": 5}, "planning.interval_s"),
        ({"ev_deadline": "7 o'clock"}, "planning.ev_deadline"),
        ({"ev_deadline": "09:00", "ev_departure": "08:00"}, "planning.ev_departure"),
        ({"timezone": "Mars/Olympus"}, "planning.timezone"),
        ({"energy_increment_kw": -1}, "planning.energy_increment_kw"),
        ({"tick": 1}, "unknown field"),
    ],
)
def test_a_bad_planning_section_is_refused_naming_the_field(
    raw: dict[str, Any], field: str
) -> None:
    with pytest.raises(ConfigError, match=field):
        ControlPlaneConfig.from_mapping({"state_dir": ".", "planning": raw}, Path("/tmp"))


def test_a_planning_section_is_parsed() -> None:
    cfg = ControlPlaneConfig.from_mapping(
        {"state_dir": ".", "planning": {"interval_s": 300, "dispatch": False}}, Path("/tmp")
    )
    assert cfg.planning == PlanningConfig(interval_s=300, dispatch=False)
    assert len(reference_prices(T0, MarketRules()).energy_eur_per_mwh) == STEPS


def fleet(tmp_path: Path, clock: ManualClock) -> tuple[Control, AssetRegistry, FleetState]:
    control = build_control(tmp_path, clock)
    add_site(control, tmp_path, clock, "s1", {"s1-b1": EdgeKind.BATTERY})
    add_site(control, tmp_path, clock, "s2", {"s2-b1": EdgeKind.BATTERY})
    registry = AssetRegistry(tmp_path / "registry.db")
    for site in ("s1", "s2"):
        registry.add_site(site, T0)
    registry.add_assets(ASSETS)
    state = FleetState()
    rows = [("s1-b1", SOC, T0 - 1000, 60.0), ("s2-b1", SOC, T0 - 1000, 40.0)]
    state.apply(gated_batch(ASSETS, rows, now_ms=T0))
    return control, registry, state


def cycle_for(
    control: Control,
    registry: AssetRegistry,
    state: FleetState,
    clock: ManualClock,
    config: PlanningConfig = CONTINUOUS,
    prices: Any = lambda start, rules: PEAK_NOW,
    constraints: Any = None,
    grid_limits: GridLimits | None = None,
    arming: Any = None,
) -> PlanningCycle:
    dispatcher = PlanDispatcher(
        groups=control.groups,
        state=state,
        audit=control.audit,
        clock=clock,
        identity=control.signer.signer,
    )
    return PlanningCycle(
        config,
        registry=registry,
        state=state,
        audit=control.audit,
        clock=clock,
        identity=control.signer.signer,
        dispatcher=dispatcher,
        prices=prices,
        constraints=constraints,
        grid_limits=grid_limits,
        arming=arming,
    )


def audit_records(control: Control, event: str) -> list[dict[str, Any]]:
    lines = control.audit.path.read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["event"] == event]


async def test_a_round_plans_only_gated_assets_and_each_step_reaches_the_sites_once(
    tmp_path: Path,
) -> None:
    clock = ManualClock(T0)
    control, registry, state = fleet(tmp_path, clock)
    cycle = cycle_for(control, registry, state, clock)
    record = await cycle.plan_now()
    assert record is not None and record.plan.status == "optimal"
    assert record.plan.asset_ids == ("s1-b1", "s2-b1")
    assert "no gated" in record.excluded["s2-ev"]  # never reported: not planned on
    first = record.plan.p_kw[:, 0]
    assert first.tolist() == pytest.approx([5.0, 5.0])  # the peak is now: full discharge
    (audited,) = audit_records(control, "plan")
    assert audited["details"]["status"] == "optimal"
    assert audited["details"]["assets_excluded"] == 1

    assert await cycle.dispatch_current() is True
    assert await cycle.dispatch_current() is False  # once per quarter-hour
    assert await control.deliver() == 2
    assert control.sites["s1"].setpoint("s1-b1") == pytest.approx(5.0)
    assert control.sites["s2"].setpoint("s2-b1") == pytest.approx(5.0)

    clock.advance(15 * 60_000)  # the next step of the same plan: cheap, no discharge
    assert await cycle.dispatch_current() is True
    await control.deliver()
    expected = record.plan.p_kw[0, 1]
    assert control.sites["s1"].setpoint("s1-b1") == pytest.approx(expected, abs=1e-6)
    assert cycle.status()["dispatched_steps"] == 2


async def test_a_suspect_battery_is_left_out_of_the_plan(tmp_path: Path) -> None:
    clock = ManualClock(T0)
    control, registry, state = fleet(tmp_path, clock)
    lie = [("s2-b1", SOC, T0 - 500, 95.0)]
    state.apply(gated_batch(ASSETS, [], lie, now_ms=T0))
    record = await cycle_for(control, registry, state, clock).plan_now()
    assert record is not None and record.plan.asset_ids == ("s1-b1",)
    assert record.excluded["s2-b1"].startswith("suspect")


async def test_a_failing_input_costs_the_round_keeps_the_plan_and_is_audited(
    tmp_path: Path,
) -> None:
    clock = ManualClock(T0)
    control, registry, state = fleet(tmp_path, clock)
    answers: list[Any] = [PEAK_NOW, ValueError("price feed returned 95 values")]

    def prices(start: int, rules: MarketRules) -> MarketPrices:
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer  # type: ignore[no-any-return]

    cycle = cycle_for(control, registry, state, clock, prices=prices)
    first = await cycle.plan_now()
    assert await cycle.plan_now() is None
    assert cycle.latest is first and cycle.failures == 1
    failed = [r for r in audit_records(control, "plan") if r["decision"] == "deny"]
    assert failed[0]["reason"] == "PLANNING_FAILED"
    assert "95 values" in failed[0]["details"]["error"]


async def test_an_impossible_owner_deadline_gives_a_diagnosed_fallback(tmp_path: Path) -> None:
    """An EV needing 50 kWh within the quarter-hour before 07:00: no plan can deliver it;
    the round still ends with the safe fallback and a diagnosis naming the deadline."""
    clock = ManualClock(ms(2026, 6, 1, 6, 46))
    control, registry, state = fleet(tmp_path, clock)
    now = clock.now_ms()
    rows = [
        ("s1-b1", SOC, now - 1000, 60.0),
        ("s2-b1", SOC, now - 1000, 40.0),
        ("s2-ev", tpb.QUANTITY_EV_CONNECTED, now - 1000, 1.0),
        ("s2-ev", SOC, now - 1000, 10.0),
        ("s2-ev", tpb.QUANTITY_EV_TARGET_SOC, now - 1000, 95.0),
    ]
    state.apply(gated_batch(ASSETS, rows, now_ms=now))
    record = await cycle_for(control, registry, state, clock).plan_now()
    assert record is not None and record.plan.status == "fallback"
    assert any("s2-ev" in d.subjects for d in record.plan.diagnosis)


async def test_the_loop_plans_at_start_dispatches_and_stops_cleanly(tmp_path: Path) -> None:
    clock = ManualClock(T0)
    control, registry, state = fleet(tmp_path, clock)
    cycle = cycle_for(control, registry, state, clock)
    task = asyncio.ensure_future(cycle.run())
    try:
        async with asyncio.timeout(20):
            while cycle.dispatched_steps < 1:
                await asyncio.sleep(0.02)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert cycle.rounds == 1 and len(control.outbox) == 2


async def test_accepted_demand_response_caps_reach_the_plan(tmp_path: Path) -> None:
    """Cheap energy now: the batteries would charge at full power (10 kW of import); an
    accepted OpenADR event caps the fleet's import at 2 kW for the first hour."""
    clock = ManualClock(T0)
    control, registry, state = fleet(tmp_path, clock)
    cheap_now = MarketPrices((5.0,) * 4 + (200.0,) * (STEPS - 4), (0.0,) * 6)
    free = await cycle_for(
        control, registry, state, clock, prices=lambda s, r: cheap_now
    ).plan_now()
    assert free is not None and -free.plan.portfolio_kw()[0] == pytest.approx(10.0)
    seen: list[int] = []

    def caps(start_ms: int) -> tuple[DemandResponse, ...]:
        seen.append(start_ms)
        return (DemandResponse("utility-evt-1", 0, (2.0,) * 4),)

    # as the composition root passes OpenAdrService.active_constraints
    cycle = cycle_for(
        control, registry, state, clock, prices=lambda s, r: cheap_now, constraints=caps
    )
    record = await cycle.plan_now()
    assert record is not None and record.plan.status == "optimal"
    assert seen == [horizon_start_ms(T0)]
    assert (-record.plan.portfolio_kw()[:4] <= 2.0 + 1e-6).all()
    assert record.summary()["demand_response"] == ["utility-evt-1"]


async def test_the_grid_operators_limits_in_the_registry_cap_the_plan(tmp_path: Path) -> None:
    """The peak is now: both batteries would export 5 kW; site s1 may export 2 kW."""
    clock = ManualClock(T0)
    control, registry, state = fleet(tmp_path, clock)
    limits = GridLimits(tmp_path / "registry.db")
    limits.set_site("s1", import_max_kw=10.0, export_max_kw=2.0)
    cycle = cycle_for(control, registry, state, clock, grid_limits=limits)
    record = await cycle.plan_now()
    assert record is not None and record.plan.status == "optimal"
    first = dict(zip(record.plan.asset_ids, record.plan.p_kw[:, 0], strict=True))
    assert first["s1-b1"] == pytest.approx(2.0) and first["s2-b1"] == pytest.approx(5.0)
    limits.close()


async def test_an_unexpected_error_costs_a_turn_never_the_loop(tmp_path: Path) -> None:
    clock = ManualClock(T0)
    control, registry, state = fleet(tmp_path, clock)

    def broken(start: int) -> MarketPrices:
        raise RuntimeError("a bug in a price adapter")

    cycle = cycle_for(control, registry, state, clock, prices=broken)
    task = asyncio.ensure_future(cycle.run())
    try:
        async with asyncio.timeout(20):
            while cycle.failures < 1:
                await asyncio.sleep(0.02)
        await asyncio.sleep(0.2)
        assert not task.done()  # still running
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_each_block_of_the_plan_arms_the_sites_with_its_fcr_capacity(
    tmp_path: Path,
) -> None:
    """FCR pays: the plan holds reserve; the first dispatch of a block also sends every site
    its signed droop parameters, once per block."""
    clock = ManualClock(T0)
    control, registry, state = fleet(tmp_path, clock)
    fcr_pays = MarketPrices((50.0,) * STEPS, (500.0,) * 6)
    cycle = cycle_for(
        control, registry, state, clock, prices=lambda s, r: fcr_pays, arming=control.commands
    )
    record = await cycle.plan_now()
    assert record is not None and record.plan.reserve_kw[:, 0].min() > 0
    assert await cycle.dispatch_current() is True
    arms = [
        (site, cpb.Command.FromString(m.command.payload).arm_frequency_response)
        for site, m in control.outbox
        if cpb.Command.FromString(m.command.payload).HasField("arm_frequency_response")
    ]
    assert sorted(site for site, _ in arms) == ["s1", "s2"] and cycle.armed_sites == 2
    s1 = dict(arms)["s1"]
    assert s1.assets[0].fcr_max_kw == pytest.approx(record.plan.reserve_kw[0, 0])
    control.outbox.clear()
    clock.advance(15 * 60_000)  # the next step of the same block: setpoints, no new arming
    assert await cycle.dispatch_current() is True and cycle.armed_sites == 2


def test_the_load_window_is_the_next_one_or_the_rest_of_the_current_one() -> None:
    cfg = PlanningConfig(load_window="22:00-06:00")
    ahead = load_window_steps(ms(2026, 6, 1, 10, 0), cfg)
    assert (ahead.start_step, ahead.end_step, ahead.share) == (48, 80, 1.0)
    under_way = load_window_steps(ms(2026, 6, 1, 23, 0), cfg)
    assert (under_way.start_step, under_way.end_step) == (0, 28)
    assert under_way.share == pytest.approx(28 / 32)
    with pytest.raises(ConfigError, match=r"planning\.load_window"):
        PlanningConfig(load_window="22:00")


async def test_a_flexible_load_draws_its_daily_energy_within_the_owners_window(
    tmp_path: Path,
) -> None:
    clock = ManualClock(T0)  # 12:05 local: the 22:00-06:00 window is ahead
    control, registry, state = fleet(tmp_path, clock)
    heat = Asset("s2-heat", "s2", AssetKind.FLEXIBLE_LOAD, rated_p_kw=3.0, e_kwh=12.0)
    registry.add_assets([heat])
    cycle = cycle_for(control, registry, state, clock)
    record = await cycle.plan_now()
    assert record is not None and "no gated active_power" in record.excluded["s2-heat"]
    state.apply(gated_batch([*ASSETS, heat], [("s2-heat", P, T0 - 1000, -0.2)], now_ms=T0))
    record = await cycle.plan_now()
    assert record is not None and "s2-heat" in record.plan.asset_ids
    row = record.plan.p_kw[record.plan.asset_ids.index("s2-heat")]
    window = load_window_steps(record.horizon_start_ms, cycle.config)
    inside = row[window.start_step : window.end_step]
    assert -inside.sum() * 0.25 == pytest.approx(12.0, abs=1e-3)  # its 12 kWh, imported
    assert abs(row).sum() == pytest.approx(abs(inside).sum(), abs=1e-6)  # none outside
    assert (inside >= -3.0 - 1e-6).all()  # never above its 3 kW


def test_the_reserve_blocks_are_the_markets_local_4h_blocks_and_follow_dst() -> None:
    """00:00, 04:00, ... local start a block; the horizon's first (partial) block is the one
    under way; the local block that holds a DST change lasts 3 or 5 hours."""
    assert market_block_starts(ms(2026, 6, 1, 12, 0), BERLIN) == (0, 16, 32, 48, 64, 80)
    # 13:15 local: 11 steps to 16:00, then every 16 steps, a partial block at the end
    assert market_block_starts(ms(2026, 6, 1, 13, 15), BERLIN) == (0, 11, 27, 43, 59, 75, 91)
    # spring: 00:00-04:00 is 3 h on 29 March (12 steps); autumn: 5 h on 25 October
    assert market_block_starts(ms(2026, 3, 29, 0, 0), BERLIN)[:3] == (0, 12, 28)
    assert market_block_starts(ms(2026, 10, 25, 0, 0), BERLIN)[:3] == (0, 20, 36)
    assert market_block_starts(ms(2026, 3, 28, 22, 0), BERLIN)[:3] == (0, 8, 20)
    # UTC horizons in the optimizer, local blocks in the market: rules carry them
    rules = replace(MarketRules(), block_starts=(0, 11, 27, 43, 59, 75, 91))
    assert rules.blocks == 7 and rules.block_steps().tolist() == [11, 16, 16, 16, 16, 16, 5]
    assert rules.step_block()[10:12].tolist() == [0, 1]
    with pytest.raises(OptimizerInputError, match="block_starts"):
        replace(MarketRules(), block_starts=(3, 16))


async def test_a_plan_inside_a_market_block_holds_reserve_per_local_block_and_arms_it(
    tmp_path: Path,
) -> None:
    """At 13:20 local the plan's first block runs to 16:00 local: its FCR is armed for
    exactly that window, the next block's from 16:00, and capacity is paid per block hour."""
    start_local = ms(2026, 6, 1, 13, 20)
    clock = ManualClock(start_local)
    control, registry, state = fleet(tmp_path, clock)
    rows = [("s1-b1", SOC, start_local - 1000, 60.0), ("s2-b1", SOC, start_local - 1000, 40.0)]
    state.apply(gated_batch(ASSETS, rows, now_ms=start_local))
    seen: list[MarketRules] = []

    def prices(start: int, rules: MarketRules) -> MarketPrices:
        seen.append(rules)
        return MarketPrices((50.0,) * STEPS, (500.0,) * rules.blocks)

    cycle = cycle_for(control, registry, state, clock, prices=prices, arming=control.commands)
    record = await cycle.plan_now()
    assert record is not None and seen[0] is record.rules
    assert record.rules.block_starts == (0, 11, 27, 43, 59, 75, 91)
    assert record.plan.reserve_kw.shape == (2, 7) and record.plan.reserve_kw[:, 0].min() > 0
    assert await cycle.dispatch_current() is True

    def armed() -> list[cpb.ArmFrequencyResponse]:
        out = [
            cpb.Command.FromString(m.command.payload).arm_frequency_response
            for _, m in control.outbox
            if cpb.Command.FromString(m.command.payload).HasField("arm_frequency_response")
        ]
        control.outbox.clear()
        return out

    first = armed()
    assert len(first) == 2
    assert {(a.active_from_ms, a.active_until_ms) for a in first} == {
        (ms(2026, 6, 1, 13, 15), ms(2026, 6, 1, 16, 0))
    }
    clock.set(ms(2026, 6, 1, 16, 0))  # the next local block: armed again, from 16:00 to 20:00
    assert await cycle.dispatch_current() is True
    assert {(a.active_from_ms, a.active_until_ms) for a in armed()} == {
        (ms(2026, 6, 1, 16, 0), ms(2026, 6, 1, 20, 0))
    }


def test_the_block_under_way_starts_at_the_last_local_boundary() -> None:
    assert block_delivery_start(ms(2026, 6, 1, 13, 20), BERLIN) == ms(2026, 6, 1, 12, 0)
    assert block_delivery_start(ms(2026, 6, 1, 12, 0), BERLIN) == ms(2026, 6, 1, 12, 0)
    # the spring DST day: 00:00-04:00 local lasts 3 h
    assert block_delivery_start(ms(2026, 3, 29, 3, 45), BERLIN) == ms(2026, 3, 29, 0, 0)


async def test_reserve_already_sold_is_held_by_every_re_plan(tmp_path: Path) -> None:
    """The market awarded 2 kW of FCR for 12:00-16:00 local (sold before the horizon
    started); FCR pays nothing now, yet the 13:20 re-plan holds the award in that block
    and arms it, and nothing in blocks without an award."""
    start_local = ms(2026, 6, 1, 13, 20)
    clock = ManualClock(start_local)
    control, registry, state = fleet(tmp_path, clock)
    rows = [("s1-b1", SOC, start_local - 1000, 60.0), ("s2-b1", SOC, start_local - 1000, 40.0)]
    state.apply(gated_batch(ASSETS, rows, now_ms=start_local))
    asked: list[tuple[str, int]] = []

    def sold(product: Any, delivery_start_ms: int) -> float:
        asked.append((product.value, delivery_start_ms))
        return 2.0 if (product.value, delivery_start_ms) == ("fcr", ms(2026, 6, 1, 12, 0)) else 0

    cycle = PlanningCycle(
        CONTINUOUS,
        registry=registry,
        state=state,
        audit=control.audit,
        clock=clock,
        identity=control.signer.signer,
        prices=lambda s, r: MarketPrices((50.0,) * STEPS, (0.0,) * r.blocks),
        positions=sold,
    )
    record = await cycle.plan_now()
    assert record is not None and record.plan.status != "fallback"
    assert record.rules.sold_fcr_kw == (2.0,) + (0.0,) * 6
    held = record.plan.reserve_kw.sum(axis=0)
    assert held[0] == pytest.approx(2.0, abs=1e-6) and held[1:].max() == pytest.approx(0.0)
    assert ("fcr", ms(2026, 6, 1, 12, 0)) in asked and ("afrr_pos", ms(2026, 6, 1, 16, 0)) in asked
