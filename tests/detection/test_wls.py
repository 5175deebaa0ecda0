"""WLS state estimation baseline: the stealthy attack passes its tests, a naive one does not.

This is the proof that the ``stealthy`` attack really is stealthy: the same attacker
budget (the same measurements, the same change sizes) placed without respect for the
AC power-flow equations is caught by the chi-square test at once.
"""

from __future__ import annotations

import numpy as np
import pytest

from detection.attacks import AcMeasurementModel, measurement_model, stealthy_delta
from detection.baselines.wls import WlsBadDataDetector
from detection.generate import GeneratedSeries, generate_series

ROWS = (3, 17, 29)


@pytest.fixture(scope="module")
def series() -> GeneratedSeries:
    return generate_series("case14", 32, seed=4, workers=1)


@pytest.fixture(scope="module")
def model(series: GeneratedSeries) -> AcMeasurementModel:
    return measurement_model("case14", series.layout)


@pytest.fixture(scope="module")
def wls(series: GeneratedSeries) -> WlsBadDataDetector:
    return WlsBadDataDetector("case14", series.std)


def test_clean_snapshots_pass_with_objective_near_degrees_of_freedom(
    series: GeneratedSeries, wls: WlsBadDataDetector
) -> None:
    verdicts = [wls.check(series.measured[k], localize=False) for k in range(32)]
    assert all(v.converged for v in verdicts)
    assert sum(v.chi2_bad_data for v in verdicts) <= 5  # 5 % false alarms by design
    dof = len(series.layout) - (2 * 14 - 1)
    assert 0.6 * dof < np.mean([v.objective for v in verdicts]) < 1.4 * dof


@pytest.mark.parametrize("dtheta_deg", [1.0, 3.0])
def test_stealthy_attack_passes_chi2_while_same_size_naive_attack_fails(
    series: GeneratedSeries, model: AcMeasurementModel, wls: WlsBadDataDetector, dtheta_deg: float
) -> None:
    rng = np.random.default_rng(7)
    region = np.array([3, 8, 13])  # layout bus positions: buses 3, 8, 13 of case14
    for k in ROWS:
        delta = stealthy_delta(model, series.voltages[k], region, dtheta_deg, 1.005)
        support = np.flatnonzero(delta)
        assert len(support) >= 10
        # the stealthy attack is large: tens of noise standard deviations
        assert np.max(np.abs(delta) / series.std) > 10
        stealthy = wls.check(series.measured[k] + delta, localize=False)
        assert stealthy.converged and not stealthy.chi2_bad_data
        assert stealthy.objective < stealthy.threshold
        # naive: same measurements, same change sizes, random signs and placement
        naive_delta = np.zeros_like(delta)
        naive_delta[support] = rng.permutation(delta[support]) * rng.choice([-1, 1], len(support))
        assert np.isclose(np.linalg.norm(naive_delta), np.linalg.norm(delta))
        naive = wls.check(series.measured[k] + naive_delta, localize=False)
        assert naive.chi2_bad_data
        assert naive.objective > 10 * naive.threshold


def test_largest_normalized_residual_localizes_a_single_gross_error(
    series: GeneratedSeries, wls: WlsBadDataDetector
) -> None:
    k = 5
    col = series.layout.position("line4.p_from_mw")
    z = series.measured[k].copy()
    z[col] += 25 * series.std[col]
    verdict = wls.check(z)
    assert verdict.chi2_bad_data and verdict.lnr_max > wls.lnr_threshold
    assert col in verdict.flagged


def test_std_of_the_wrong_length_is_refused(series: GeneratedSeries) -> None:
    with pytest.raises(ValueError, match="layout"):
        WlsBadDataDetector("case14", series.std[:-1])


def test_stealthy_attack_is_stealthy_on_the_cigre_grid_with_open_switches() -> None:
    # open line switches give pandapower auxiliary buses; the attack must move them along
    series = generate_series("cigre_mv", 12, seed=6, workers=1)
    model = measurement_model("cigre_mv", series.layout)
    assert model.aux_of  # the grid really has auxiliary buses
    wls = WlsBadDataDetector("cigre_mv", series.std)
    for k, buses in ((4, (6, 5)), (9, (14, 13))):  # 6 and 14 carry an auxiliary bus
        region = np.array([series.layout.bus_index.index(b) for b in buses])
        delta = stealthy_delta(model, series.voltages[k], region, 0.01, 1.001)
        assert np.max(np.abs(delta) / series.std) > 5
        clean = wls.check(series.measured[k], localize=False)
        stealthy = wls.check(series.measured[k] + delta, localize=False)
        assert not stealthy.chi2_bad_data
        assert abs(stealthy.objective - clean.objective) < 0.1 * clean.objective + 1.0
