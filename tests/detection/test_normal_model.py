"""The model of normal operation: residuals in noise units, and the AC Jacobian it uses."""

from __future__ import annotations

import numpy as np
import pytest

from detection.attacks import measurement_model, stealthy_delta
from detection.generate import GeneratedSeries, generate_series
from detection.models.jacobian import state_jacobian
from detection.models.normal import factor_count, fit_normal_model
from detection.scenarios import HELD_OUT, HELD_OUT_SEED, random_scenario, training_scenarios


@pytest.fixture(scope="module")
def series() -> GeneratedSeries:
    return generate_series("case14", 560, seed=12, workers=2)


def test_residuals_are_standard_normal_out_of_sample(series: GeneratedSeries) -> None:
    normal = fit_normal_model(series.measured[:400], 16)
    r = normal.residuals(series.measured[400:])
    assert abs(float(r.mean())) < 0.1
    assert 0.85 < float(r.std()) < 1.4
    d = normal.precision_diagonal()
    assert np.all((d > 0) & (d <= 1))


def test_a_falsified_measurement_stands_out_in_its_own_residual(series: GeneratedSeries) -> None:
    normal = fit_normal_model(series.measured[:400], 16)
    x = series.measured[400:420].copy()
    x[:, 7] += 8 * series.std[7]
    r = normal.residuals(x)
    assert np.all(np.argmax(np.abs(r), axis=1) == 7)


def test_factor_count_is_capped_by_measurements_and_rows() -> None:
    assert factor_count(120, 726, 1344) == 120
    assert factor_count(120, 79, 1344) == 26
    assert factor_count(120, 726, 200) == 50
    assert factor_count(5, 3, 3) == 1


def test_jacobian_columns_are_the_measurement_change_of_one_bus(series: GeneratedSeries) -> None:
    from detection.grid import load_grid, run_power_flow

    layout = series.layout
    jac = state_jacobian("case14", layout)
    dense = jac.dense()
    assert dense.shape == (len(layout), 2 * len(layout.bus_index))
    assert len(jac.values) < 0.3 * dense.size  # sparse: a bus touches its neighbourhood
    net = load_grid("case14")
    run_power_flow(net)
    bus = net._ppc["bus"]
    v = bus[:, 7] * np.exp(1j * np.deg2rad(bus[:, 8]))  # the nominal state
    delta = stealthy_delta(measurement_model("case14", layout), v, np.array([3]), 0.01, 1.0)
    np.testing.assert_allclose(delta, 0.01 * dense[:, 6], rtol=0.02, atol=1e-6)
    b = layout.bus_index[3]
    near = {b} | {m.to_bus for m in layout.measurements if m.bus == b and m.to_bus >= 0}
    near |= {m.bus for m in layout.measurements if m.to_bus == b}
    assert not dense[~layout.mask_touching(near), 6].any()


def test_training_scenarios_vary_and_never_reach_the_held_out_seeds() -> None:
    scs = training_scenarios(0, 3)
    assert len({s.seed for s in scs}) == 3 and all(s.seed < HELD_OUT_SEED for s in scs)
    assert len({s.noise for s in scs}) == 3 and len({s.pattern for s in scs}) == 3
    assert training_scenarios(0, 3) == scs
    assert all(s.noise != HELD_OUT.noise and s.pattern != HELD_OUT.pattern for s in scs)
    with pytest.raises(ValueError, match="below"):
        random_scenario(HELD_OUT_SEED)
