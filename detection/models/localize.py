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

Two steps serve stealthy regions, whose evidence is often one boundary measurement far
out and the rest under the noise (:meth:`RegionLocalizer.explain`):

* **the network as a prior**: when the fit chose no bus but the bus that explains the
  most passes ``tau_bus`` on its own, a second fit starts from it, every bus's penalty
  lowered by ``prior_weight`` times the share of its measurements the network flags
  (cell logit above its cell threshold), for at most ``alt_atoms`` atoms; the fit with
  the smaller penalized chi-square is kept;
* **region search** (:meth:`RegionLocalizer.complete`): the chosen buses are replaced
  by the connected region that explains the row best under the attacker's model (one
  common angle for the region, a magnitude per bus), scored by its chi-square gain
  minus ``grow_penalty`` per bus (one parameter each), that penalty lowered by
  ``region_prior`` times the share of the bus's measurements the network flags (at
  least ``region_floor``). A beam search (``beam_width`` regions kept per step) starts
  from the chosen groups, their buses and the buses next to them on their own, and
  moves by adding a neighbour, dropping a bus or swapping a bus for one of its
  neighbours, up to ``grow_max`` buses: a neighbour the greedy fit took for a region
  bus (their columns are nearly alike) is swapped out, and the buses inside a region,
  whose own evidence cancels under a common angle, join as the region grows. One
  region per row (a row is one attack): groups the search does not join are dropped.

**Attacked runs.** An attack episode keeps its target over consecutive snapshots (a
stealthy attacker the same region, a random or scaling injection the same measurements),
while one row's evidence often cannot tell the true region from a nearby one. A
:class:`LocalizationMemory` (one per stream, kept by the caller) holds the evidence of the
current run's rows, the current and up to ``pool_rows - 1`` earlier ones (causal: the
live gate localizes one snapshot at a time); a row judged clean, or a replayed row, ends
the run. For a row that continues a run:

* **pooled region search** (:meth:`RegionLocalizer._pooled`): when the row's fit chose at
  most ``pool_max_cells`` cells (a region, not scattered measurements), the beam search
  runs again with a region scored by its chi-square gain *averaged* over the run's rows,
  each row with its own coefficients and in units of its own variance, minus the
  region's penalty; it starts from the row's own region and the previous row's. Its
  region replaces the row's own unless it explains the row itself more than
  ``pool_tolerance`` worse (a new attack right after another is the row's own); for a
  row whose fit chose no bus, only when its pooled score is positive;
* **pooled cells**: a measurement whose chi-square gain (given the row's fit: the gain
  when it was chosen, otherwise the gain it would add) averaged over the run exceeds
  ``pool_cell``, and on the row itself exceeds ``pool_cell_own``, is flagged too (a
  random injection moves the same measurements on every row, by 3-10 noise units, the
  smaller ones under one row's cell penalty).

The first row of a run is localized on its own.

Two kinds are recognized from their own evidence before or after the fit:

* **replay**: when at least ``replay_min_cells`` measurements repeat, bit for bit, the
  value of one to three days earlier (the network's replay look-back), those
  measurements are the verdict;
* **coordinated DER falsification**: when the fit picks at least ``der_min_cells`` DER
  bus active powers, all moved towards more export, every DER bus active power whose
  conditional residual is below ``der_level`` is flagged too (many DER streams moved by
  the same share of their rating, the small ones by less than the noise).

The row's top cell (largest logit) is always flagged, as :func:`verdicts` does. The
greedy fit's penalties were tuned on the training pipeline's validation scenario
(attacked copies of the reference grid), the region search's on a development scenario
(a random scenario with the reference attack ranges) and on synthetic regions injected
into its clean rows, the pooling's on the development scenario (and on injected
stealthy episodes), never on the held-out scenario; ``grow_max`` is the largest region
of the training attacks (:data:`detection.scenarios.TRAINING_MAGNITUDES`). The live gate
calls this per attacked snapshot, so the fits use matrix-vector products only (LAPACK
factorizations have millisecond tails on a shared machine): the region search scores a
batch of regions from one precomputed Gram matrix of the Jacobian columns, with a
Cholesky factorization written as numpy products over the batch. Nothing here is stored
in a model artifact: the localizer is derived from the model's normal model, its
Jacobian and the grid's DER buses, and rebuilt when the normal model changes
(adaptation).
"""

from __future__ import annotations

import weakref
from collections import deque
from dataclasses import dataclass

import numpy as np
from scipy import sparse

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
    prior_weight: float = 36.0  # second fit: bus penalty minus this times its flagged share
    alt_atoms: int = 8  # second fit: atoms at most (stopping early only makes it lose)
    grow_penalty: float = 6.0  # region search: a bus of the region (one more parameter)
    region_prior: float = 12.0  # ... minus this times the share of its measurements flagged
    region_floor: float = 1.0  # ... but at least this
    grow_max: int = 8  # region search: buses at most (the training attacks' largest)
    beam_width: int = 8  # region search: regions kept per step
    beam_steps: int = 10  # region search: steps at most
    pool_rows: int = 12  # attacked run: rows pooled at most (the current and earlier ones)
    pool_max_cells: int = 4  # pooled region search: rows whose fit chose at most this many cells
    pool_tolerance: float = 20.0  # ... kept unless it explains the row this much worse
    pool_cell: float = 8.0  # pooled cells: a cell whose mean gain over the run exceeds this
    pool_cell_own: float = 1.0  # ... and whose gain on the row itself exceeds this


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


@dataclass(frozen=True, slots=True)
class _RowEvidence:
    """One localized row of an attacked run: its row in the Euclidean frame, its residual
    variance, the correlations with every bus column and the region chosen."""

    res: np.ndarray
    var: float
    corr: np.ndarray
    cell_gain: np.ndarray
    region: tuple[int, ...]


class LocalizationMemory:
    """The rows of the current attacked run of one stream (kept by the caller between
    snapshots, like :class:`~detection.models.sequential.RampMonitor`)."""

    def __init__(self) -> None:
        self.rows: deque[_RowEvidence] = deque()
        self.owner: object | None = None

    def reset(self) -> None:
        """Forget the run (a row judged clean ends it)."""
        self.rows.clear()
        self.owner = None

    def __len__(self) -> int:
        return len(self.rows)

    def _past(self, owner: object, limit: int) -> list[_RowEvidence]:
        if self.owner is not owner:
            self.reset()
            self.owner = owner
        while len(self.rows) > max(limit, 0):
            self.rows.popleft()
        return list(self.rows)

    def _push(self, owner: object, row: _RowEvidence, limit: int) -> None:
        if self.owner is not owner:
            self.reset()
            self.owner = owner
        self.rows.append(row)
        while len(self.rows) > max(limit, 0):
            self.rows.popleft()


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
        # q' v for the correlations with every bus column: q is sparse (a bus touches
        # its own and its neighbours' measurements) and qt' w = q' (P^(1/2) w)
        self._q_sparse_t = sparse.csr_matrix(q.T)
        qa, qm = self._qt[:, 0::2], self._qt[:, 1::2]
        self._g00 = np.einsum("ij,ij->j", qa, qa)
        self._g01 = np.einsum("ij,ij->j", qa, qm)
        self._g11 = np.einsum("ij,ij->j", qm, qm)
        self._ridge = 1e-6 * (self._g00 + self._g11) + 1e-12
        incidence = np.zeros((self.n_bus, m))
        for j, sup in enumerate(self.support):
            incidence[j, sup] = 1.0 / max(len(sup), 1)
        self._share = incidence  # share of a bus's support: (n_bus, m) @ flagged (m,)
        # Gram matrix of every bus column (Euclidean frame), with a zero row and column for
        # padding (index 2 n_bus): the region search scores sets of columns from it
        gram = np.zeros((nb2 + 1, nb2 + 1))
        gram[:nb2, :nb2] = self._qt.T @ self._qt
        self._gram = gram
        self._near = [sum(1 << int(n) for n in set(a.tolist())) for a in adjacency]
        self._last_projected: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None

    def _sqrt_p(self, v: np.ndarray) -> np.ndarray:
        if v.ndim == 1:
            return np.asarray(v - self._u @ (self._a * (self._u.T @ v)))
        return np.asarray(v - self._u @ (self._a[:, None] * (self._u.T @ v)))

    def _cell_column(self, c: int) -> np.ndarray:
        """``P^(1/2) e_c``: measurement ``c`` moved on its own, in the Euclidean frame."""
        col = -(self._u @ (self._a * self._u[c]))
        col[c] += 1.0
        return np.asarray(col)

    def _inv_sqrt_p(self, v: np.ndarray) -> np.ndarray:
        return np.asarray(v + self._u @ (self._b * (self._u.T @ v)))

    def _frame(self, r: np.ndarray) -> tuple[np.ndarray, float]:
        """The row in the Euclidean frame (``P^(1/2) y``) and its robust residual variance."""
        var = max(1.0, float(np.median(r**2)) / _CHI2_1_MEDIAN)
        # y~ = P^(1/2) y = P^(-1/2) e with e = P y = r sqrt(P_ii)
        return self._inv_sqrt_p(r * np.sqrt(self._pdiag)), var

    def _bus_gains(self, res: np.ndarray) -> np.ndarray:
        """Chi-square gain of every bus on its own (two columns) for ``res`` (Euclidean frame)."""
        bq = self._qt.T @ res
        g00, g01, g11 = self._g00 + self._ridge, self._g01, self._g11 + self._ridge
        x0, x1 = bq[0::2], bq[1::2]
        det = np.maximum(g00 * g11 - g01**2, 1e-18)
        return np.asarray((g11 * x0**2 - 2.0 * g01 * x0 * x1 + g00 * x1**2) / det)

    def _fit(
        self,
        res: np.ndarray,
        var: float,
        first_bus: int | None = None,
        prior: np.ndarray | None = None,
        max_atoms: int | None = None,
    ) -> tuple[list[int], list[int], float, np.ndarray]:
        """Greedy fit of ``res`` (Euclidean frame): buses, cells, the penalized objective
        (residual chi-square plus the penalties paid) and every cell's chi-square gain (a
        chosen cell's when it was chosen, any other's given the fit). ``first_bus``: start
        with that bus; ``prior`` (n_bus,): a bus not next to a chosen one pays ``tau_bus -
        prior_weight * prior`` (at least ``tau_grow``)."""
        cfg = self.config
        tau_bus, tau_grow, tau_cell = cfg.tau_bus * var, cfg.tau_grow * var, cfg.tau_cell * var
        far = np.full(self.n_bus, tau_bus)
        if prior is not None:
            far = np.maximum(tau_bus - cfg.prior_weight * var * prior, tau_grow)
        res = res.copy()
        nb, m = self.n_bus, self.m
        cap = 2 * cfg.max_atoms
        basis = np.zeros((cap, m))  # orthonormal directions of the chosen atoms
        n_dir = 0
        bc = self._sqrt_p(res)  # correlations of the residual with every cell column
        bq = self._q_sparse_t @ bc  # ... and with every bus column (qt' res = q' P^(1/2) res)
        # Gram entries of the columns orthogonalized against the chosen directions
        g00, g01, g11 = self._g00 + self._ridge, self._g01.copy(), self._g11 + self._ridge
        norm_c = self._pdiag.copy()
        buses: list[int] = []
        cells: list[int] = []
        paid = 0.0
        used_b = np.zeros(nb, dtype=bool)
        used_c = np.zeros(m, dtype=bool)
        taken = np.zeros(m)
        near = np.zeros(nb, dtype=bool)
        for step_no in range(cfg.max_atoms if max_atoms is None else max_atoms):
            det = np.maximum(g00 * g11 - g01**2, 1e-18)
            x0, x1 = bq[0::2], bq[1::2]
            gain_b = (g11 * x0**2 - 2.0 * g01 * x0 * x1 + g00 * x1**2) / det
            pen = np.where(near & (len(buses) < cfg.max_region), tau_grow, far)
            if step_no == 0 and first_bus is not None:
                take_bus, jb, jc = True, int(first_bus), -1
            else:
                score_b = np.where(used_b, -np.inf, gain_b - pen)
                score_c = np.where(used_c, -np.inf, bc**2 / np.maximum(norm_c, 1e-9) - tau_cell)
                jb, jc = int(np.argmax(score_b)), int(np.argmax(score_c))
                if max(score_b[jb], score_c[jc]) <= 0.0:
                    break
                take_bus = bool(score_b[jb] >= score_c[jc])
            if take_bus:
                cols = [self._qt[:, 2 * jb], self._qt[:, 2 * jb + 1]]
                buses.append(jb)
                paid += float(pen[jb])
                used_b[jb] = True
                near[self.adjacency[jb]] = True
            else:
                cols = [self._cell_column(jc)]
                taken[jc] = bc[jc] ** 2 / max(norm_c[jc], 1e-9)
                cells.append(jc)
                paid += tau_cell
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
                vc = self._sqrt_p(w)
                vq = self._q_sparse_t @ vc
                step = float(w @ res)
                res = res - step * w
                bq -= step * vq
                bc -= step * vc
                g00 -= vq[0::2] ** 2
                g01 -= vq[0::2] * vq[1::2]
                g11 -= vq[1::2] ** 2
                norm_c -= vc**2
        cell_gain = np.where(used_c, taken, bc**2 / np.maximum(norm_c, 1e-9))
        return buses, cells, float(res @ res) + paid, cell_gain

    def explain(
        self,
        r: np.ndarray,
        hot: np.ndarray | None = None,
        memory: LocalizationMemory | None = None,
    ) -> tuple[list[int], list[int]]:
        """Buses (layout bus positions) and cells chosen for conditional residuals ``r`` (m,).

        ``hot`` (m,) bool: the measurements the network flags (cell logit above its cell
        threshold). When the fit chooses no bus, a second fit starts from the bus that
        explains the most (if it passes ``tau_bus``) with each bus's penalty lowered by
        ``prior_weight`` times the share of its measurements the network flags; the fit
        with the smaller penalized objective is kept. The buses chosen are then replaced by
        the region that explains the row best (:meth:`complete`). ``memory``: the earlier
        rows of the attacked run this row continues (see :meth:`_pooled`); the row is added
        to it.
        """
        r = np.asarray(r, dtype=np.float64)
        res, var = self._frame(r)
        buses, cells, objective, cell_gain = self._fit(res, var)
        if not buses and hot is not None:
            gains = self._bus_gains(res)
            jb = int(np.argmax(gains))
            if gains[jb] > self.config.tau_bus * var:
                prior = self._share @ np.asarray(hot, dtype=np.float64)
                b2, c2, j2, g2 = self._fit(res, var, jb, prior, self.config.alt_atoms)
                if j2 < objective:
                    buses, cells, cell_gain = b2, c2, g2
        share = None if hot is None else self._share @ np.asarray(hot, dtype=np.float64)
        past = [] if memory is None else memory._past(self, self.config.pool_rows - 1)
        pool = bool(past) and len(cells) <= self.config.pool_max_cells
        fixed = self._fixed(cells) if buses or pool else np.zeros((0, self.m))
        single: tuple[list[int], float] = ([], 0.0)
        if buses:
            single = self._search(res, var, self._components(buses), fixed, share)
            buses = single[0]
        if memory is not None:
            if pool:
                buses = self._pooled(res, var, fixed, share, single, past)
            memory._push(
                self,
                _RowEvidence(res, var, self._qt.T @ res, cell_gain / var, tuple(buses)),
                self.config.pool_rows - 1,
            )
        return buses, cells

    def _pooled(
        self,
        res: np.ndarray,
        var: float,
        fixed: np.ndarray,
        share: np.ndarray | None,
        single: tuple[list[int], float],
        past: list[_RowEvidence],
    ) -> list[int]:
        """The region of a row that continues an attacked run (earlier rows ``past``, the
        row's own region and score ``single``): a beam search (:meth:`_search`) scoring a
        region by its mean chi-square gain over the run's rows, each row with its own
        coefficients and in units of its own variance, minus the region's penalty,
        starting from the row's own region and the previous row's. Kept when it explains
        the row itself at most ``pool_tolerance`` worse than the row's own region (a new
        attack right after another is the row's own), and, for a row that chose no bus,
        when its pooled score is positive."""
        region, score = single
        groups = [g for g in (region, list(past[-1].region)) if g]
        if not groups:
            return region
        pooled, pooled_score = self._search(res, var, groups, fixed, share, past)
        if sorted(pooled) == sorted(region) or (not region and pooled_score <= 0.0):
            return region
        own = self._region_score(res, var, pooled, fixed, share)
        return pooled if own >= score - self.config.pool_tolerance else region

    def _components(self, buses: list[int]) -> list[list[int]]:
        chosen, seen = set(buses), set()
        out: list[list[int]] = []
        for b in buses:
            if b in seen:
                continue
            comp, stack = [], [b]
            seen.add(b)
            while stack:
                x = stack.pop()
                comp.append(x)
                for n in self.adjacency[x]:
                    if int(n) in chosen and int(n) not in seen:
                        seen.add(int(n))
                        stack.append(int(n))
            out.append(comp)
        return out

    def complete(
        self,
        res: np.ndarray,
        var: float,
        buses: list[int],
        cells: list[int],
        share: np.ndarray | None = None,
    ) -> list[int]:
        """Region search: the connected region that best explains ``res`` (Euclidean frame)
        under the attacker's model, starting from the chosen ``buses``.

        A stealthy attacker shifts every bus of a connected region by the same angle (and
        each bus's magnitude by its own factor), so region ``S`` explains the row with one
        angle column (the sum of its buses' angle columns) and one magnitude column per
        bus, the chosen ``cells`` staying in the fit. A region scores its chi-square gain
        minus, per bus, ``grow_penalty`` lowered by ``region_prior`` times the share of
        the bus's measurements the network flags (``share``, None: not known; at least
        ``region_floor``), all times the row's residual variance ``var``. A beam search
        (``beam_width`` regions per step, at most ``beam_steps`` steps) starts from each
        connected group of ``buses`` and from each of their buses and its neighbours on
        its own; its moves add a neighbour, drop a bus or swap a bus for one of its
        neighbours, keeping the region connected and at most ``grow_max`` buses; it stops
        when a step brings no region among the best ``beam_width``. One region is
        returned (a row is one attack): groups the greedy fit chose elsewhere are dropped
        unless the search joins them.
        """
        if not buses:
            return []
        return self._search(res, var, self._components(buses), self._fixed(cells), share)[0]

    def _fixed(self, cells: list[int]) -> np.ndarray:
        fixed = np.zeros((0, self.m))
        for c in cells:
            fixed = _extend(fixed, self._cell_column(c))
        return fixed

    def _region_scorer(
        self, res: np.ndarray, fixed: np.ndarray, past: list[_RowEvidence] | None = None
    ) -> _RegionScorer:
        """Chi-square gain of regions for ``res`` with the directions ``fixed`` (orthonormal
        rows) in the fit: Gram matrix and correlations of every bus column after ``fixed``
        is projected out (products only). ``past``: earlier rows of the run, each scored
        with its own coefficients (correlation columns after the row's), gains weighted by
        each row's inverse variance (the current row's is the caller's to divide by)."""
        nb2 = 2 * self.n_bus
        k = 1 + (len(past) if past else 0)
        corr = np.zeros((nb2 + 1, k)) if past else np.zeros(nb2 + 1)
        w, gram = self._projected(fixed)
        if len(fixed):
            res = res - fixed.T @ (fixed @ res)
        if not past:
            corr[:nb2] = self._qt.T @ res
            return _RegionScorer(gram, corr, self.n_bus)
        corr[:nb2, 0] = self._qt.T @ res
        for j, row in enumerate(past, start=1):
            corr[:nb2, j] = row.corr - w.T @ (fixed @ row.res) if len(fixed) else row.corr
        return _RegionScorer(gram, corr, self.n_bus)

    def _projected(self, fixed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``fixed @ qt`` and the Gram matrix of the bus columns with ``fixed`` projected out
        (the last one's kept: a row's searches share their ``fixed``)."""
        hit = self._last_projected
        if hit is not None and hit[0] is fixed:
            return hit[1], hit[2]
        nb2 = 2 * self.n_bus
        if len(fixed):
            w = fixed @ self._qt
            gram = self._gram.copy()
            gram[:nb2, :nb2] -= w.T @ w
        else:
            w, gram = np.zeros((0, nb2)), self._gram
        self._last_projected = (fixed, w, gram)
        return w, gram

    def _bus_costs(self, var: float, share: np.ndarray | None) -> np.ndarray:
        cfg = self.config
        pen = cfg.grow_penalty * var
        if share is not None and cfg.region_prior > 0.0:
            bus_pen = np.maximum(pen - cfg.region_prior * var * share, cfg.region_floor * var)
        else:
            bus_pen = np.full(self.n_bus, pen)
        cost = np.zeros(self.n_bus + 1)  # a region's penalty: the sum over its buses
        cost[:-1] = bus_pen
        return cost

    def _region_score(
        self,
        res: np.ndarray,
        var: float,
        region: list[int],
        fixed: np.ndarray,
        share: np.ndarray | None,
    ) -> float:
        """Penalized gain of one region for one row (units of the row's variance)."""
        if not region:
            return 0.0
        scorer = self._region_scorer(res, fixed)
        gain = scorer.gains([tuple(sorted(region))], self._bus_costs(var, share))
        return float(gain[0]) / var

    def _search(
        self,
        res: np.ndarray,
        var: float,
        groups: list[list[int]],
        fixed: np.ndarray,
        share: np.ndarray | None,
        past: list[_RowEvidence] | None = None,
    ) -> tuple[list[int], float]:
        """Beam search over connected regions (see :meth:`complete`): the best region and
        its score (units of the row's variance). ``past``: pooled over those rows too."""
        cfg = self.config
        cost = self._bus_costs(var, share)
        if past:
            scorer = self._region_scorer(res, fixed, past)
            scorer.weights = np.array([1.0 / var] + [1.0 / row.var for row in past])
            unit = float(len(scorer.weights))  # a sum over the rows: the mean times this
            cost = cost / var * unit
        else:
            scorer = self._region_scorer(res, fixed)
            unit = var
        # regions as bit masks over the buses (bus j: bit j): sets, sorting and hashing of
        # a few hundred candidate regions per row stay cheap
        near = self._near
        buses: dict[int, tuple[int, ...]] = {}
        connected: dict[int, bool] = {}
        seen: dict[int, float] = {}

        def members(x: int) -> tuple[int, ...]:
            hit = buses.get(x)
            if hit is None:
                hit = buses[x] = _bits(x)
            return hit

        def border(x: int) -> int:
            out = 0
            for j in members(x):
                out |= near[j]
            return out & ~x

        def is_connected(x: int) -> bool:
            hit = connected.get(x)
            if hit is None:
                reach = x & -x  # grow from the lowest bus through neighbours inside
                stack = [reach.bit_length() - 1]
                while stack:
                    new = near[stack.pop()] & x & ~reach
                    reach |= new
                    stack.extend(_bits(new))
                hit = connected[x] = reach == x
            return hit

        def evaluate(states: list[int]) -> None:
            gains = scorer.gains([members(x) for x in states], cost)
            seen.update(zip(states, gains.tolist(), strict=True))

        def best_first(states: set[int]) -> list[int]:
            return sorted(states, key=lambda x: (-seen[x], x))[: cfg.beam_width]

        # start: each group, each of its buses and each of their neighbours on its own (the
        # greedy fit can seed a region with a neighbour whose columns resemble a region bus's)
        start = {sum(1 << j for j in g) for g in groups}
        start |= {1 << k for g in groups for j in g for k in (j, *_bits(near[j]))}
        evaluate(sorted(start))
        beam = best_first(start)
        expanded: set[int] = set()
        for _step in range(cfg.beam_steps):
            moves: set[int] = set()
            for x in beam:
                if x in expanded:
                    continue  # its moves are scored already
                expanded.add(x)
                inside = members(x)
                if len(inside) < cfg.grow_max:
                    moves.update(x | (1 << k) for k in _bits(border(x)))
                if len(inside) > 1:
                    for j in inside:
                        rest = x & ~(1 << j)
                        if is_connected(rest):
                            moves.add(rest)
                            # swap j for one of its own neighbours next to the rest
                            swap = border(rest) & near[j]
                            moves.update(rest | (1 << k) for k in _bits(swap))
            new = sorted(moves.difference(seen))
            if not new:
                break
            evaluate(new)
            pool = best_first({*beam, *new})
            if set(pool) == set(beam):
                break  # no new region is among the best: the search has converged
            beam = pool
        best = min(seen, key=lambda x: (-seen[x], x))
        return list(members(best)), seen[best] / unit

    def localize(
        self,
        r: np.ndarray,
        replay: np.ndarray | None,
        top: int | None,
        hot: np.ndarray | None = None,
        memory: LocalizationMemory | None = None,
    ) -> np.ndarray:
        """Falsified measurements (m,) bool of one attacked row: conditional residuals ``r``
        (m,), bit-exact repeats ``replay`` (m,) bool (None: not known), ``top`` the row's
        top cell (always flagged; None: none), ``hot`` (m,) bool the measurements whose
        cell logit exceeds its cell threshold (None: not known; see :meth:`explain`).
        ``memory``: the attacked run this row continues (:meth:`explain`); a replayed row
        ends it."""
        cfg = self.config
        flagged = np.zeros(self.m, dtype=bool)
        if replay is not None and int(np.count_nonzero(replay)) >= cfg.replay_min_cells:
            flagged |= np.asarray(replay, dtype=bool)
            if memory is not None:
                memory.reset()
        else:
            r = np.asarray(r, dtype=np.float64)
            buses, cells = self.explain(r, hot, memory)
            if memory is not None and cfg.pool_cell > 0.0 and len(memory) > 1:
                pooled = np.mean([row.cell_gain for row in memory.rows], axis=0)
                own = memory.rows[-1].cell_gain
                flagged |= (pooled > cfg.pool_cell) & (own > cfg.pool_cell_own)
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


class _RegionScorer:
    """Chi-square gains of regions from a Gram matrix ``gram`` (2 n_bus + 1 square, last
    row and column zero: padding) and correlations ``corr`` of the bus columns with the
    residual. Region ``S``: one angle column (the sum of its buses' angle columns) and a
    magnitude column per bus; its gain is ``b' A^-1 b`` with ``A`` the Gram matrix of
    those columns and ``b`` their correlations."""

    def __init__(self, gram: np.ndarray, corr: np.ndarray, n_bus: int) -> None:
        self.gram, self.corr, self.n_bus = gram, corr, n_bus
        self.weights: np.ndarray | None = None  # corr (2 n_bus + 1, k): weight of each row

    def gains(self, regions: list[tuple[int, ...]], cost: np.ndarray) -> np.ndarray:
        """Gain of every region (bus positions) of a batch, minus the sum of ``cost``
        (n_bus + 1,: per bus, then 0 for padding) over its buses."""
        p = max(len(x) for x in regions)
        nb = self.n_bus
        pad = 2 * nb
        # (p, n): the batch is the last axis, so the factorization works on whole rows
        ia = 2 * np.array([(*x, *((nb,) * (p - len(x)))) for x in regions], dtype=np.int64).T
        padded = ia == pad
        im = np.where(padded, pad, ia + 1)
        g = self.gram
        a = np.empty((p + 1, p + 1, len(regions)))
        a[1:, 1:] = g[im[:, None, :], im[None, :, :]]
        cross = g[ia[:, None, :], im[None, :, :]].sum(axis=0)
        a[0, 1:] = cross
        a[1:, 0] = cross
        a[0, 0] = g[ia[:, None, :], ia[None, :, :]].sum(axis=(0, 1))
        diag = np.einsum("iin->in", a)
        diag[1:] += padded  # padding: a unit column, uncorrelated with the residual
        diag += 1e-9 * (1.0 + diag)  # a tiny ridge: columns of a region can be collinear
        b = np.empty((p + 1, len(regions), *self.corr.shape[1:]))
        b[0] = self.corr[ia].sum(axis=0)
        b[1:] = self.corr[im]
        return np.asarray(_quadratic_gain(a, b, self.weights) - cost[ia // 2].sum(axis=0))


def _quadratic_gain(a: np.ndarray, b: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """``b' a^-1 b`` for a batch of small symmetric positive definite matrices ``a``
    (p, p, n) and vectors ``b`` (p, n), both overwritten: Cholesky with numpy products
    over the batch (no LAPACK call per row). ``b`` (p, n, k) with ``weights`` (k,): the
    weighted sum over the k vectors of each matrix."""
    p = a.shape[0]
    out = np.zeros(a.shape[2])
    for j in range(p):
        d = np.sqrt(np.maximum(a[j, j], 1e-12))
        if weights is None:
            y = b[j] / d
            out += y * y
        else:
            y = b[j] / d[:, None]
            out += (y * y) @ weights
        if j + 1 < p:
            low = a[j + 1 :, j] / d
            a[j + 1 :, j + 1 :] -= low[:, None, :] * low[None, :, :]
            if weights is None:
                b[j + 1 :] -= low * y
            else:
                b[j + 1 :] -= low[:, :, None] * y[None]
    return out


def _bits(x: int) -> tuple[int, ...]:
    """Positions of the set bits of ``x``, ascending (the buses of a region mask)."""
    out = []
    while x:
        low = x & -x
        out.append(low.bit_length() - 1)
        x ^= low
    return tuple(out)


def _extend(rows: np.ndarray, col: np.ndarray) -> np.ndarray:
    """Orthonormal ``rows`` (k, m) with ``col`` added (Gram-Schmidt, re-orthogonalized
    once); unchanged when ``col`` lies in their span."""
    w = np.array(col, dtype=np.float64)
    for _pass in range(2):
        w -= rows.T @ (rows @ w)
    norm = float(np.sqrt(w @ w))
    if norm < 1e-8:
        return rows
    return np.vstack([rows, w / norm])


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
