"""Pure EV-charging physics: no sockets, no sleeping."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_node.simulators.ev_model import (
    ChargerSpec,
    ChargerState,
    SimulatedTime,
    Vehicle,
    Visit,
    advance,
    charge_power_kw,
    with_setpoint,
)

T0_MS = 1_700_000_000_000
HOUR_MS = 3_600_000
SPEC = ChargerSpec(max_charge_kw=11.0, efficiency=0.9)


def plugged(soc_pct: float = 40.0, target_pct: float = 80.0, departure_ms: int = 0) -> ChargerState:
    return ChargerState(SPEC, T0_MS, Vehicle(50.0, soc_pct, target_pct, departure_ms))


def soc(state: ChargerState) -> float:
    assert state.vehicle is not None
    return state.vehicle.soc_pct


def test_soc_rises_with_the_setpoint_power_times_efficiency() -> None:
    state = with_setpoint(plugged(), 5.0)
    later = advance(state, T0_MS + HOUR_MS)
    # 5 kW * 0.9 * 1 h = 4.5 kWh into a 50 kWh battery = +9 %
    assert soc(later) == pytest.approx(49.0)
    assert later.charge_kw == 5.0
    assert later.ts_ms == T0_MS + HOUR_MS


def test_more_power_charges_faster() -> None:
    slow = advance(with_setpoint(plugged(), 2.0), T0_MS + HOUR_MS)
    fast = advance(with_setpoint(plugged(), 8.0), T0_MS + HOUR_MS)
    assert soc(plugged()) < soc(slow) < soc(fast)


def test_charging_stops_at_100_pct_with_a_setpoint() -> None:
    full = advance(with_setpoint(plugged(soc_pct=95.0), 11.0), T0_MS + 10 * HOUR_MS)
    assert soc(full) == 100.0
    assert full.charge_kw == 0.0


def test_without_a_setpoint_it_charges_at_full_power_until_the_target() -> None:
    state = plugged(soc_pct=40.0, target_pct=80.0)
    assert state.setpoint_kw is None
    assert state.charge_kw == SPEC.max_charge_kw
    done = advance(state, T0_MS + 10 * HOUR_MS)
    assert soc(done) == 80.0
    assert done.charge_kw == 0.0


def test_no_charge_without_a_vehicle() -> None:
    empty = ChargerState(SPEC, T0_MS, vehicle=None, setpoint_kw=11.0)
    assert not empty.connected
    assert empty.charge_kw == 0.0
    assert charge_power_kw(SPEC, None, 11.0) == 0.0
    assert advance(empty, T0_MS + HOUR_MS).vehicle is None


def test_zero_setpoint_pauses_charging() -> None:
    paused = advance(with_setpoint(plugged(), 0.0), T0_MS + HOUR_MS)
    assert soc(paused) == 40.0
    assert paused.charge_kw == 0.0


def test_the_vehicle_leaves_at_its_departure() -> None:
    state = plugged(departure_ms=T0_MS + HOUR_MS // 2)
    assert advance(state, T0_MS + HOUR_MS // 2 - 1).connected
    assert not advance(state, T0_MS + HOUR_MS // 2).connected


def test_a_scheduled_vehicle_arrives_and_charges_only_from_its_arrival() -> None:
    arriving = Vehicle(40.0, 20.0, 90.0, departure_ms=T0_MS + 5 * HOUR_MS)
    schedule = [Visit(T0_MS + HOUR_MS // 2, arriving)]
    empty = ChargerState(SPEC, T0_MS)
    later = advance(empty, T0_MS + HOUR_MS, schedule)
    assert later.vehicle is not None
    # dumb charging at 11 kW for the last half hour: 11 * 0.9 * 0.5 / 40 = +12.375 %
    assert soc(later) == pytest.approx(32.375)
    gone = advance(later, T0_MS + 6 * HOUR_MS, schedule)
    assert gone.vehicle is None


def test_result_does_not_depend_on_step_size() -> None:
    state = with_setpoint(plugged(soc_pct=90.0), 7.0)
    one_step = advance(state, T0_MS + 2 * HOUR_MS)
    many = state
    for i in range(1, 721):
        many = advance(many, T0_MS + i * 10_000)
    assert soc(many) == pytest.approx(soc(one_step))
    assert soc(one_step) == 100.0


@pytest.mark.parametrize("bad_kw", [-0.1, 11.01, math.nan, math.inf])
def test_out_of_range_setpoint_is_refused(bad_kw: float) -> None:
    with pytest.raises(ValueError, match="outside"):
        with_setpoint(plugged(), bad_kw)


def test_time_cannot_go_backwards() -> None:
    with pytest.raises(ValueError, match="backwards"):
        advance(plugged(), T0_MS - 1)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"e_kwh": 0.0, "soc_pct": 50.0, "target_soc_pct": 80.0},
        {"e_kwh": 50.0, "soc_pct": 101.0, "target_soc_pct": 80.0},
        {"e_kwh": 50.0, "soc_pct": 50.0, "target_soc_pct": -1.0},
        {"e_kwh": 50.0, "soc_pct": math.nan, "target_soc_pct": 80.0},
        {"e_kwh": 50.0, "soc_pct": 50.0, "target_soc_pct": 80.0, "departure_ms": -1},
    ],
)
def test_invalid_vehicles_cannot_exist(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        Vehicle(**kwargs)  # type: ignore[arg-type]


def test_invalid_charger_specs_and_visits_cannot_exist() -> None:
    with pytest.raises(ValueError):
        ChargerSpec(max_charge_kw=0.0)
    with pytest.raises(ValueError):
        ChargerSpec(max_charge_kw=11.0, efficiency=1.5)
    with pytest.raises(ValueError, match="depart after"):
        Visit(T0_MS, Vehicle(50.0, 50.0, 80.0, departure_ms=T0_MS))


def test_simulated_time_runs_time_scale_times_as_fast() -> None:
    sim = SimulatedTime(origin_ms=T0_MS, time_scale=60.0)
    assert sim.at(T0_MS) == T0_MS
    assert sim.at(T0_MS + 1_000) == T0_MS + 60_000
    with pytest.raises(ValueError):
        SimulatedTime(origin_ms=T0_MS, time_scale=0.0)


steps = st.lists(
    st.tuples(
        st.one_of(st.none(), st.floats(min_value=0.0, max_value=SPEC.max_charge_kw)),
        st.integers(min_value=0, max_value=2 * HOUR_MS),
    ),
    min_size=1,
    max_size=40,
)


@settings(max_examples=200, deadline=None)
@given(
    start_soc=st.floats(min_value=0.0, max_value=100.0),
    target=st.floats(min_value=0.0, max_value=100.0),
    e_kwh=st.floats(min_value=1.0, max_value=150.0),
    plan=steps,
)
def test_soc_never_falls_and_stays_within_0_and_100(
    start_soc: float, target: float, e_kwh: float, plan: list[tuple[float | None, int]]
) -> None:
    state = ChargerState(SPEC, T0_MS, Vehicle(e_kwh, start_soc, target))
    previous = start_soc
    for setpoint_kw, dt_ms in plan:
        if setpoint_kw is not None:
            state = with_setpoint(state, setpoint_kw)
        assert 0.0 <= state.charge_kw <= SPEC.max_charge_kw
        state = advance(state, state.ts_ms + dt_ms)
        now = soc(state)
        assert 0.0 <= now <= 100.0
        assert now >= previous
        previous = now
