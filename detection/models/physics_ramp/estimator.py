"""Tracking state estimator of the physics ramp stage, and the noise it estimates.

A fixed-gain Gauss-Newton weighted least-squares estimator: the gain ``K`` is the
pseudo-inverse of the whitened measurement Jacobian at the nominal operating point,
``K = pinv(W H)`` with ``W = diag(1 / std)``. Each snapshot starts from the previous
snapshot's complex bus voltages (the first from the nominal power flow, with more
iterations), takes :data:`ITERATIONS` steps

    r = W (z - h(v)),   dx = K r,   v_bus *= (1 + dx_mag / 100) exp(j deg2rad(dx_angle)),

and returns the whitened residual ``r = W (z - h(v))``. On clean data this residual is
the projection ``(I - W H K)`` of white noise: ``r_i`` has variance
``P_ii = 1 - sum_k U_ik^2`` (the redundancy of measurement ``i``) and almost no memory
across snapshots. ``h`` is :class:`detection.attacks.AcMeasurementModel`.

The noise is never given: :func:`estimate_noise_std` starts from the spread of first
differences and refines ``std_i = rms(z_i - h_i(v_hat)) / sqrt(P_ii)`` on the clean
history, re-fitting the estimator with the new weights each round.

Every function works on a batch of independent streams (axis 0 of ``v``), so the
simulated null of the threshold runs all its repetitions at once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from detection.layout import MeasurementLayout

#: Gauss-Newton steps per snapshot, and for the first snapshot of a stream (cold start).
ITERATIONS = 3
COLD_START_ITERATIONS = 8
#: Singular values of the whitened Jacobian below this share of the largest are dropped.
SINGULAR_CUTOFF = 1e-9
#: Noise-estimation rounds, and the redundancy below which a column keeps its previous std.
STD_ROUNDS = 4
STD_MIN_REDUNDANCY = 0.05
#: Robust rms: residuals beyond this many MAD-sigmas are left out (then corrected for).
CLIP_SIGMAS = 4.0
_CLIP_VARIANCE = 0.998930  # variance of a standard normal truncated at +-4
_MAD_TO_SIGMA = 1.482602


@dataclass(frozen=True, slots=True)
class GridPhysics:
    """What the estimator needs of a grid: ``model`` (h), ``jacobian`` (m, 2 n_bus)
    [layout units per degree / per 1 % of |V|], nominal voltages ``v_nominal``
    (internal buses, complex p.u.) and which internal rows a layout bus's state
    moves (``move_rows``, with ``move_bus`` the layout bus position of each)."""

    model: Any  # detection.attacks.AcMeasurementModel
    jacobian: np.ndarray
    v_nominal: np.ndarray
    move_rows: np.ndarray
    move_bus: np.ndarray


@dataclass(frozen=True, slots=True)
class TrackingEstimator:
    """The fixed-gain estimator for one noise model: ``weight`` (m,) = 1 / std
    [1 / layout unit], ``gain`` (2 n_bus, m) = pinv(W H), ``redundancy`` (m,) = P_ii."""

    physics: GridPhysics
    weight: np.ndarray
    gain: np.ndarray
    redundancy: np.ndarray


def grid_physics(grid: str, layout: MeasurementLayout) -> GridPhysics:
    """The measurement model, Jacobian and nominal voltages of ``grid`` (ValueError if
    the grid is unknown or its Jacobian cannot be built)."""
    from detection.attacks import AcMeasurementModel
    from detection.grid import load_grid, run_power_flow
    from detection.models.jacobian import state_jacobian

    try:
        net = load_grid(grid)
        run_power_flow(net)
        model = AcMeasurementModel(net, layout)
        jac = state_jacobian(grid, layout).dense()
    except Exception as e:  # any failure here means: no Jacobian for this grid
        raise ValueError(f"no measurement Jacobian for grid {grid!r}: {e}") from e
    if jac.shape != (len(layout), 2 * len(layout.bus_index)) or not np.all(np.isfinite(jac)):
        raise ValueError(f"the Jacobian of grid {grid!r} does not match its layout")
    bus = net._ppc["bus"]
    v0 = (bus[:, 7] * np.exp(1j * np.deg2rad(bus[:, 8]))).astype(np.complex128)
    rows = [np.asarray(model.bus_rows, dtype=np.int64)]
    owner = [np.arange(len(layout.bus_index), dtype=np.int64)]
    position = {int(r): k for k, r in enumerate(model.bus_rows)}
    for parent, aux in model.aux_of.items():  # hidden buses move with their real bus
        rows.append(np.asarray(aux, dtype=np.int64))
        owner.append(np.full(len(aux), position[parent], dtype=np.int64))
    return GridPhysics(model, jac, v0, np.concatenate(rows), np.concatenate(owner))


def build_estimator(physics: GridPhysics, std: np.ndarray) -> TrackingEstimator:
    """The estimator for noise ``std`` (m,) [layout units]."""
    weight = 1.0 / np.asarray(std, dtype=np.float64)
    u, s, vt = np.linalg.svd(physics.jacobian * weight[:, None], full_matrices=False)
    keep = s > s[0] * SINGULAR_CUTOFF
    u, s, vt = u[:, keep], s[keep], vt[keep]
    gain = (vt.T / s) @ u.T
    return TrackingEstimator(physics, weight, gain, 1.0 - np.sum(u * u, axis=1))


def measure(physics: GridPhysics, v: np.ndarray) -> np.ndarray:
    """``h(v)`` of a batch of voltage vectors ``v`` (b, n_internal) -> (b, m)
    [p.u., MW, Mvar], identical to ``AcMeasurementModel.measure`` row by row."""
    mdl = physics.model
    vt = v.T
    s_inj = vt * np.conj(mdl.ybus @ vt)
    vb = vt[mdl.bus_rows]
    vm = np.abs(vb)
    p = -s_inj.real[mdl.bus_rows] * mdl.base_mva + mdl.gs_mw[:, None] * vm**2
    q = -s_inj.imag[mdl.bus_rows] * mdl.base_mva - mdl.bs_mvar[:, None] * vm**2
    bus_part = np.stack([vm, p, q], axis=1).reshape(-1, v.shape[0])
    rows = mdl.branch_rows
    sf = vt[mdl.from_bus[rows]] * np.conj((mdl.yf @ vt)[rows]) * mdl.base_mva
    br_part = np.stack([sf.real, sf.imag], axis=1).reshape(-1, v.shape[0])
    return np.concatenate([bus_part, br_part]).T


def track(
    est: TrackingEstimator,
    z: np.ndarray,
    v: np.ndarray | None,
    *,
    states: bool = False,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Whitened residuals of consecutive snapshots ``z`` (t, b, m) of ``b`` streams.

    ``v`` (b, n_internal): each stream's voltages after its previous snapshot, or None
    to cold-start every stream at the nominal voltages. Returns the residuals (t, b, m),
    the voltages after the last snapshot and, with ``states``, every snapshot's (t, b, n)
    (else an empty array).
    """
    ph = est.physics
    cold = v is None
    cur = np.tile(ph.v_nominal, (z.shape[1], 1)) if v is None else v.copy()
    out = np.empty(z.shape, dtype=np.float64)
    hist = np.empty((len(z) if states else 0, *cur.shape), dtype=np.complex128)
    for t in range(len(z)):
        n_iter = COLD_START_ITERATIONS if cold and t == 0 else ITERATIONS
        for _ in range(n_iter):
            dx = (est.weight * (z[t] - measure(ph, cur))) @ est.gain.T
            factor = (1.0 + dx[:, 1::2] / 100.0) * np.exp(1j * np.deg2rad(dx[:, 0::2]))
            cur[:, ph.move_rows] *= factor[:, ph.move_bus]
        out[t] = est.weight * (z[t] - measure(ph, cur))
        if states:
            hist[t] = cur
    return out, cur, hist


def robust_rms(e: np.ndarray) -> np.ndarray:
    """Per-column rms (m,) of ``e`` (n, m) about its median, leaving out values beyond
    :data:`CLIP_SIGMAS` MAD-sigmas (outliers) and correcting for the clipped tails."""
    dev = e - np.median(e, axis=0)
    mad = _MAD_TO_SIGMA * np.median(np.abs(dev), axis=0)
    inside = np.abs(dev) <= CLIP_SIGMAS * np.maximum(mad, np.finfo(float).tiny)
    n = np.maximum(inside.sum(axis=0), 1)
    ms = np.sum(np.where(inside, dev * dev, 0.0), axis=0) / n / _CLIP_VARIANCE
    return np.asarray(np.sqrt(ms), dtype=np.float64)


def initial_std(x: np.ndarray) -> np.ndarray:
    """A rough noise std (m,) [layout units]: the robust spread of first differences
    / sqrt(2) (load changes inflate it; :func:`estimate_noise_std` refines it)."""
    s = robust_rms(np.diff(x, axis=0)) / np.sqrt(2.0)
    floor = 1e-6 * np.maximum(np.median(np.abs(x), axis=0), 1e-3)
    return np.asarray(np.maximum(s, floor), dtype=np.float64)


def estimate_noise_std(
    physics: GridPhysics, x: np.ndarray
) -> tuple[np.ndarray, TrackingEstimator, np.ndarray]:
    """The noise std (m,) [layout units] of clean consecutive rows ``x`` (n, m), the
    estimator fitted with it and the estimated voltages of every row (n, n_internal).

    Each of :data:`STD_ROUNDS` rounds runs the estimator with the current std and sets
    ``std_i = robust_rms(z_i - h_i(v_hat)) / sqrt(P_ii)`` where ``P_ii`` is at least
    :data:`STD_MIN_REDUNDANCY` (elsewhere the residual says too little; the previous
    value stays).
    """
    std = initial_std(x)
    for _ in range(STD_ROUNDS):
        est = build_estimator(physics, std)
        r, _, _ = track(est, x[:, None, :], None)
        raw = r[:, 0, :] / est.weight
        ok = est.redundancy >= STD_MIN_REDUNDANCY
        new = robust_rms(raw) / np.sqrt(np.maximum(est.redundancy, STD_MIN_REDUNDANCY))
        std = np.where(ok, np.maximum(new, 1e-9 * np.abs(std) + 1e-12), std)
    est = build_estimator(physics, std)
    _, _, v = track(est, x[:, None, :], None, states=True)
    return std, est, v[:, 0, :]
