"""check_plan verifies aFRR on its own: headroom with FCR, energy held per direction, lots;
exact, lot-repaired and aggregated plans with aFRR prices pass it."""

from __future__ import annotations

import numpy as np
import pytest

from control_plane.optimizer.aggregation import schedule_aggregated
from control_plane.optimizer.assets import STEPS, Battery, FleetState
from control_plane.optimizer.check import Violation, check_plan
from control_plane.optimizer.constraints import build_tables
from control_plane.optimizer.fallback import fallback_plan
from control_plane.optimizer.lots import floor_reserve, lot_path, reallocate_reserves, storage_ok
from control_plane.optimizer.market import MarketPrices, MarketRules, synthetic_prices
from control_plane.optimizer.plan import Plan
from control_plane.optimizer.schedule import TableSolution, schedule
from control_plane.optimizer.synthetic import synthetic_fleet

pytestmark = pytest.mark.timeout(90)

RULES = MarketRules()
CONTINUOUS = MarketRules(energy_increment_kw=0.0, reserve_increment_kw=0.0)


def battery(soc: float = 50.0, e_kwh: float = 10.0) -> Battery:
    """``e_kwh`` [kWh], 10 kW, SOC 10-90 %, lossless."""
    return Battery("b1", "s1", e_kwh, 10.0, soc_init_pct=soc, eta_charge=1.0, eta_discharge=1.0)


Kw = float | np.ndarray


def hand_plan(
    fleet: FleetState, *, p: Kw = 0.0, fcr: Kw = 0.0, up: Kw = 0.0, down: Kw = 0.0
) -> Plan:
    """A one-battery plan: power per step, FCR and aFRR per block [kW] (scalars: every one)."""

    def rows(x: Kw, n: int) -> np.ndarray:
        return np.broadcast_to(np.asarray(x, dtype=np.float64), (n,))[None, :].copy()

    return Plan(
        fleet.asset_ids, rows(p, STEPS), rows(fcr, 6), "optimal", True,
        afrr_up_kw=rows(up, 6), afrr_down_kw=rows(down, 6),
    )  # fmt: skip


def names(violations: list[Violation]) -> set[str]:
    return {v.constraint for v in violations}


def test_check_catches_afrr_headroom_beyond_the_rating_together_with_fcr() -> None:
    """6 kW FCR and 6 kW aFRR up are each within 10 kW, together not; down likewise."""
    fleet = FleetState(batteries=(battery(),))
    assert check_plan(fleet, hand_plan(fleet, fcr=4.0, up=4.0, down=4.0), CONTINUOUS) == []
    got = check_plan(fleet, hand_plan(fleet, fcr=6.0, up=6.0), CONTINUOUS)
    assert "afrr.headroom_up" in names(got) and "fcr.headroom_up" not in names(got)
    # 100 kWh: charging at 3 kW through block 0 (back in block 1) leaves 7 kW to cut the
    # import and 10 kW to export on call (up), but only 7 kW to import more (down).
    big = FleetState(batteries=(battery(50.0, e_kwh=100.0),))
    p = np.zeros(STEPS)
    p[:16], p[16:32] = -3.0, 3.0
    block0 = np.array([4.0, 0, 0, 0, 0, 0])
    got = check_plan(big, hand_plan(big, p=p, fcr=block0, down=block0), CONTINUOUS)
    assert names(got) == {"afrr.headroom_down"} and len(got) == 16  # 3 + 4 + 4 > 10
    ok = hand_plan(big, p=p, fcr=block0, up=block0 * 2.25)  # -3 + 4 + 9 = 10: just fits
    assert check_plan(big, ok, CONTINUOUS) == []


def test_check_catches_afrr_energy_not_held() -> None:
    """At 15 % (1.5 kWh, floor 1 kWh) 0.5 h of 2 kW up needs 1 kWh above the floor; at 85 %
    (ceiling 9 kWh) 0.5 h of 2 kW down needs 1 kWh of room. FCR's energy adds to aFRR's."""
    low = FleetState(batteries=(battery(15.0),))
    got = check_plan(low, hand_plan(low, up=2.0), CONTINUOUS)
    assert names(got) == {"afrr.energy_up"} and len(got) == 2 * STEPS  # before and after
    assert check_plan(low, hand_plan(low, up=1.0), CONTINUOUS) == []
    assert check_plan(low, hand_plan(low, down=5.0), CONTINUOUS) == []
    got = check_plan(low, hand_plan(low, fcr=0.6, up=0.6), CONTINUOUS)  # 0.6 alone holds
    assert names(got) == {"afrr.energy_up"}
    high = FleetState(batteries=(battery(85.0),))
    assert names(check_plan(high, hand_plan(high, down=2.0), CONTINUOUS)) == {"afrr.energy_down"}
    assert check_plan(high, hand_plan(high, up=5.0), CONTINUOUS) == []


def test_check_catches_afrr_lots_negative_and_shape() -> None:
    fleet = FleetState(batteries=(battery(),))
    got = check_plan(fleet, hand_plan(fleet, up=0.5), RULES)
    assert {(v.subject, v.constraint) for v in got} == {
        ("portfolio", "market.afrr_up_increment_kw")
    }
    assert len(got) == 6  # every block
    got = check_plan(fleet, hand_plan(fleet, down=-1.0), CONTINUOUS)
    assert "afrr.nonnegative" in names(got)
    bad = Plan(
        fleet.asset_ids, np.zeros((1, STEPS)), np.zeros((1, 6)), "optimal", True,
        afrr_up_kw=np.ones((1, 4)),
    )  # fmt: skip
    assert "plan.afrr_shape" in names(check_plan(fleet, bad, CONTINUOUS))
    nan = hand_plan(fleet, up=float("nan"))
    assert names(check_plan(fleet, nan, CONTINUOUS)) == {"plan.finite"}


def test_fallback_offers_no_afrr() -> None:
    fleet = FleetState(batteries=(battery(),))
    plan = fallback_plan(fleet)
    assert plan.afrr_up_kw.shape == (1, 6) and not plan.afrr_up_kw.any()
    assert not plan.afrr_down_kw.any()


def test_floor_reserve_cuts_afrr_to_whole_mw_from_the_preferred_rows_first() -> None:
    z = np.zeros
    up = np.array([[600.0] * 6, [700.0] * 6])  # 1.3 MW per block -> 1 MW
    down = np.array([[900.0] * 6, [200.0] * 6])  # 1.1 MW -> 1 MW
    sol = TableSolution(
        "optimal", z((2, STEPS)), z((2, 6)), up, down, z((0, STEPS)), z((0, STEPS)), 0.0, 0.0
    )
    got = floor_reserve(sol, 1000.0, np.array([1]))
    assert got.afrr_up_kw.sum(0) == pytest.approx(np.full(6, 1000.0))
    assert got.afrr_down_kw.sum(0) == pytest.approx(np.full(6, 1000.0))
    assert got.afrr_up_kw[0] == pytest.approx(np.full(6, 600.0))  # cut taken from row 1
    assert got.afrr_up_kw[1] == pytest.approx(np.full(6, 400.0))
    assert (got.afrr_down_kw <= down + 1e-9).all()


@pytest.fixture(scope="module")
def afrr_fleet() -> tuple[FleetState, MarketPrices]:
    """A mixed fleet of ~3 MW battery power: big enough for whole-MW reserve lots."""
    return synthetic_fleet(900, 11), synthetic_prices(11, afrr=True)


def _whole_mw(plan: Plan) -> None:
    for x in (plan.reserve_kw, plan.afrr_up_kw, plan.afrr_down_kw):
        total = x.sum(axis=0)
        assert total == pytest.approx(1000.0 * np.round(total / 1000.0), abs=1e-3)


def test_exact_plan_with_lot_repair_holds_afrr(afrr_fleet: tuple[FleetState, MarketPrices]) -> None:
    fleet, prices = afrr_fleet
    plan = schedule(fleet, prices, RULES, time_limit_s=20)
    assert plan.status == "rounded"
    assert plan.afrr_up_kw.sum() + plan.afrr_down_kw.sum() >= 1000.0  # aFRR is offered
    assert check_plan(fleet, plan, RULES) == []
    _whole_mw(plan)


def test_aggregated_plan_holds_afrr_after_disaggregation(
    afrr_fleet: tuple[FleetState, MarketPrices],
) -> None:
    fleet, prices = afrr_fleet
    plan = schedule_aggregated(fleet, prices, RULES, time_limit_s=20)
    assert plan.status == "rounded"
    assert plan.afrr_up_kw.sum() + plan.afrr_down_kw.sum() >= 1000.0
    assert check_plan(fleet, plan, RULES) == []
    _whole_mw(plan)


def test_lot_path_keeps_the_running_sum_within_half_a_lot() -> None:
    x = np.array([40.0, 40.0, 40.0, -130.0, 260.0])
    path = lot_path(x, 100.0)
    assert (np.round(path / 100.0) * 100.0 == path).all()
    assert np.abs(np.cumsum(path) - np.cumsum(x)).max() <= 50.0 + 1e-9


def test_reallocate_reserves_moves_afrr_to_the_row_that_can_hold_it() -> None:
    """Row 0 sits at its floor (10 %), row 1 at 50 %: 2 kW of aFRR up on row 0 cannot be held
    (0.5 h needs 1 kWh above the floor), on row 1 it can; the block totals stay."""
    fleet = FleetState(
        batteries=(
            Battery("b0", "s1", 10.0, 10.0, soc_init_pct=10.0, eta_charge=1.0, eta_discharge=1.0),
            Battery("b1", "s1", 10.0, 10.0, soc_init_pct=50.0, eta_charge=1.0, eta_discharge=1.0),
        )
    )
    tables = build_tables(fleet)
    z = np.zeros
    up = np.array([[2.0] * 6, [0.0] * 6])
    sol = TableSolution(
        "feasible", z((2, STEPS)), z((2, 6)), up, z((2, 6)), z((0, STEPS)), z((0, STEPS)), 0, 0
    )
    assert not storage_ok(tables, sol.storage_kw, sol.reserve_kw, RULES, up, sol.afrr_down_kw)
    got = reallocate_reserves(tables, sol, RULES)
    assert got is not None
    assert got.afrr_up_kw.sum(0) == pytest.approx(up.sum(0))
    assert got.afrr_up_kw[0] == pytest.approx(np.zeros(6), abs=1e-6)
    assert storage_ok(tables, got.storage_kw, got.reserve_kw, RULES, got.afrr_up_kw, z((2, 6)))
    too_much = TableSolution(
        "feasible", z((2, STEPS)), z((2, 6)), up * 5, z((2, 6)), z((0, STEPS)), z((0, STEPS)), 0, 0
    )
    assert reallocate_reserves(tables, too_much, RULES) is None  # 10 kW: more than b1 holds


@pytest.mark.parametrize("seed", [0, 6])
def test_small_milp_plan_never_burns_energy_to_hold_reserve(seed: int) -> None:
    """Three MW-scale batteries, the MILP path stopped at its time limit: an incumbent that
    charges and discharges at once to make room for FCR/aFRR down is re-solved (lots fixed,
    then without overlap), so the plan holds on net power and passes the checker."""
    rng = np.random.default_rng(seed)
    batteries = []
    for i in range(3):
        e_kwh, p_kw = float(rng.choice([1000, 2000, 4000])), float(rng.choice([500, 1000, 2000]))
        soc = float(rng.uniform(15, 85))
        batteries.append(Battery(f"b{i}", "s1", e_kwh, p_kw, soc_init_pct=soc))
    fleet = FleetState(batteries=tuple(batteries))
    plan = schedule(fleet, synthetic_prices(seed, afrr=True), RULES, time_limit_s=3)
    assert plan.status in ("optimal", "feasible")
    assert plan.afrr_up_kw.sum() + plan.afrr_down_kw.sum() > 0
    assert check_plan(fleet, plan, RULES) == []
