"""Demand-response caps on net import: enforced by the exact and aggregated models, verified
independently by the checker, and named by the infeasibility diagnosis."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from control_plane.optimizer.aggregation import schedule_aggregated
from control_plane.optimizer.assets import (
    STEPS,
    Battery,
    DemandResponse,
    EvSession,
    FleetState,
    OptimizerInputError,
)
from control_plane.optimizer.check import check_plan
from control_plane.optimizer.constraints import build_tables
from control_plane.optimizer.market import MarketPrices, MarketRules
from control_plane.optimizer.schedule import schedule, solve_tables, to_plan

pytestmark = pytest.mark.timeout(60)

CONTINUOUS = MarketRules(energy_increment_kw=0.0, reserve_increment_kw=0.0)
EVENT = slice(32, 40)  # 08:00-10:00, the cheapest hours of the day below


def cheap_morning() -> MarketPrices:
    """Energy is cheapest during the event, so an unconstrained plan imports then."""
    energy = [80.0] * STEPS
    for t in range(EVENT.start, EVENT.stop):
        energy[t] = 5.0
    for t in range(72, 84):
        energy[t] = 200.0
    return MarketPrices(tuple(energy), (0.0,) * 6)


def battery(asset_id: str, site_id: str = "s1", soc: float = 50.0) -> Battery:
    return Battery(asset_id, site_id, e_kwh=200.0, p_max_kw=100.0, soc_init_pct=soc)


def ev(asset_id: str = "ev1", site_id: str = "s1") -> EvSession:
    return EvSession(
        asset_id, site_id, battery_kwh=60.0, p_max_kw=11.0, arrival_step=0,
        departure_step=60, soc_init_pct=20.0, target_soc_pct=80.0, deadline_step=56,
    )  # fmt: skip


def cap(event_id: str, import_max_kw: float, sites: frozenset[str] = frozenset()) -> DemandResponse:
    n = EVENT.stop - EVENT.start
    return DemandResponse(event_id, EVENT.start, (import_max_kw,) * n, sites)


def violations_of(fleet: FleetState, plan_fleet: FleetState, rules: MarketRules) -> list[str]:
    plan = schedule(plan_fleet, cheap_morning(), rules, time_limit_s=20)
    return [v.constraint for v in check_plan(fleet, plan, rules)]


def test_exact_plan_honours_the_cap_and_the_plan_without_it_would_not() -> None:
    base = FleetState(batteries=(battery("b1"), battery("b2")), evs=(ev(),))
    with_dr = dataclasses.replace(base, demand_response=(cap("evt-1", -50.0),))
    plan = schedule(with_dr, cheap_morning(), CONTINUOUS, time_limit_s=20)
    assert plan.status == "optimal"
    assert check_plan(with_dr, plan, CONTINUOUS) == []
    assert (-plan.portfolio_kw()[EVENT] <= -50.0 + 1e-6).all()  # exports >= 50 kW
    # The same fleet planned without the event breaks the cap: the test can fail.
    assert "demand_response.import_max_kw" in violations_of(with_dr, base, CONTINUOUS)


def test_lot_repair_keeps_the_cap() -> None:
    # The LP + lot-repair path (used above 20 rows): the repair re-optimizes the balancing
    # batteries with everything else fixed, and must carry the cap into that sub-problem.
    fleet = FleetState(
        batteries=(battery("b1", soc=85.0), battery("b2", soc=85.0)),
        evs=(ev(),),
        demand_response=(cap("evt-lots", -60.0),),  # whole lots: >= 100 kW of export
    )
    rules = MarketRules(reserve_increment_kw=0.0)
    sol = solve_tables(
        build_tables(fleet), cheap_morning(), rules, time_limit_s=6, milp_max_devices=0
    )
    plan = to_plan(fleet, sol, 0.0)
    assert plan.status == "rounded"
    assert check_plan(fleet, plan, rules) == []
    assert (plan.portfolio_kw()[EVENT] >= 100.0 - 1e-6).all()


def test_cap_on_a_subset_of_sites_leaves_the_others_free() -> None:
    fleet = FleetState(
        batteries=(battery("b1", "s1"), battery("b2", "s2")),
        demand_response=(cap("evt-s2", -40.0, frozenset({"s2"})),),
    )
    plan = schedule(fleet, cheap_morning(), CONTINUOUS, time_limit_s=20)
    assert check_plan(fleet, plan, CONTINUOUS) == []
    assert (plan.p_kw[1, EVENT] >= 40.0 - 1e-6).all()  # s2 exports
    assert (plan.p_kw[0, EVENT] < 0).any()  # s1 still charges at the cheap price


def test_cap_out_of_power_reach_is_diagnosed_before_solving() -> None:
    fleet = FleetState(batteries=(battery("b1"),), demand_response=(cap("evt-big", -500.0),))
    plan = schedule(fleet, cheap_morning(), CONTINUOUS)
    assert plan.status == "fallback" and not plan.bids
    (d,) = plan.diagnosis
    assert d.constraint == "demand_response.import_max"
    assert d.subjects == ("demand_response evt-big",)
    assert "08:00" in d.message
    assert "demand_response.import_max_kw" in {
        v.constraint for v in check_plan(fleet, plan, CONTINUOUS)
    }


def test_cap_out_of_energy_reach_is_named_by_the_elastic_diagnosis() -> None:
    # 90 kW of export for 2 h = 180 kWh from a battery holding 80 kWh above its floor.
    fleet = FleetState(batteries=(battery("b1"),), demand_response=(cap("evt-long", -90.0),))
    plan = schedule(fleet, cheap_morning(), CONTINUOUS, time_limit_s=20)
    assert plan.status == "fallback"
    names = {d.constraint for d in plan.diagnosis}
    assert "demand_response.import_max" in names
    dr = next(d for d in plan.diagnosis if d.constraint == "demand_response.import_max")
    assert dr.subjects == ("demand_response evt-long",) and dr.slack > 0


def test_aggregated_plan_honours_a_cap_on_some_sites() -> None:
    batteries = tuple(
        battery(f"b{i}", f"s{i % 3}", soc=40.0 + i) for i in range(12)
    )  # three sites, similar batteries that cluster together
    evs = tuple(ev(f"ev{i}", f"s{i % 3}") for i in range(6))
    base = FleetState(batteries=batteries, evs=evs)
    with_dr = dataclasses.replace(
        base, demand_response=(cap("evt-agg", -150.0, frozenset({"s0", "s1"})),)
    )
    plan = schedule_aggregated(with_dr, cheap_morning(), CONTINUOUS, time_limit_s=20)
    assert plan.status == "optimal"
    assert check_plan(with_dr, plan, CONTINUOUS) == []
    unconstrained = schedule_aggregated(base, cheap_morning(), CONTINUOUS, time_limit_s=20)
    assert "demand_response.import_max_kw" in {
        v.constraint for v in check_plan(with_dr, unconstrained, CONTINUOUS)
    }


def test_aggregated_infeasible_cap_is_named() -> None:
    fleet = FleetState(
        batteries=tuple(battery(f"b{i}") for i in range(3)),
        demand_response=(cap("evt-agg-big", -250.0),),
    )
    plan = schedule_aggregated(fleet, cheap_morning(), CONTINUOUS, time_limit_s=20)
    assert plan.status == "fallback"
    assert any(
        d.constraint == "demand_response.import_max" and "demand_response evt-agg-big" in d.subjects
        for d in plan.diagnosis
    )


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"event_id": "bad id with spaces"}, "event_id"),
        ({"event_id": "x" * 200}, "event_id"),
        ({"start_step": 96}, "start_step"),
        ({"import_max_kw": ()}, "import_max_kw"),
        ({"start_step": 90, "import_max_kw": (1.0,) * 10}, "import_max_kw"),
        ({"import_max_kw": (float("nan"),)}, "import_max_kw[0]"),
        ({"import_max_kw": (1e12,)}, "import_max_kw[0]"),
        ({"site_ids": frozenset({"no such/site"})}, "site_ids"),
    ],
)
def test_invalid_demand_response_names_the_field(kwargs: dict[str, object], field: str) -> None:
    base: dict[str, object] = {"event_id": "e-1", "start_step": 0, "import_max_kw": (0.0,)}
    with pytest.raises(OptimizerInputError, match=field.replace("[", r"\[").replace("]", r"\]")):
        DemandResponse(**{**base, **kwargs})  # type: ignore[arg-type]


def test_duplicate_event_ids_are_refused() -> None:
    with pytest.raises(OptimizerInputError, match="event_id twice"):
        FleetState(demand_response=(cap("e", 0.0), cap("e", 1.0)))


def test_no_demand_response_changes_nothing() -> None:
    fleet = FleetState(batteries=(battery("b1"),), evs=(ev(),))
    plan = schedule(fleet, cheap_morning(), CONTINUOUS, time_limit_s=20)
    assert check_plan(fleet, plan, CONTINUOUS) == []
    assert np.isfinite(plan.objective_eur)
