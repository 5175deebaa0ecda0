"""Region search of structured localization (detection.models.localize) on the case118
Jacobian: synthetic regions under the attacker's model, with an identity noise model."""

from __future__ import annotations

import numpy as np
import pytest

from detection.models.localize import (
    RegionLocalizer,
    _extend,
    _quadratic_gain,
)
from tests.detection.localize_synthetic import connected_region, identity_localizer, stealthy_row


@pytest.fixture(scope="module")
def localizer() -> RegionLocalizer:
    """case118 with unit noise and no factor model (``P = I``): the residual of a region
    attack is the whitened Jacobian columns themselves."""
    return identity_localizer()


def _support(loc: RegionLocalizer, buses: list[int]) -> np.ndarray:
    out = np.zeros(loc.m, dtype=bool)
    for b in buses:
        out[loc.support[b]] = True
    return out


@pytest.mark.parametrize(("seed", "size"), [(21, 5), (52, 2), (90, 6), (10, 4)])
def test_a_synthetic_region_is_recovered_exactly(
    localizer: RegionLocalizer, seed: int, size: int
) -> None:
    region = connected_region(localizer, seed, size)
    rng = np.random.default_rng(seed)
    r = stealthy_row(localizer, region, rng, 25.0)
    buses, _ = localizer.explain(r)
    assert sorted(buses) == region
    flagged = localizer.localize(r, None, None)
    assert np.array_equal(flagged, _support(localizer, region))


def test_a_wrong_seed_next_to_the_region_is_swapped_out(localizer: RegionLocalizer) -> None:
    region = connected_region(localizer, 21, 5)
    r = stealthy_row(localizer, region, np.random.default_rng(3), 25.0)
    res, var = localizer._frame(r)
    outside = sorted({int(n) for j in region for n in localizer.adjacency[j]} - set(region))
    for seed in outside:
        assert localizer.complete(res, var, [seed], []) == region, seed


def test_network_flags_pull_a_weak_bus_into_theconnected_region() -> None:
    """A region bus whose evidence is under the per-bus penalty joins when the network
    flags its measurements (the penalty is lowered by ``region_prior`` times the flagged
    share, down to ``region_floor``)."""
    m, nb = 12, 3
    jac = np.zeros((m, 2 * nb))
    jac[[0, 1], 0] = 1.0  # buses 0 - 1 - 2 in a line; angle columns
    jac[[2, 3], 2] = 1.0
    jac[4, 4] = np.sqrt(3.0) / 10.0  # bus 2's angle moves one measurement a little
    jac[[6, 7, 8], [1, 3, 5]] = 1.0  # magnitude columns
    adjacency = [np.array([1]), np.array([0, 2]), np.array([1])]
    none = np.array([], dtype=np.int64)
    loc = RegionLocalizer(
        jac, np.ones(m), np.ones(m), np.zeros((m, 1)), np.zeros(1), adjacency, none
    )
    r = 10.0 * (jac[:, 0] + jac[:, 2] + jac[:, 4])  # the region {0, 1, 2} shifted by 10
    res, var = loc._frame(r)
    assert var == 1.0
    cfg = loc.config
    assert cfg.region_floor < 3.0 < cfg.grow_penalty  # bus 2 adds 3 to the chi-square
    assert loc.complete(res, var, [0, 1], []) == [0, 1]
    share = np.zeros(nb)
    share[2] = 1.0  # the network flags bus 2's measurements
    assert loc.complete(res, var, [0, 1], [], share) == [0, 1, 2]
    assert loc.complete(res, var, [1], [], share) == [0, 1, 2]


def test_the_batched_quadratic_gain_is_the_least_squares_projection() -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((20, 6, 30))
    a = x @ x.transpose(0, 2, 1)
    b = rng.standard_normal((20, 6))
    want = np.einsum("np,np->n", b, np.linalg.solve(a, b[..., None])[..., 0])
    got = _quadratic_gain(np.moveaxis(a, 0, -1).copy(), b.T.copy())
    np.testing.assert_allclose(got, want, rtol=1e-9)


def test_region_gains_are_the_projections_of_the_attackers_model(
    localizer: RegionLocalizer,
) -> None:
    """A batch of regions of different sizes (padded) scores exactly the chi-square of the
    least-squares fit of one common angle column and a magnitude column per bus."""
    rng = np.random.default_rng(1)
    res = rng.standard_normal(localizer.m)
    cells = [5, 300]
    fixed = np.zeros((0, localizer.m))
    for c in cells:
        fixed = _extend(fixed, localizer._cell_column(c))
    scorer = localizer._region_scorer(res, fixed)
    regions = [(3,), (20, 21, 22), tuple(connected_region(localizer, 90, 6)), (40, 41)]
    cost = np.arange(localizer.n_bus + 1, dtype=np.float64) / 100.0
    cost[-1] = 0.0
    got = scorer.gains(regions, cost)
    r0 = res - fixed.T @ (fixed @ res)
    for k, region in enumerate(regions):
        cols = [localizer._qt[:, [2 * j for j in region]].sum(axis=1)]
        cols += [localizer._qt[:, 2 * j + 1] for j in region]
        x = np.stack(cols, axis=1)
        x = x - fixed.T @ (fixed @ x)
        coef, *_ = np.linalg.lstsq(x, r0, rcond=None)
        want = float(r0 @ (x @ coef)) - cost[list(region)].sum()
        assert got[k] == pytest.approx(want, rel=1e-7, abs=1e-7)
