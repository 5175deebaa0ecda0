"""aFRR through the planning cycle: the operator's signal activates the capacity the plan
reserved in the current block, as signed setpoints the sites' executors apply; never beyond
the reservation, replaced by the next request, ended by 0, by its duration or its block."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from control_plane.dispatch.activation import ActivationEvent
from control_plane.dispatch.afrr import AfrrActivation
from control_plane.optimizer.assets import STEPS
from control_plane.optimizer.market import MarketPrices, MarketRules
from control_plane.planning import PlanningConfig
from security.clock import ManualClock
from security.refusals import Reason, Refusal
from tests.control_plane.test_planning import CONTINUOUS, T0, cycle_for, fleet

OPERATOR = "spiffe://dispatch.test/operator/bob"


def afrr_pays(up: float = 40.0, down: float = 0.0) -> Any:
    """Flat energy (no arbitrage), no FCR: aFRR capacity is the only income."""

    def prices(start: int, rules: MarketRules) -> MarketPrices:
        n = rules.blocks
        return MarketPrices((50.0,) * STEPS, (0.0,) * n, (up,) * n, (down,) * n)

    return prices


def audit(tmp_path: Path, event: str) -> list[dict[str, Any]]:
    lines = (tmp_path / "audit.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["event"] == event]


async def planned(tmp_path: Path, config: PlanningConfig = CONTINUOUS, **kw: Any) -> Any:
    clock = ManualClock(T0)
    control, registry, state = fleet(tmp_path, clock)
    cycle = cycle_for(control, registry, state, clock, config, prices=afrr_pays(**kw))
    record = await cycle.plan_now()
    assert record is not None
    assert await cycle.dispatch_current() is True
    await control.deliver()
    return clock, control, cycle, record


def setpoints(control: Any) -> dict[str, float | None]:
    return {
        a: site.setpoint(a)
        for site in control.sites.values()
        for a in site.devices  # type: ignore[misc]
    }


async def test_an_activation_moves_the_reserved_batteries_pro_rata_and_no_further(
    tmp_path: Path,
) -> None:
    _, control, cycle, record = await planned(tmp_path)
    base = setpoints(control)
    up = record.plan.afrr_up_kw[:, 0]
    assert up.min() > 0 and cycle.afrr_status()["reserved_up_kw"] == pytest.approx(up.sum())
    half = float(up.sum()) / 2
    got = await cycle.activate_afrr(ActivationEvent("tso-1", half, 300.0), OPERATOR)
    assert isinstance(got, AfrrActivation)
    assert got.delivered_kw == pytest.approx(half) and got.shortfall_kw == pytest.approx(0)
    assert await control.deliver() == 2  # both sites' batteries hold some
    moved = setpoints(control)
    for row, asset in enumerate(("s1-b1", "s2-b1")):
        assert moved[asset] == pytest.approx(base[asset] + up[row] / 2, abs=1e-6)
    assert cycle.status()["afrr"]["active"]["activation_id"] == "tso-1"
    # plan-vs-actual now judges the activated setpoints (the rest of the site unchanged)
    tracked = cycle._dispatcher._sites["s1"].expected  # type: ignore[union-attr]
    assert tracked["s1-b1"].p_kw == pytest.approx(base["s1-b1"] + up[0] / 2, abs=1e-6)

    # more than reserved: saturates at the reservation, the shortfall is reported
    big = await cycle.activate_afrr(ActivationEvent("tso-2", 10 * half, 300.0), OPERATOR)
    assert isinstance(big, AfrrActivation)
    assert big.delivered_kw == pytest.approx(2 * half)
    assert big.shortfall_kw == pytest.approx(8 * half)
    await control.deliver()
    full = setpoints(control)
    for row, asset in enumerate(("s1-b1", "s2-b1")):
        assert full[asset] == pytest.approx(base[asset] + up[row], abs=1e-6)
        assert full[asset] <= 5.0 + 1e-6  # within the battery's rating: the plan's headroom

    # 0 ends it: the plan's setpoints again
    end = await cycle.activate_afrr(ActivationEvent("tso-3", 0.0, 60.0), OPERATOR)
    assert isinstance(end, AfrrActivation) and cycle.afrr is None
    await control.deliver()
    assert setpoints(control) == pytest.approx(base)
    records = audit(tmp_path, "afrr_activation")
    assert [r["details"]["activation_id"] for r in records] == ["tso-1", "tso-2", "tso-3"]
    assert records[1]["identity"] == OPERATOR and records[1]["details"]["shortfall_kw"] > 0


async def test_an_activation_ends_by_itself_and_holds_across_quarter_hours(
    tmp_path: Path,
) -> None:
    clock, control, cycle, record = await planned(tmp_path)
    base = setpoints(control)
    got = await cycle.activate_afrr(ActivationEvent("tso-1", 1.0, 1200.0), OPERATOR)
    assert isinstance(got, AfrrActivation)
    await control.deliver()
    clock.advance(15 * 60_000)  # the next quarter-hour is sent with the activation in it
    assert await cycle.dispatch_current() is True
    await control.deliver()
    next_step = setpoints(control)
    assert (
        sum(next_step.values())
        == pytest.approx(  # type: ignore[arg-type]
            sum(record.plan.p_kw[:2, 1]) + 1.0, abs=1e-6
        )
    )
    clock.advance(6 * 60_000)  # 21 min > 20 min: over
    assert await cycle.end_afrr_if_due() is True and cycle.afrr is None
    await control.deliver()
    assert (
        sum(setpoints(control).values())
        == pytest.approx(  # type: ignore[arg-type]
            sum(record.plan.p_kw[:2, 1]), abs=1e-6
        )
    )
    assert base  # the first step's base was the plan's
    ended = audit(tmp_path, "afrr_activation_end")
    assert ended and ended[0]["details"]["activation_id"] == "tso-1"


async def test_an_activation_ends_with_its_reserve_block(tmp_path: Path) -> None:
    clock, _, cycle, record = await planned(tmp_path)
    end = record.horizon_start_ms + int(record.rules.block_steps()[0]) * 15 * 60_000
    clock.set(end - 10 * 60_000)  # 15:50 local: the block ends at 16:00
    got = await cycle.activate_afrr(ActivationEvent("tso-1", 1.0, 3600.0), OPERATOR)
    assert isinstance(got, AfrrActivation)
    assert got.until_ms == end and got.summary()["ends_with_block"] is True
    short = await cycle.activate_afrr(ActivationEvent("tso-2", 1.0, 60.0), OPERATOR)
    assert isinstance(short, AfrrActivation) and short.until_ms == end - 9 * 60_000


async def test_without_reserve_that_way_or_without_a_plan_it_is_refused_and_audited(
    tmp_path: Path,
) -> None:
    _, _, cycle, _ = await planned(tmp_path, down=0.0)  # only aFRR up pays
    down = await cycle.activate_afrr(ActivationEvent("tso-1", -1.0, 60.0), OPERATOR)
    assert isinstance(down, Refusal) and down.reason is Reason.AFRR_NOT_AVAILABLE
    assert "down" in down.message
    denied = audit(tmp_path, "afrr_activation")
    assert denied[-1]["decision"] == "deny" and denied[-1]["reason"] == "AFRR_NOT_AVAILABLE"

    clock = ManualClock(T0)
    other = tmp_path / "other"
    other.mkdir()
    control, registry, state = fleet(other, clock)
    fresh = cycle_for(control, registry, state, clock, prices=afrr_pays())
    none = await fresh.activate_afrr(ActivationEvent("tso-2", 1.0, 60.0), OPERATOR)
    assert isinstance(none, Refusal) and "no plan" in none.message
    plan_only = cycle_for(
        control,
        registry,
        state,
        clock,
        PlanningConfig(energy_increment_kw=0, reserve_increment_kw=0, dispatch=False),
        prices=afrr_pays(),
    )
    await plan_only.plan_now()
    refused = await plan_only.activate_afrr(ActivationEvent("tso-3", 1.0, 60.0), OPERATOR)
    assert isinstance(refused, Refusal) and "does not dispatch" in refused.message


async def test_concurrent_requests_are_applied_in_order(tmp_path: Path) -> None:
    """Two requests at once: the later one is what every site ends with (a fan-out that
    yields while signing never lets the earlier request overtake it)."""
    _, control, cycle, record = await planned(tmp_path)
    base = setpoints(control)
    up = record.plan.afrr_up_kw[:, 0]
    first, second = await asyncio.gather(
        cycle.activate_afrr(ActivationEvent("tso-1", float(up.sum()), 300.0), OPERATOR),
        cycle.activate_afrr(ActivationEvent("tso-2", float(up.sum()) / 4, 300.0), OPERATOR),
    )
    assert isinstance(first, AfrrActivation) and isinstance(second, AfrrActivation)
    await control.deliver()
    final = setpoints(control)
    for row, asset in enumerate(("s1-b1", "s2-b1")):
        assert final[asset] == pytest.approx(base[asset] + up[row] / 4, abs=1e-6)
    assert cycle.afrr is not None and cycle.afrr.event.activation_id == "tso-2"
