"""The AC measurement Jacobian of a grid: how each measurement moves when one bus's state does.

Column ``2 j`` is the change of every layout measurement per degree of voltage angle
at bus ``j`` (layout bus order), column ``2 j + 1`` per 1 % of voltage magnitude; both at
the grid's nominal operating point, by forward differences of the AC measurement
function ``h`` (:class:`detection.attacks.AcMeasurementModel`), with hidden auxiliary
buses moving along (as in :func:`detection.attacks.stealthy_delta`). A stealthy attack
on a region adds (to first order) a combination of the region's columns to the data.
Stored sparse: a bus touches only its own and its neighbours' measurements.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from detection.layout import MeasurementLayout

#: Finite-difference steps: angle [deg] and relative magnitude.
ANGLE_STEP_DEG = 1e-3
MAGNITUDE_STEP = 1e-5


@dataclass(frozen=True, slots=True)
class StateJacobian:
    """Sparse (m, 2 n_bus) Jacobian: entries ``values`` at (``rows``, ``cols``)
    [layout units per degree (even columns) or per 1 % of |V| (odd columns)]."""

    rows: np.ndarray
    cols: np.ndarray
    values: np.ndarray
    n_measurements: int
    n_buses: int

    def dense(self) -> np.ndarray:
        out = np.zeros((self.n_measurements, 2 * self.n_buses))
        out[self.rows, self.cols] = self.values
        return out


def state_jacobian(grid: str, layout: MeasurementLayout) -> StateJacobian:
    """The Jacobian of ``grid`` at its nominal operating point (one power flow)."""
    from detection.attacks import measurement_model, stealthy_delta
    from detection.grid import load_grid, run_power_flow

    model = measurement_model(grid, layout)
    net = load_grid(grid)
    run_power_flow(net)
    bus = net._ppc["bus"]
    v = bus[:, 7] * np.exp(1j * np.deg2rad(bus[:, 8]))
    rows: list[np.ndarray] = []
    cols: list[np.ndarray] = []
    vals: list[np.ndarray] = []
    for j in range(len(layout.bus_index)):
        pos = np.array([j], dtype=np.int64)
        angle = stealthy_delta(model, v, pos, ANGLE_STEP_DEG, 1.0) / ANGLE_STEP_DEG
        magnitude = stealthy_delta(model, v, pos, 0.0, 1.0 + MAGNITUDE_STEP) / (
            MAGNITUDE_STEP * 100.0
        )
        for col, d in ((2 * j, angle), (2 * j + 1, magnitude)):
            nz = np.flatnonzero(d)
            rows.append(nz)
            cols.append(np.full(len(nz), col, dtype=np.int64))
            vals.append(d[nz])
    return StateJacobian(
        rows=np.concatenate(rows).astype(np.int64),
        cols=np.concatenate(cols).astype(np.int64),
        values=np.concatenate(vals).astype(np.float64),
        n_measurements=len(layout),
        n_buses=len(layout.bus_index),
    )
