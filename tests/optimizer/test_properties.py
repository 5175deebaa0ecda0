"""Property: on random small fleets, the checker finds nothing wrong with returned plans."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from control_plane.optimizer.assets import STEPS, Battery, EvSession, FleetState, FlexibleLoad, Pv
from control_plane.optimizer.check import check_plan
from control_plane.optimizer.market import MarketRules, synthetic_prices
from control_plane.optimizer.schedule import schedule

pytestmark = pytest.mark.timeout(60)
RULES = MarketRules(energy_increment_kw=0.0, reserve_increment_kw=0.0)


@st.composite
def fleets(draw: st.DrawFn) -> FleetState:
    bats = tuple(
        Battery(
            f"b{i}", f"s{i % 2}", draw(st.sampled_from([5.0, 10.0, 20.0])),
            draw(st.sampled_from([2.5, 5.0, 10.0])),
            soc_init_pct=draw(st.floats(10, 90)),
            degradation_eur_per_kwh=draw(st.floats(0.01, 0.05)),
        )
        for i in range(draw(st.integers(0, 3)))
    )  # fmt: skip
    evs = []
    for i in range(draw(st.integers(0, 2))):
        arr = draw(st.integers(0, 60))
        dep = draw(st.integers(arr + 8, STEPS))
        pmax = draw(st.sampled_from([3.7, 7.4, 11.0]))
        reach = pmax * (dep - arr) * 0.25 * 0.92 / 60.0 * 100
        init = draw(st.floats(0, 90))
        target = min(100.0, init + draw(st.floats(0, 1)) * reach)
        evs.append(EvSession(f"e{i}", f"s{i % 2}", 60.0, pmax, arr, dep, init, target, dep))
    pvs = tuple(
        Pv(f"p{i}", f"s{i % 2}",
           tuple(float(x) for x in draw(st.floats(1, 10)) *
                 np.clip(np.sin(np.pi * (np.arange(STEPS) / 4 - 6) / 14), 0, None)),
           draw(st.sampled_from([0.0, 0.02])))
        for i in range(draw(st.integers(0, 2)))
    )  # fmt: skip
    loads = tuple(
        FlexibleLoad(f"l{i}", "s0", draw(st.floats(0, 10)), 3.0, 40, 80)
        for i in range(draw(st.integers(0, 1)))
    )
    return FleetState(bats, tuple(evs), pvs, loads)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(fleet=fleets(), seed=st.integers(0, 5))
def test_checker_finds_no_violation_in_returned_plans(fleet: FleetState, seed: int) -> None:
    plan = schedule(fleet, synthetic_prices(seed), RULES, time_limit_s=10)
    assert plan.status != "fallback", plan.diagnosis
    assert check_plan(fleet, plan, RULES) == []
