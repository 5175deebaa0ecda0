"""Exact day-ahead schedules on small, hand-checkable cases; fallback, diagnosis, time limit."""

from __future__ import annotations

import numpy as np
import pytest

from control_plane.optimizer.assets import (
    STEPS,
    Battery,
    EvSession,
    FleetState,
    OptimizerInputError,
    Pv,
    SiteLimits,
)
from control_plane.optimizer.check import check_plan, soc_kwh
from control_plane.optimizer.market import MarketPrices, MarketRules
from control_plane.optimizer.revenue import evaluate
from control_plane.optimizer.schedule import schedule
from control_plane.optimizer.synthetic import synthetic_fleet

pytestmark = pytest.mark.timeout(60)

CONTINUOUS = MarketRules(energy_increment_kw=0.0, reserve_increment_kw=0.0)
NO_FCR = (0.0,) * 6


def prices(values: list[float] | np.ndarray, fcr: tuple[float, ...] = NO_FCR) -> MarketPrices:
    return MarketPrices(tuple(float(x) for x in values), fcr)


def two_price(low: float, high: float) -> MarketPrices:
    return prices([low] * 48 + [high] * 48)


def battery(**kw: object) -> Battery:
    base: dict[str, object] = dict(
        asset_id="b1", site_id="s1", e_kwh=10.0, p_max_kw=10.0, soc_init_pct=0.0,
        soc_min_pct=0.0, soc_max_pct=100.0, eta_charge=0.9, eta_discharge=0.9,
        degradation_eur_per_kwh=0.0,
    )  # fmt: skip
    base.update(kw)
    return Battery(**base)  # type: ignore[arg-type]


def test_buy_low_sell_high_with_efficiency_loss() -> None:
    fleet = FleetState(batteries=(battery(),))
    plan = schedule(fleet, two_price(0.0, 100.0), CONTINUOUS)
    # 10 kWh stored costs nothing; 10 * 0.9 = 9 kWh sold at 0.1 EUR/kWh.
    assert plan.status == "optimal"
    assert evaluate(fleet, plan, two_price(0.0, 100.0), CONTINUOUS).total_eur == pytest.approx(0.9)
    assert check_plan(fleet, plan, CONTINUOUS) == []


def test_no_trade_when_spread_below_round_trip_loss() -> None:
    fleet = FleetState(batteries=(battery(),))
    plan = schedule(fleet, two_price(90.0, 100.0), CONTINUOUS)  # 100 * 0.81 < 90
    assert np.abs(plan.p_kw).max() < 1e-6


def test_ev_reaches_80_percent_by_0700_in_the_cheapest_steps() -> None:
    ev = EvSession("ev1", "s1", 40.0, 11.0, 0, 32, 20.0, 80.0, 28, eta_charge=1.0)
    price = np.full(STEPS, 100.0)
    price[20:28] = 10.0  # 05:00-07:00 cheapest
    fleet = FleetState(evs=(ev,))
    plan = schedule(fleet, prices(price), CONTINUOUS)
    assert check_plan(fleet, plan, CONTINUOUS) == []
    imported = -plan.p_kw[0]
    assert imported[:28].sum() * 0.25 == pytest.approx(24.0, abs=1e-4)  # 60 % of 40 kWh
    assert imported[20:28].sum() * 0.25 == pytest.approx(22.0, abs=1e-4)  # 8 steps x 11 kW
    assert imported[28:].sum() == pytest.approx(0.0, abs=1e-6)


def test_pv_curtailed_only_at_negative_prices() -> None:
    fc = np.zeros(STEPS)
    fc[40:60] = 5.0
    price = np.full(STEPS, 50.0)
    price[50:54] = -10.0
    fleet = FleetState(pvs=(Pv("pv1", "s1", tuple(fc), 0.0),))
    plan = schedule(fleet, prices(price), CONTINUOUS)
    gen = plan.p_kw[0]
    assert gen[50:54] == pytest.approx(np.zeros(4), abs=1e-6)
    keep = [t for t in range(40, 60) if not 50 <= t < 54]
    assert gen[keep] == pytest.approx(np.full(len(keep), 5.0), abs=1e-6)


def test_fcr_block_needs_headroom_both_ways_and_energy() -> None:
    rules = MarketRules(energy_increment_kw=0.0, reserve_increment_kw=1000.0)
    price = prices(two_price(0.0, 100.0).energy_eur_per_mwh, (20.0,) * 6)
    big = battery(e_kwh=4000.0, p_max_kw=1000.0, soc_init_pct=50.0, soc_min_pct=10.0,
                  soc_max_pct=90.0, eta_charge=0.95, eta_discharge=0.95)  # fmt: skip
    fleet = FleetState(batteries=(big,))
    plan = schedule(fleet, price, rules)
    # 1 MW of FCR per block pays 80 EUR/block; it leaves no headroom to trade energy.
    assert plan.reserve_kw[0] == pytest.approx(np.full(6, 1000.0), abs=1e-6)
    assert np.abs(plan.p_kw).max() < 1e-6
    assert check_plan(fleet, plan, rules) == []
    # 600 kWh at 10-90 %: 240 kWh each way < 0.5 h x 1 MW, so not a single whole MW.
    small = battery(e_kwh=600.0, p_max_kw=1000.0, soc_init_pct=50.0, soc_min_pct=10.0,
                    soc_max_pct=90.0, eta_charge=0.95, eta_discharge=0.95)  # fmt: skip
    plan = schedule(FleetState(batteries=(small,)), price, rules)
    assert plan.reserve_kw.sum() == pytest.approx(0.0, abs=1e-6)


def test_milp_energy_increments_honoured() -> None:
    rules = MarketRules(energy_increment_kw=100.0, reserve_increment_kw=1000.0)
    bats = (
        battery(asset_id="b1", e_kwh=500.0, p_max_kw=250.0, soc_init_pct=50.0),
        battery(asset_id="b2", e_kwh=300.0, p_max_kw=130.0, soc_init_pct=50.0),
    )
    fleet = FleetState(batteries=bats)
    price = prices(np.where(np.arange(STEPS) % 24 < 12, 20.0, 120.0))
    plan = schedule(fleet, price, rules, time_limit_s=20)
    assert plan.status in ("optimal", "feasible")
    lots = plan.portfolio_kw() / 100.0
    assert lots == pytest.approx(np.round(lots), abs=1e-6)
    assert np.abs(plan.portfolio_kw()).max() > 99.0
    assert check_plan(fleet, plan, rules) == []


def test_unreachable_ev_target_is_diagnosed_and_fallback_is_safe() -> None:
    ev = EvSession("ev1", "s1", 60.0, 3.7, 20, 32, 10.0, 80.0, 28)  # 42 kWh in 2 h at 3.7 kW
    fleet = FleetState(batteries=(battery(soc_init_pct=50.0),), evs=(ev,))
    plan = schedule(fleet, two_price(10.0, 90.0), MarketRules())
    assert plan.status == "fallback" and not plan.bids
    assert [(d.constraint, d.subjects) for d in plan.diagnosis] == [
        ("ev.target_by_deadline", ("ev1",))
    ]
    assert "07:00" in plan.diagnosis[0].message
    left = check_plan(fleet, plan, MarketRules())
    assert {(v.subject, v.constraint) for v in left} == {("ev1", "ev.target_by_deadline")}
    assert -plan.p_kw[1, 20:28] == pytest.approx(np.full(8, 3.7))  # charges flat out


def test_site_limit_infeasibility_names_the_binding_group() -> None:
    evs = tuple(EvSession(f"ev{i}", "s1", 40.0, 11.0, 0, 32, 20.0, 80.0, 28) for i in range(2))
    fleet = FleetState(evs=evs, sites=(SiteLimits.flat("s1", 5.0, 5.0),))
    plan = schedule(fleet, two_price(10.0, 90.0), CONTINUOUS)
    assert plan.status == "fallback"
    names = {d.constraint for d in plan.diagnosis}
    assert names & {"grid.import_max", "ev.target_by_deadline"}


def test_tiny_time_limit_gives_fallback_without_hanging() -> None:
    fleet = synthetic_fleet(300, seed=3)
    plan = schedule(fleet, two_price(10.0, 90.0), MarketRules(), time_limit_s=1e-3)
    assert plan.status == "fallback"
    assert plan.diagnosis[0].constraint == "solver.time_limit"
    assert plan.wall_s < 30
    assert check_plan(fleet, plan, MarketRules()) == []


def test_invalid_battery_names_the_field() -> None:
    with pytest.raises(OptimizerInputError, match="soc_init_pct"):
        battery(soc_init_pct=120.0)


def test_checker_recomputes_soc_from_net_power() -> None:
    b = battery()
    fleet = FleetState(batteries=(b,))
    plan = schedule(fleet, two_price(0.0, 100.0), CONTINUOUS)
    soc = soc_kwh(plan.p_kw, np.array([0.0]), np.array([0.9]), np.array([0.9]))
    assert soc.max() == pytest.approx(10.0, abs=1e-6)
