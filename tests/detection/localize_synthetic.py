"""Synthetic localization cases on the case118 Jacobian, shared by the localization tests:
an identity noise model (``P = I``: a region attack's residual is the whitened Jacobian
columns themselves), connected regions as the attacks draw them, first-order stealthy rows."""

from __future__ import annotations

import numpy as np

from detection.grid import load_grid
from detection.layout import build_layout
from detection.models.jacobian import state_jacobian
from detection.models.localize import RegionLocalizer, bus_adjacency


def identity_localizer() -> RegionLocalizer:
    """case118 with unit noise and no factor model (``P = I``)."""
    layout = build_layout(load_grid("case118"))
    jac = state_jacobian("case118", layout).dense()
    m = jac.shape[0]
    return RegionLocalizer(
        jac,
        np.ones(m),
        np.ones(m),
        np.zeros((m, 1)),
        np.zeros(1),
        bus_adjacency(layout),
        np.array([], dtype=np.int64),
    )


def connected_region(loc: RegionLocalizer, seed: int, size: int) -> list[int]:
    """A connected region grown breadth-first from ``seed`` (as the attacks draw them)."""
    out, queue = [seed], [seed]
    while queue and len(out) < size:
        for n in sorted(int(x) for x in loc.adjacency[queue.pop(0)]):
            if n not in out and len(out) < size:
                out.append(n)
                queue.append(n)
    return sorted(out)


def stealthy_row(
    loc: RegionLocalizer, region: list[int], rng: np.random.Generator, sigma: float
) -> np.ndarray:
    """Residual of a stealthy attack, to first order: one common angle for the region and
    a magnitude per bus, scaled so the largest change is ``sigma`` noise units, plus noise."""
    jac = loc._qt  # P = I: the whitened Jacobian
    shift = jac[:, [2 * j for j in region]].sum(axis=1)
    shift = shift + jac[:, [2 * j + 1 for j in region]] @ rng.uniform(-1.0, 1.0, len(region))
    shift *= sigma / np.abs(shift).max()
    return np.asarray(shift + rng.standard_normal(loc.m))
