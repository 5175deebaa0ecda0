"""Structured localization (detection.models.localize) on case14: regions, cells, replay, DER."""

from __future__ import annotations

import numpy as np
import pytest

from detection.attacks import inject_attacks
from detection.generate import GeneratedSeries, generate_series
from detection.grid import load_grid
from detection.layout import build_layout
from detection.models.jacobian import state_jacobian
from detection.models.localize import (
    LocalizeConfig,
    RegionLocalizer,
    bus_adjacency,
    der_injection_columns,
)
from detection.models.normal import NormalModel, fit_normal_model
from detection.models.train import slice_series

HISTORY = 400


@pytest.fixture(scope="module")
def series() -> GeneratedSeries:
    return generate_series("case14", HISTORY + 200, seed=11, workers=1)


@pytest.fixture(scope="module")
def normal(series: GeneratedSeries) -> NormalModel:
    return fit_normal_model(series.measured[:HISTORY], 12)


@pytest.fixture(scope="module")
def localizer(normal: NormalModel) -> RegionLocalizer:
    layout = build_layout(load_grid("case14"))
    jac = state_jacobian("case14", layout).dense()
    return RegionLocalizer(
        jac,
        normal.scale,
        normal.noise_sd,
        normal.basis,
        normal.shrink,
        bus_adjacency(layout),
        der_injection_columns("case14", layout),
    )


def _f1(flagged: np.ndarray, truth: np.ndarray) -> float:
    tp = float(np.sum(flagged & truth))
    return 2 * tp / float(flagged.sum() + truth.sum())


def test_a_stealthy_region_is_flagged_as_the_jacobian_support_of_its_buses(
    series: GeneratedSeries, normal: NormalModel, localizer: RegionLocalizer
) -> None:
    part = slice_series(series, HISTORY, HISTORY + 200)
    att = inject_attacks(part, rate=0.3, seed=5, kinds=("stealthy",))
    cols = series.layout.columns
    x = att.data[cols].to_numpy()
    truth = att.labels[cols].to_numpy(dtype=bool)
    rows = np.flatnonzero(truth.any(axis=1))
    r = normal.residuals(x[rows])
    flagged = np.array([localizer.localize(r[k], None, None) for k in range(len(rows))])
    # the labels are exactly the union of the region buses' Jacobian supports
    for ep in att.episodes:
        pos = [series.layout.bus_index.index(b) for b in ep.buses]
        support = np.zeros(len(cols), dtype=bool)
        for p in pos:
            support[localizer.support[p]] = True
        assert np.array_equal(truth[ep.start], support)
    cellwise = np.abs(r) > 3.0  # the cell-wise rule: isolated cells above a threshold
    assert _f1(flagged, truth[rows]) > 0.7
    assert _f1(flagged, truth[rows]) > _f1(cellwise, truth[rows]) + 0.1


def test_isolated_injections_are_flagged_cell_by_cell(
    series: GeneratedSeries, normal: NormalModel, localizer: RegionLocalizer
) -> None:
    x = series.measured[HISTORY : HISTORY + 40].copy()
    cols = [5, 20, 33]
    x[:, cols] += 10.0 * series.std[cols]
    r = normal.residuals(x)
    hits = [localizer.localize(row, None, None) for row in r]
    recall = np.mean([h[cols].mean() for h in hits])
    extra = np.mean([np.delete(h, cols).sum() for h in hits])
    assert recall > 0.9 and extra < 2.0, (recall, extra)


def test_clean_rows_explain_to_nothing_but_the_top_cell(
    series: GeneratedSeries, normal: NormalModel, localizer: RegionLocalizer
) -> None:
    r = normal.residuals(series.measured[HISTORY : HISTORY + 60])
    flagged = np.array([localizer.localize(row, None, 0) for row in r])
    assert flagged[:, 0].all()
    assert flagged[:, 1:].sum(axis=1).mean() < 1.0


def test_a_replayed_row_is_its_bit_exact_repeats(localizer: RegionLocalizer) -> None:
    m = localizer.m
    rng = np.random.default_rng(0)
    r: np.ndarray = np.asarray(rng.standard_normal(m))
    replay = np.zeros(m, dtype=bool)
    replay[[3, 4, 9]] = True
    assert np.array_equal(localizer.localize(r, replay, None), replay)
    one = np.zeros(m, dtype=bool)
    one[3] = True  # a single repeat is no replay: the residual is explained instead
    assert localizer.localize(r, one, None).sum() <= 1


def test_coordinated_der_rows_flag_every_der_injection_that_moved_to_export() -> None:
    m, nb = 30, 5
    jac = np.zeros((m, 2 * nb))
    der = np.array([1, 4, 7, 10, 13, 16])
    loc = RegionLocalizer(
        jac,
        np.ones(m),
        np.ones(m),
        np.zeros((m, 1)),
        np.zeros(1),
        [np.array([], dtype=np.int64)] * nb,
        der,
        LocalizeConfig(),
    )
    r = np.zeros(m)
    r[der] = [-8.0, -7.0, -6.0, -1.5, -1.2, 0.5]  # three clear, two small, one not moved
    flagged = loc.localize(r, None, None)
    assert flagged[der[:5]].all() and not flagged[der[5]]
    assert flagged.sum() == 5


def test_region_completion_grows_a_seed_bus_into_its_region(
    series: GeneratedSeries, normal: NormalModel, localizer: RegionLocalizer
) -> None:
    from detection.attacks import AttackMagnitudes

    part = slice_series(series, HISTORY, HISTORY + 200)
    mags = AttackMagnitudes(stealthy_sigma=(15.0, 30.0), stealthy_region=(3, 5))
    att = inject_attacks(part, rate=0.3, seed=7, kinds=("stealthy",), magnitudes=mags)
    cols = series.layout.columns
    x = att.data[cols].to_numpy()
    found, total = 0, 0
    for ep in att.episodes:
        region = {series.layout.bus_index.index(b) for b in ep.buses}
        for row in range(ep.start, ep.stop):
            r = normal.residuals(x[row : row + 1])[0]
            res, var = localizer._frame(r)
            gains = localizer._bus_gains(res)
            seed = max(region, key=lambda b: gains[b])
            grown = localizer.complete(res, var, [seed], [])
            assert seed in grown and len(grown) <= localizer.config.grow_max
            found += len(region & set(grown))
            total += len(region)
    assert found / total > 0.8, (found, total)


def test_network_flags_turn_a_one_cell_explanation_into_its_bus() -> None:
    m, nb = 12, 3
    jac = np.zeros((m, 2 * nb))
    jac[[0, 1, 2], 0] = [10.0, 1.0, 1.0]  # bus 0: angle moves cell 0 a lot, 1 and 2 a little
    jac[[0, 3], 1] = [0.5, 1.0]
    jac[[5, 6], 2] = 1.0
    jac[[7, 8], 4] = 1.0
    none = np.array([], dtype=np.int64)
    loc = RegionLocalizer(
        jac, np.ones(m), np.ones(m), np.zeros((m, 1)), np.zeros(1), [none] * nb, none
    )
    r = 3.0 * jac[:, 0]  # the bus's signal: one cell far out, two under the cell penalty
    assert np.flatnonzero(loc.localize(r, None, None)).tolist() == [0]
    hot = np.zeros(m, dtype=bool)
    hot[[0, 1, 2, 3]] = True  # the network flags the bus's measurements
    assert np.flatnonzero(loc.localize(r, None, None, hot)).tolist() == [0, 1, 2, 3]
    far = np.zeros(m, dtype=bool)
    far[[5, 6]] = True  # flags elsewhere do not lower this bus's penalty
    assert np.flatnonzero(loc.localize(r, None, None, far)).tolist() == [0]
