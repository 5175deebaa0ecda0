"""The live grid simulator: AC power flows over a day, layout, noise, DER sites, RTU attacks."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pytest

from detection.grid import load_grid
from detection.layout import build_layout
from edge_node.simulators.grid_sim import (
    MONDAY_MS,
    STEP_MS,
    GridSimulationError,
    GridSimulator,
    GridSnapshot,
    PowerFlowError,
)

T0_MS = MONDAY_MS + 2 * 7 * 86_400_000  # a Monday 00:00 UTC
DAY_STEPS = 96
SITE_BUSES = (3, 8, 14)


def site_power_kw(k: int, site: int) -> float:
    """A DER site's net export [kW]: PV by day, charging in the evening."""
    hour = (k % DAY_STEPS) / 4.0
    pv = 10.0 * max(0.0, math.sin(math.pi * (hour - 6.0) / 14.0)) if 6.0 < hour < 20.0 else 0.0
    return pv - (11.0 if 17.0 <= hour < 22.0 and site % 2 == 0 else 0.0)


@pytest.fixture(scope="module")
def day() -> tuple[GridSimulator, list[GridSnapshot]]:
    """One simulated day in 15-minute steps with three DER sites attached."""
    sim = GridSimulator("cigre_mv", seed=7)
    clock = {"k": 0}

    def export_kw(site: int) -> Callable[[], float]:
        return lambda: site_power_kw(clock["k"], site)

    for i, bus in enumerate(SITE_BUSES):
        sim.attach_site(f"site-{i}", bus, export_kw(i))
    snaps = []
    for k in range(DAY_STEPS):
        clock["k"] = k
        snaps.append(sim.step(T0_MS + k * STEP_MS))
    return sim, snaps


def col(sim: GridSimulator, name: str) -> int:
    return sim.layout.position(name)


def pair(seed: int = 3) -> tuple[GridSimulator, GridSimulator]:
    """Two identical simulators: attacks go to the second; their difference is the attack."""
    return GridSimulator(seed=seed), GridSimulator(seed=seed)


# -- power flow, layout, noise ---------------------------------------------------------


def test_a_simulated_day_converges_in_the_layout(
    day: tuple[GridSimulator, list[GridSnapshot]],
) -> None:
    sim, snaps = day
    expected = build_layout(load_grid("cigre_mv")).columns
    assert sim.columns == expected and len(expected) == 79
    for s in snaps:
        assert s.values.shape == s.true_values.shape == s.attacked.shape == (79,)
        assert np.all(np.isfinite(s.values)) and not s.attacked.any() and s.attacks == ()
    true = np.array([s.true_values for s in snaps])
    vm = true[:, sim.layout.positions_of("bus", "vm_pu")]
    assert vm.min() > 0.9 and vm.max() < 1.1
    # the columns are where the layout says: the slack bus feeds both transformers
    slack_p = true[:, col(sim, "bus0.p_mw")]
    trafo_p = true[:, col(sim, "trafo0.p_hv_mw")] + true[:, col(sim, "trafo1.p_hv_mw")]
    np.testing.assert_allclose(slack_p, -trafo_p, atol=1e-6)
    # daily shape: the evening peak draws more than the night
    assert trafo_p[76] > 1.2 * trafo_p[12]
    assert [snaps[k].site_p_kw["site-0"] for k in (0, 52)] == [
        site_power_kw(0, 0),
        site_power_kw(52, 0),
    ]


def test_measurement_noise_has_the_stated_size(
    day: tuple[GridSimulator, list[GridSnapshot]],
) -> None:
    sim, snaps = day
    err = np.array([s.values - s.true_values for s in snaps])
    z = err / sim.std
    assert abs(z.mean()) < 0.05
    assert 0.9 < z.std() < 1.1
    vm = sim.layout.positions_of("bus", "vm_pu")
    rel = err[:, vm] / np.array([s.true_values[vm] for s in snaps])
    assert 0.001 < rel.std() < 0.005  # 0.1-0.5 % of |V|
    big = col(sim, "trafo0.p_hv_mw")  # about 20 MW: 1 % dominates the floor
    assert 0.005 < err[:, big].std() / 20.0 < 0.02
    powers = np.array([not m.is_voltage for m in sim.layout.measurements])
    assert sim.std[powers].min() >= 0.001  # the floor [MW, Mvar]


def test_same_seed_same_vectors_other_seed_other_vectors() -> None:
    a, b, c = GridSimulator(seed=11), GridSimulator(seed=11), GridSimulator(seed=12)
    for k in range(3):
        t = T0_MS + k * STEP_MS
        va, vb, vc = a.step(t).values, b.step(t).values, c.step(t).values
        np.testing.assert_array_equal(va, vb)
        assert not np.array_equal(va, vc)


def test_sim_time_drives_the_profiles_and_sample_time_is_kept() -> None:
    sim = GridSimulator(seed=1)
    night = sim.step(T0_MS + 10, sim_ms=T0_MS + 3 * 3_600_000)
    evening = sim.step(T0_MS + 20, sim_ms=T0_MS + 19 * 3_600_000)
    assert (night.ts_ms, evening.ts_ms) == (T0_MS + 10, T0_MS + 20)
    p = col(sim, "trafo0.p_hv_mw")
    assert evening.true_values[p] > 1.2 * night.true_values[p]


# -- DER sites ---------------------------------------------------------------------------


def test_an_attached_site_moves_its_bus_power() -> None:
    sim = GridSimulator(seed=2)
    site = {"p": 0.0, "q": 0.0}
    sim.attach_site("site-1", 5, lambda: site["p"], lambda: site["q"])
    before = sim.step(T0_MS).true_values
    site["p"], site["q"] = 500.0, -200.0  # export 500 kW, absorb 200 kvar
    after = sim.step(T0_MS).true_values
    diff = after - before
    # load convention in the layout: export lowers the bus's consumption
    assert diff[col(sim, "bus5.p_mw")] == pytest.approx(-0.5, abs=1e-6)
    assert diff[col(sim, "bus5.q_mvar")] == pytest.approx(0.2, abs=1e-6)
    assert diff[col(sim, "bus4.p_mw")] == pytest.approx(0.0, abs=1e-9)
    assert 0.45 < diff[col(sim, "bus0.p_mw")] < 0.55  # the slack supplies ~0.5 MW less (+ losses)
    # powers read beforehand (on the event loop) give the same power flow
    assert sim.read_sites() == {"site-1": (500.0, -200.0)}
    given = sim.step(T0_MS, site_powers={"site-1": (500.0, -200.0)}).true_values
    np.testing.assert_allclose(given, after, atol=1e-9)
    with pytest.raises(ValueError, match="cover exactly the sites"):
        sim.step(T0_MS, site_powers={})


def test_site_attachment_is_validated() -> None:
    sim = GridSimulator(seed=2)
    sim.attach_site("site-1", 5, lambda: 1.0)
    with pytest.raises(ValueError, match="already attached"):
        sim.attach_site("site-1", 6, lambda: 1.0)
    with pytest.raises(ValueError, match="no bus 99"):
        sim.attach_site("site-2", 99, lambda: 1.0)


def test_a_broken_site_reading_is_reported() -> None:
    sim = GridSimulator(seed=2)
    reading = {"p": math.nan}

    def p_kw() -> float:
        if reading["p"] is None:
            raise ConnectionError("modbus down")
        return reading["p"]

    sim.attach_site("site-9", 5, p_kw)
    with pytest.raises(GridSimulationError, match="site site-9: p_kw_fn returned nan"):
        sim.step(T0_MS)
    reading["p"] = None  # type: ignore[assignment]
    with pytest.raises(GridSimulationError, match=r"site site-9: p_kw_fn failed \(ConnectionError"):
        sim.step(T0_MS)


def test_a_diverging_power_flow_is_reported_never_replaced() -> None:
    sim = GridSimulator(seed=2)
    site = {"p": 0.0}
    sim.attach_site("site-1", 11, lambda: site["p"])
    good = sim.step(T0_MS)
    site["p"] = -400_000.0  # a 400 MW load at the end of a 20 kV feeder
    with pytest.raises(PowerFlowError, match=r"did not converge .*site-1=-400000\.0 kW"):
        sim.step(T0_MS + 1)
    site["p"] = 0.0  # the next step after the fault works again, from a cold start
    again = sim.step(T0_MS + 2)
    np.testing.assert_allclose(again.true_values, good.true_values, atol=1e-6)


# -- attacks of a compromised RTU ------------------------------------------------------


def test_stealthy_attack_rewrites_a_region_consistently() -> None:
    clean, hit = pair()
    attack = hit.inject("stealthy", T0_MS + STEP_MS, duration_ms=2 * STEP_MS, seed=5)
    assert attack.buses and attack.kind == "stealthy"
    sizes = []
    for k in range(4):
        t = T0_MS + k * STEP_MS
        c, h = clean.step(t), hit.step(t)
        delta = h.values - c.values
        np.testing.assert_array_equal(h.true_values, c.true_values)  # the grid is untouched
        np.testing.assert_array_equal(h.attacked, delta != 0)
        if k in (1, 2):
            assert h.attacks == ("stealthy",)
            changed = set(np.flatnonzero(delta))
            assert changed and changed <= set(attack.columns)
            sizes.append(float(np.max(np.abs(delta) / hit.std)))
        else:
            assert h.attacks == () and not delta.any()
    assert 5.0 <= sizes[0] <= 30.0 + 1e-6  # sized at the first attacked snapshot
    assert 2.0 < sizes[1] < 60.0  # same state shift, the operating point moved
    assert "dtheta_deg=" in attack.detail


def test_the_attackers_measurement_model_is_the_simulated_grid() -> None:
    """The stealthy attack rewrites with h(V') - h(V); h(V) must reproduce the power flow
    exactly, attached sites included, or the attack would not be AC-consistent."""
    sim = GridSimulator(seed=4)
    sim.attach_site("site-1", 10, lambda: -300.0)
    for k in range(3):
        snapshot = sim.step(T0_MS + k * STEP_MS)
        state = sim._step_state()
        np.testing.assert_allclose(state.model.measure(state.v), snapshot.true_values, atol=1e-8)


def test_stealthy_attack_can_target_given_buses_but_not_the_slack() -> None:
    sim = GridSimulator(seed=3)
    attack = sim.inject("stealthy", T0_MS, buses=[9, 10], seed=1)
    assert attack.buses == (9, 10)
    touched = {m.column for m in (sim.layout.measurements[k] for k in attack.columns)}
    assert {"bus9.vm_pu", "bus10.p_mw", "line7.p_from_mw", "bus8.p_mw"} <= touched
    with pytest.raises(ValueError, match="slack"):
        sim.inject("stealthy", T0_MS, buses=[0, 1])


def test_ramp_grows_linearly_then_holds_and_ends() -> None:
    clean, hit = pair()
    ramp_ms = 4 * STEP_MS
    attack = hit.inject(
        "ramp", T0_MS, duration_ms=6 * STEP_MS, ramp_ms=ramp_ms, columns=["line3.p_from_mw"]
    )
    deltas = []
    for k in range(8):
        t = T0_MS + k * STEP_MS
        deltas.append(hit.step(t).values - clean.step(t).values)
    pos = col(hit, "line3.p_from_mw")
    bias = np.array([d[pos] for d in deltas])
    assert bias[0] == 0.0  # nothing yet at the start
    np.testing.assert_allclose(bias[1:5], bias[4] * np.array([0.25, 0.5, 0.75, 1.0]), rtol=1e-9)
    assert bias[5] == pytest.approx(bias[4])  # full size after ramp_ms
    assert 4.0 <= abs(bias[4]) / hit.std[pos] <= 15.0
    assert bias[6] == 0.0 and bias[7] == 0.0  # the episode is over
    assert all(np.count_nonzero(d) <= 1 for d in deltas)
    assert attack.columns == (pos,)


def test_scaling_multiplies_its_columns() -> None:
    clean, hit = pair()
    attack = hit.inject("scaling", T0_MS, seed=8)
    c, h = clean.step(T0_MS), hit.step(T0_MS)
    cols = list(attack.columns)
    assert len(cols) >= 2 and set(np.flatnonzero(h.attacked)) == set(cols)
    ratio = h.values[cols] / c.values[cols]
    assert np.allclose(ratio, ratio[0])
    assert 0.1 <= abs(ratio[0] - 1.0) <= 0.5


def test_random_injections_are_redrawn_each_snapshot() -> None:
    clean, hit = pair()
    attack = hit.inject("random", T0_MS, seed=9)
    d1 = hit.step(T0_MS).values - clean.step(T0_MS).values
    d2 = hit.step(T0_MS + 1).values - clean.step(T0_MS + 1).values
    cols = list(attack.columns)
    for d in (d1, d2):
        sigma = np.abs(d[cols]) / hit.std[cols]
        assert np.all((sigma >= 3.0) & (sigma <= 10.0))
    assert not np.array_equal(d1[cols], d2[cols])


def test_stop_attacks_ends_open_attacks() -> None:
    sim = GridSimulator(seed=3)
    sim.inject("scaling", T0_MS)
    assert sim.step(T0_MS).attacks == ("scaling",)
    sim.stop_attacks(T0_MS + 1)
    assert sim.step(T0_MS + 1).attacks == ()
    assert sim.attacks[0].stop_ms == T0_MS + 1


def test_bad_attack_requests_are_refused() -> None:
    sim = GridSimulator(seed=3)
    with pytest.raises(ValueError, match="unknown attack kind 'replay'"):
        sim.inject("replay", T0_MS)
    with pytest.raises(ValueError, match="unknown measurement column"):
        sim.inject("ramp", T0_MS, columns=["bus99.p_mw"])
    with pytest.raises(ValueError, match="duration_ms must be > 0"):
        sim.inject("ramp", T0_MS, duration_ms=0)
    assert sim.attacks == ()
