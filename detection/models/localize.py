"""Structured localization: which measurements of a row judged attacked were falsified.

The row test (:mod:`detection.models.detector`) says *that* a row is attacked; its cell
logits alone localize poorly where an attack is structured: a stealthy attack rewrites
every measurement of a region, many by less than the noise, and a coordinated DER
falsification moves many bus injections by a few noise units each. This module explains
the row's whitened residual under the model of normal operation
(:mod:`detection.models.normal`) with a few **atoms**, chosen greedily:

* a **bus** (two parameters): a shift of its voltage angle and magnitude, i.e. the
  bus's two columns of the AC state Jacobian (:mod:`detection.models.jacobian`); a
  stealthy attack on a region adds, to first order, a combination of the region's
  columns. Explaining by a bus flags every measurement with a non-zero Jacobian entry
  on it: exactly the set an attacker who shifts that bus's state must rewrite;
* a **cell** (one parameter): one measurement moved on its own (random and scaling
  injections, a falsified meter).

With ``y`` the whitened row and ``P`` the precision of the factor model, the fit of
atoms ``D`` minimizes ``(y - D c)' P (y - D c)``; its chi-square improvement over no
attack is the log-likelihood gain. Greedy selection (orthogonal matching pursuit in the
``P`` metric) adds the atom with the largest gain minus its penalty while that is
positive: :attr:`LocalizeConfig.tau_bus` for a bus anywhere, the smaller
``tau_grow`` for a bus next to one already chosen (an attacked region is connected),
``tau_cell`` for a cell. Penalties are in units of the row's own residual variance
(a robust estimate: the median squared residual), because out-of-sample residuals of
a grid the model fits less well are wider than standard normal.

Two kinds are recognized from their own evidence before or after the fit:

* **replay**: when at least ``replay_min_cells`` measurements repeat, bit for bit, the
  value of one to three days earlier (the network's replay look-back), those
  measurements are the verdict;
* **coordinated DER falsification**: when the fit picks at least ``der_min_cells`` DER
  bus active powers, all moved towards more export, every DER bus active power whose
  conditional residual is below ``der_level`` is flagged too (many DER streams moved by
  the same share of their rating, the small ones by less than the noise).

The row's top cell (largest logit) is always flagged, as :func:`verdicts` does. The
penalties were tuned on the training pipeline's validation scenario (attacked copies of
the reference grid), never on the held-out scenario. Nothing here is stored in a model
artifact: the localizer is derived from the model's normal model, its Jacobian and the
grid's DER buses, and rebuilt when the normal model changes (adaptation).
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import numpy as np

from detection.layout import MeasurementLayout

#: Median of a chi-square variable with one degree of freedom (robust variance estimate).
_CHI2_1_MEDIAN = 0.4549364


@dataclass(frozen=True, slots=True)
class LocalizeConfig:
    """Penalties (chi-square units, times the row's residual variance) and rules."""

    tau_bus: float = 35.0  # a bus not next to one already chosen (two parameters)
    tau_grow: float = 9.0  # a bus next to a chosen one (a connected region grows)
    tau_cell: float = 11.0  # a single measurement
    max_region: int = 6  # buses a region grows to at most (beyond: tau_bus)
    max_atoms: int = 40  # atoms per row at most
    replay_min_cells: int = 2  # bit-exact repeats that make a row a replay
    der_min_cells: int = 3  # DER injections (towards export) chosen that make a DER row
    der_level: float = -1.0  # ... then flag every DER injection residual below this


DEFAULT_CONFIG = LocalizeConfig()


def bus_adjacency(layout: MeasurementLayout) -> list[np.ndarray]:
    """Neighbouring bus positions (layout bus order) of every bus, from the branches."""
    pos = {b: k for k, b in enumerate(layout.bus_index)}
    adj: list[set[int]] = [set() for _ in layout.bus_index]
    for m in layout.measurements:
        if m.to_bus >= 0:
            a, b = pos[m.bus], pos[m.to_bus]
            adj[a].add(b)
            adj[b].add(a)
    return [np.array(sorted(a), dtype=np.int64) for a in adj]


def der_injection_columns(grid: str, layout: MeasurementLayout) -> np.ndarray:
    """Layout positions of the active-power injection of every DER bus of ``grid``."""
    from detection.grid import der_buses, load_grid

    p_col = {
        m.bus: k
        for k, m in enumerate(layout.measurements)
        if m.element_type == "bus" and m.quantity == "p_mw"
    }
    ders = [int(b) for b in der_buses(load_grid(grid)) if int(b) in p_col]
    return np.array(sorted(p_col[b] for b in ders), dtype=np.int64)


class RegionLocalizer:
    """Greedy structured explanation of one row's residual (see the module docstring).

    ``jacobian`` (m, 2 n_bus) dense [layout units per degree / per 1 % of |V|];
    ``scale``, ``noise_sd`` (m,) of the normal model; ``basis`` (m, k), ``shrink`` (k,)
    its precision ``P = I - U diag(c) U'``; ``der_columns`` positions of DER injections.
    """

    def __init__(
        self,
        jacobian: np.ndarray,
        scale: np.ndarray,
        noise_sd: np.ndarray,
        basis: np.ndarray,
        shrink: np.ndarray,
        adjacency: list[np.ndarray],
        der_columns: np.ndarray,
        config: LocalizeConfig = DEFAULT_CONFIG,
    ) -> None:
        m, nb2 = jacobian.shape
        self.m, self.n_bus = m, nb2 // 2
        self.config = config
        self.adjacency = adjacency
        self.der_columns = np.asarray(der_columns, dtype=np.int64)
        self._is_der = np.zeros(m, dtype=bool)
        self._is_der[self.der_columns] = True
        self.support = [
            np.flatnonzero((jacobian[:, 2 * j] != 0) | (jacobian[:, 2 * j + 1] != 0))
            for j in range(self.n_bus)
        ]
        self._u = np.asarray(basis, dtype=np.float64)
        keep = np.maximum(1.0 - np.asarray(shrink, dtype=np.float64), 1e-12)
        self._a = 1.0 - np.sqrt(keep)  # P^(1/2) = I - U diag(a) U'
        self._b = 1.0 / np.sqrt(keep) - 1.0  # P^(-1/2) = I + U diag(b) U'
        self._pdiag = np.maximum(1.0 - (self._u**2) @ shrink, 1e-9)
        q = jacobian / (scale * noise_sd)[:, None]  # whitened Jacobian columns
        self._qt = self._sqrt_p(q)  # in the Euclidean frame: P^(1/2) q
        qa, qm = self._qt[:, 0::2], self._qt[:, 1::2]
        self._g00 = np.einsum("ij,ij->j", qa, qa)
        self._g01 = np.einsum("ij,ij->j", qa, qm)
        self._g11 = np.einsum("ij,ij->j", qm, qm)
        self._ridge = 1e-6 * (self._g00 + self._g11) + 1e-12

    def _sqrt_p(self, v: np.ndarray) -> np.ndarray:
        if v.ndim == 1:
            return np.asarray(v - self._u @ (self._a * (self._u.T @ v)))
        return np.asarray(v - self._u @ (self._a[:, None] * (self._u.T @ v)))

    def _inv_sqrt_p(self, v: np.ndarray) -> np.ndarray:
        return np.asarray(v + self._u @ (self._b * (self._u.T @ v)))

    def explain(self, r: np.ndarray) -> tuple[list[int], list[int]]:
        """Buses (layout bus positions) and cells chosen for conditional residuals ``r`` (m,)."""
        cfg = self.config
        r = np.asarray(r, dtype=np.float64)
        var = max(1.0, float(np.median(r**2)) / _CHI2_1_MEDIAN)
        tau_bus, tau_grow, tau_cell = cfg.tau_bus * var, cfg.tau_grow * var, cfg.tau_cell * var
        # Euclidean frame: y~ = P^(1/2) y = P^(-1/2) e with e = P y = r sqrt(P_ii)
        res = self._inv_sqrt_p(r * np.sqrt(self._pdiag))
        nb, m = self.n_bus, self.m
        cap = 2 * cfg.max_atoms
        basis = np.zeros((cap, m))  # orthonormal directions of the chosen atoms
        n_dir = 0
        bq = self._qt.T @ res  # correlations of the residual with every bus column
        bc = self._sqrt_p(res)  # ... and with every cell column
        # Gram entries of the columns orthogonalized against the chosen directions
        g00, g01, g11 = self._g00 + self._ridge, self._g01.copy(), self._g11 + self._ridge
        norm_c = self._pdiag.copy()
        buses: list[int] = []
        cells: list[int] = []
        used_b = np.zeros(nb, dtype=bool)
        used_c = np.zeros(m, dtype=bool)
        near = np.zeros(nb, dtype=bool)
        for _ in range(cfg.max_atoms):
            det = np.maximum(g00 * g11 - g01**2, 1e-18)
            x0, x1 = bq[0::2], bq[1::2]
            gain_b = (g11 * x0**2 - 2.0 * g01 * x0 * x1 + g00 * x1**2) / det
            pen = np.where(near & (len(buses) < cfg.max_region), tau_grow, tau_bus)
            score_b = np.where(used_b, -np.inf, gain_b - pen)
            score_c = np.where(used_c, -np.inf, bc**2 / np.maximum(norm_c, 1e-9) - tau_cell)
            jb, jc = int(np.argmax(score_b)), int(np.argmax(score_c))
            if max(score_b[jb], score_c[jc]) <= 0.0:
                break
            if score_b[jb] >= score_c[jc]:
                cols = [self._qt[:, 2 * jb], self._qt[:, 2 * jb + 1]]
                buses.append(jb)
                used_b[jb] = True
                near[self.adjacency[jb]] = True
            else:
                unit = np.zeros(m)
                unit[jc] = 1.0
                cols = [self._sqrt_p(unit)]
                cells.append(jc)
                used_c[jc] = True
            for col in cols:
                w = col.copy()
                chosen = basis[:n_dir]
                for _pass in range(2):  # re-orthogonalize once: keeps the basis orthonormal
                    w -= chosen.T @ (chosen @ w)
                norm = float(np.linalg.norm(w))
                if norm < 1e-8 or n_dir >= cap:
                    continue
                w /= norm
                basis[n_dir] = w
                n_dir += 1
                vq, vc = self._qt.T @ w, self._sqrt_p(w)
                step = float(w @ res)
                res = res - step * w
                bq -= step * vq
                bc -= step * vc
                g00 -= vq[0::2] ** 2
                g01 -= vq[0::2] * vq[1::2]
                g11 -= vq[1::2] ** 2
                norm_c -= vc**2
        return buses, cells

    def localize(self, r: np.ndarray, replay: np.ndarray | None, top: int | None) -> np.ndarray:
        """Falsified measurements (m,) bool of one attacked row: conditional residuals ``r``
        (m,), bit-exact repeats ``replay`` (m,) bool (None: not known), ``top`` the row's
        top cell (always flagged; None: none)."""
        cfg = self.config
        flagged = np.zeros(self.m, dtype=bool)
        if replay is not None and int(np.count_nonzero(replay)) >= cfg.replay_min_cells:
            flagged |= np.asarray(replay, dtype=bool)
        else:
            r = np.asarray(r, dtype=np.float64)
            buses, cells = self.explain(r)
            for b in buses:
                flagged[self.support[b]] = True
            chosen = np.array(cells, dtype=np.int64)
            flagged[chosen] = True
            if len(self.der_columns) and len(chosen):
                export = chosen[self._is_der[chosen] & (r[chosen] < 0.0)]
                if len(export) >= cfg.der_min_cells:
                    flagged[self.der_columns[r[self.der_columns] < cfg.der_level]] = True
        if top is not None:
            flagged[int(top)] = True
        return flagged


_CACHE: weakref.WeakKeyDictionary[object, tuple[tuple[int, ...], RegionLocalizer]] = (
    weakref.WeakKeyDictionary()
)


def localizer_for(model: object) -> RegionLocalizer:
    """The localizer of a :class:`~detection.models.artifacts.TrainedModel` (cached per
    network; rebuilt when its model of normal operation changes)."""
    from detection.models.artifacts import TrainedModel

    if not isinstance(model, TrainedModel):
        raise TypeError("expected a TrainedModel")
    net = model.net
    key = tuple(int(t._version) for t in (net.mean, net.scale, net.noise_sd, net.basis, net.shrink))
    hit = _CACHE.get(net)
    if hit is not None and hit[0] == key:
        return hit[1]
    jac = np.zeros((len(model.layout), 2 * net.n_bus))
    jac[net.jac_rows.numpy(), net.jac_cols.numpy()] = net.jac_values.numpy()
    loc = RegionLocalizer(
        jac,
        net.scale.numpy().astype(np.float64),
        net.noise_sd.numpy().astype(np.float64),
        net.basis.numpy().astype(np.float64),
        net.shrink.numpy().astype(np.float64),
        bus_adjacency(model.layout),
        _der_columns(model.grid, model.layout),
    )
    _CACHE[net] = (key, loc)
    return loc


_DER_COLUMNS: dict[str, np.ndarray] = {}


def _der_columns(grid: str, layout: MeasurementLayout) -> np.ndarray:
    if grid not in _DER_COLUMNS:
        _DER_COLUMNS[grid] = der_injection_columns(grid, layout)
    return _DER_COLUMNS[grid]
