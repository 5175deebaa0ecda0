"""Reserve blocks of uneven length: a rolling horizon that starts inside a market block, a
DST day. The exact and the aggregated model hold every block's reserve over exactly its
own steps, and capacity is paid per block hour."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from control_plane.optimizer.aggregation import schedule_aggregated
from control_plane.optimizer.assets import DT_H, STEPS, FleetState, OptimizerInputError
from control_plane.optimizer.check import check_plan
from control_plane.optimizer.market import MarketPrices, MarketRules, synthetic_prices
from control_plane.optimizer.revenue import evaluate
from control_plane.optimizer.schedule import schedule
from control_plane.optimizer.synthetic import synthetic_fleet
from tests.optimizer.test_afrr import big_battery

pytestmark = pytest.mark.timeout(120)

#: 13:15 local: 11 steps to 16:00, four whole blocks, 16:00 -> 00:00 ... and 5 steps to 13:15.
STARTS = (0, 11, 27, 43, 59, 75, 91)


def rules(**kw: float) -> MarketRules:
    return MarketRules(block_starts=STARTS, **kw)  # type: ignore[arg-type]


def prices(seed: int) -> MarketPrices:
    day = synthetic_prices(seed, afrr=True)
    fcr = day.fcr_eur_per_mw_h
    up, down = day.afrr_up_eur_per_mw_h, day.afrr_down_eur_per_mw_h
    seven = (0, 1, 2, 3, 4, 5, 0)  # any per-block price; 7 of them
    return MarketPrices(
        day.energy_eur_per_mwh,
        tuple(fcr[i] for i in seven),
        tuple(up[i] for i in seven),
        tuple(down[i] for i in seven),
    )


def test_capacity_is_paid_per_block_hour() -> None:
    """One battery, FCR only: 2 MW held in every block pays price x MW x the block's hours."""
    fleet = FleetState(batteries=(big_battery(),))
    fcr = (10.0, 20.0, 30.0, 40.0, 50.0, 60.0, 70.0)
    p = MarketPrices((50.0,) * STEPS, fcr)
    plan = schedule(fleet, p, rules())
    assert check_plan(fleet, plan, rules()) == []
    held = plan.reserve_kw.sum(axis=0)
    assert held == pytest.approx([2000.0] * 7, abs=1e-6)
    hours = np.diff(np.append(STARTS, STEPS)) * DT_H
    expected = float(np.dot(held / 1000.0 * hours, fcr))
    assert evaluate(fleet, plan, p, rules()).reserve_eur == pytest.approx(expected)


@pytest.mark.parametrize("increment", [0.0, 1000.0])
def test_exact_and_aggregated_plans_hold_uneven_blocks(increment: float) -> None:
    fleet = synthetic_fleet(100, seed=11)
    r = rules(energy_increment_kw=increment / 10, reserve_increment_kw=increment)
    day = prices(11)
    exact = schedule(fleet, day, r, time_limit_s=30)
    agg = schedule_aggregated(fleet, day, r, time_limit_s=30)
    for plan in (exact, agg):
        assert plan.status != "fallback"
        assert plan.reserve_kw.shape == (len(fleet.batteries), 7)
        assert check_plan(fleet, plan, r) == []
    gap = 1 - evaluate(fleet, agg, day, r).total_eur / evaluate(fleet, exact, day, r).total_eur
    assert gap < 0.05


def test_a_plan_for_uneven_blocks_is_checked_against_them() -> None:
    """The checker expands each block over its own steps: a plan whose reserve fits the even
    split but not the uneven one is caught."""
    fleet = FleetState(batteries=(big_battery(p_max_kw=2000.0),))
    even = MarketRules()
    p = MarketPrices((50.0,) * STEPS, (0.0,) * 6)
    plan = schedule(fleet, p, even)
    # discharge at full power in step 12 (block 0 of the uneven split ends at step 11)
    moved = plan.p_kw.copy()
    moved[0, :] = 0.0
    moved[0, 12] = 2000.0
    reserve = np.zeros((1, 7))
    reserve[0, 1] = 1000.0  # held in steps 11..26, where step 12 leaves no headroom
    bad = replace(plan, p_kw=moved, reserve_kw=reserve, afrr_up_kw=np.zeros((1, 7)),
                  afrr_down_kw=np.zeros((1, 7)))  # fmt: skip
    found = {v.constraint for v in check_plan(fleet, bad, rules())}
    assert "fcr.headroom_up" in found


# -- positions already sold: a re-plan keeps them -------------------------------------------


def test_sold_fcr_is_held_even_where_it_no_longer_pays() -> None:
    fleet = FleetState(batteries=(big_battery(),))
    free = MarketPrices((50.0,) * STEPS, (0.0,) * 7)
    sold = (1000.0, 0.0, 0.0, 0.0, 0.0, 0.0, 2000.0)
    r = replace(rules(), sold_fcr_kw=sold)
    plan = schedule(fleet, free, r)
    assert plan.status != "fallback"
    held = plan.reserve_kw.sum(axis=0)
    assert held[0] >= 1000.0 - 1e-6 and held[6] >= 2000.0 - 1e-6
    assert check_plan(fleet, plan, r) == []
    unsold = schedule(fleet, free, rules())
    assert check_plan(fleet, unsold, r) != []  # a plan that drops the position is caught
    assert {v.constraint for v in check_plan(fleet, unsold, r)} == {"market.sold_fcr_kw"}


@pytest.mark.parametrize("big", [False, True])
def test_sold_afrr_is_held_without_an_afrr_price(big: bool) -> None:
    """Exact and aggregated; continuous on a mixed fleet (328 kW of batteries), whole 1 MW
    lots on a utility battery."""
    day = synthetic_prices(3)  # no aFRR prices at all
    seven = (0, 1, 2, 3, 4, 5, 0)
    no_afrr = MarketPrices(day.energy_eur_per_mwh, tuple(day.fcr_eur_per_mw_h[i] for i in seven))
    if big:
        fleet = FleetState(batteries=(big_battery(),))
        r, up, down = rules(energy_increment_kw=100.0, reserve_increment_kw=1000.0), 1000.0, 1000.0
        no_afrr = MarketPrices((50.0,) * STEPS, no_afrr.fcr_eur_per_mw_h)  # a quick MILP
    else:
        fleet = synthetic_fleet(120, seed=3)
        r, up, down = rules(energy_increment_kw=0.0, reserve_increment_kw=0.0), 100.0, 80.0
    r = replace(r, sold_afrr_up_kw=(up,) + (0.0,) * 6, sold_afrr_down_kw=(0.0,) * 6 + (down,))
    for plan in (
        schedule(fleet, no_afrr, r, time_limit_s=10),
        schedule_aggregated(fleet, no_afrr, r, time_limit_s=10),
    ):
        assert plan.status != "fallback", plan.diagnosis
        assert plan.afrr_up_kw.sum(axis=0)[0] >= up - 1e-6
        assert plan.afrr_down_kw.sum(axis=0)[6] >= down - 1e-6
        assert check_plan(fleet, plan, r) == []


def test_a_position_the_fleet_cannot_hold_is_diagnosed() -> None:
    fleet = FleetState(batteries=(big_battery(),))  # 2 MW
    r = replace(rules(), sold_fcr_kw=(5000.0,) + (0.0,) * 6)
    plan = schedule(fleet, MarketPrices((50.0,) * STEPS, (0.0,) * 7), r)
    assert plan.status == "fallback"
    assert "market.sold_fcr" in {d.constraint for d in plan.diagnosis}


def test_sold_positions_are_validated() -> None:
    with pytest.raises(OptimizerInputError, match="sold_fcr_kw needs 7"):
        replace(rules(), sold_fcr_kw=(1.0,) * 6)
    with pytest.raises(OptimizerInputError, match="sold_afrr_up_kw"):
        replace(rules(), sold_afrr_up_kw=(float("nan"),) * 7)
    with pytest.raises(OptimizerInputError, match="whole 1000 kW lots"):
        replace(rules(), sold_fcr_kw=(1500.0,) + (0.0,) * 6)
