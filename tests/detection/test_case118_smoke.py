"""A small end-to-end smoke run on IEEE 118: generate, attack stealthily, check with WLS."""

from __future__ import annotations

import numpy as np

from detection.attacks import inject_attacks, measurement_model, stealthy_delta
from detection.baselines.wls import WlsBadDataDetector
from detection.generate import generate_series


def test_case118_generate_attack_and_wls() -> None:
    series = generate_series("case118", 6, seed=1, workers=1)
    assert series.measured.shape == (6, 726)
    model = measurement_model("case118", series.layout)
    assert np.allclose(model.measure(series.voltages[2]), series.true[2], atol=1e-5)
    attacked = inject_attacks(series, rate=0.5, seed=2, kinds=("stealthy",), model=model)
    assert 1 <= (attacked.labels["attack"] == "stealthy").sum() <= 3

    wls = WlsBadDataDetector("case118", series.std)
    region = np.array([series.layout.bus_index.index(b) for b in (43, 44, 45)])
    delta = stealthy_delta(model, series.voltages[4], region, 2.0, 1.0)
    stealthy = wls.check(series.measured[4] + delta, localize=False)
    clean = wls.check(series.measured[4], localize=False)
    assert not stealthy.chi2_bad_data
    assert abs(stealthy.objective - clean.objective) < 0.05 * clean.objective
    naive = delta.copy()
    support = np.flatnonzero(delta)
    naive[support] = np.random.default_rng(0).permutation(delta[support])
    assert wls.check(series.measured[4] + naive, localize=False).chi2_bad_data
