"""False-data-injection attacks on a generated series, with labels per row and per cell.

Kinds (:data:`ATTACK_KINDS`):

``stealthy``
    AC-consistent attack on a region: the attacker picks a few connected buses and
    shifts their state (voltage angle by ``dtheta``, magnitude by a factor, sized so
    that the largest rewritten measurement moves by 5-30 noise standard deviations), then
    rewrites every affected measurement with the AC measurement function ``h``:
    ``z_a = z + h(V') - h(V)`` where ``V`` is the true state and ``V'`` the shifted
    one. Since ``z = h(V) + e``, ``z_a = h(V') + e``: the attacked data is an exact,
    noise-consistent measurement of another physically valid state, so the WLS
    residual (chi-square) and the largest-normalized-residual tests see nothing.
``ramp``
    a bias on a few measurements of one element, growing linearly over the episode.
``random``
    random additive injections of 3-10 noise standard deviations on random columns.
``scaling``
    random columns multiplied by ``1 + s`` with ``|s|`` in [0.1, 0.5].
``replay``
    the measurements of a region replayed from the same time one or more days earlier.
``der``
    coordinated falsification of many DER streams: the bus active power of at least
    half of the DER buses reports extra generation of the same share of their rating.
``price``
    the price signal ``price_eur_per_mwh`` is scaled by 1.4-3.0 (raised) or 0.2-0.84 (lowered).

Labels: a row label (the attack kind, or ``"none"``) and a boolean mask with one
column per data column (every measurement and the price); a cell is true exactly
where the attack changed its value.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from detection.dataset import ATTACK_COLUMN, NO_ATTACK
from detection.generate import PRICE_COLUMN, STEPS_PER_DAY, GeneratedSeries
from detection.grid import der_buses, load_grid, run_power_flow
from detection.layout import MeasurementLayout

ATTACK_KINDS: tuple[str, ...] = (
    "stealthy",
    "ramp",
    "random",
    "scaling",
    "replay",
    "der",
    "price",
)


class AcMeasurementModel:
    """The AC measurement function ``h(V)`` of the layout, from pandapower's internal model.

    Built from a net after ``runpp``: uses the bus admittance matrices of the internal
    (``net._ppc``) model, so ``measure(V)`` reproduces ``snapshot_vector`` for the
    power-flow voltages ``V`` (internal bus order, complex p.u.).
    """

    def __init__(self, net: Any, layout: MeasurementLayout) -> None:
        from pandapower.pypower.makeYbus import makeYbus

        ppc = net._ppc
        self.base_mva = float(ppc["baseMVA"])
        bus, branch = ppc["bus"], ppc["branch"]
        self.ybus, self.yf, _ = makeYbus(self.base_mva, bus, branch)
        self.ybus, self.yf = self.ybus.tocsr(), self.yf.tocsr()
        self.from_bus = branch[:, 0].real.astype(np.int64)
        lookup = net._pd2ppc_lookups
        self.bus_rows = np.asarray(lookup["bus"][np.array(layout.bus_index, dtype=np.int64)])
        self.gs_mw = bus[self.bus_rows, 4].real.astype(np.float64)
        self.bs_mvar = bus[self.bus_rows, 5].real.astype(np.float64)
        rows: list[np.ndarray] = []
        for name, index in (("line", layout.line_index), ("trafo", layout.trafo_index)):
            if index:
                start, _ = lookup["branch"][name]
                pos = np.array([net[name].index.get_loc(i) for i in index], dtype=np.int64)
                rows.append(start + pos)
        self.branch_rows = np.concatenate(rows) if rows else np.empty(0, dtype=np.int64)
        self.n_bus_internal = bus.shape[0]
        # internal auxiliary buses (e.g. the open end of a line behind an open switch)
        # hang off one real bus; a state shift of that bus must move them along
        real = set(int(r) for r in self.bus_rows)
        to_bus = branch[:, 1].real.astype(np.int64)
        self.aux_of: dict[int, list[int]] = {}
        for f, t in zip(self.from_bus, to_bus, strict=True):
            for a, b in ((int(f), int(t)), (int(t), int(f))):
                if a in real and b not in real:
                    self.aux_of.setdefault(a, []).append(b)

    def ppc_bus(self, pp_buses: np.ndarray) -> np.ndarray:
        """Internal bus rows of pandapower buses (positions in the layout's bus order)."""
        return np.asarray(self.bus_rows[pp_buses], dtype=np.int64)

    def measure(self, v: np.ndarray) -> np.ndarray:
        """``h(V)`` in layout order [p.u., MW, Mvar]."""
        s_inj = v * np.conj(self.ybus @ v)
        vb = v[self.bus_rows]
        vm = np.abs(vb)
        p = -s_inj.real[self.bus_rows] * self.base_mva + self.gs_mw * vm**2
        q = -s_inj.imag[self.bus_rows] * self.base_mva - self.bs_mvar * vm**2
        bus_part = np.column_stack([vm, p, q]).ravel()
        rows = self.branch_rows
        sf = v[self.from_bus[rows]] * np.conj((self.yf @ v)[rows]) * self.base_mva
        br_part = np.column_stack([sf.real, sf.imag]).ravel()
        return np.concatenate([bus_part, br_part])


def measurement_model(grid: str, layout: MeasurementLayout) -> AcMeasurementModel:
    """The AC measurement model of a named grid (topology and impedances only)."""
    net = load_grid(grid)
    run_power_flow(net)
    return AcMeasurementModel(net, layout)


@dataclass(frozen=True, slots=True)
class AttackEpisode:
    """One attack on rows ``[start, stop)`` (row positions)."""

    kind: str
    start: int
    stop: int
    detail: str  # human-readable parameters
    buses: tuple[int, ...] = ()  # the region / DER buses attacked, if any
    lag_steps: int = 0  # replay: how far back the replayed period lies


@dataclass(slots=True)
class AttackedSeries:
    """Attacked data and its labels, row-aligned with ``t``."""

    data: pd.DataFrame  # t, layout columns, price
    labels: pd.DataFrame  # t, attack, one bool column per data column
    episodes: list[AttackEpisode]


#: Range of the largest change of a stealthy attack, in noise standard deviations.
STEALTHY_TARGET_SIGMA = (5.0, 30.0)


@dataclass(frozen=True, slots=True)
class AttackMagnitudes:
    """Ranges the attack parameters are drawn from (uniform; the defaults are the reference).

    Sizes in noise standard deviations (``*_sigma``) or shares; region sizes in buses as
    ``[low, high)``. ``stealthy_region=None``: ``[2, 5)`` on grids under 50 buses, else
    ``[2, 7)``. Training draws from wider ranges than evaluation (see
    :mod:`detection.scenarios`).
    """

    stealthy_sigma: tuple[float, float] = STEALTHY_TARGET_SIGMA
    stealthy_region: tuple[int, int] | None = None
    ramp_sigma: tuple[float, float] = (4.0, 15.0)
    random_sigma: tuple[float, float] = (3.0, 10.0)
    column_share: tuple[float, float] = (0.01, 0.05)  # random and scaling: share of columns
    scaling: tuple[float, float] = (0.1, 0.5)  # |s| of the factor 1 + s
    replay_region: tuple[int, int] = (2, 8)
    der_share: tuple[float, float] = (0.2, 0.6)  # of each DER bus's rated power

    def __post_init__(self) -> None:
        ranges = (
            self.stealthy_sigma,
            self.ramp_sigma,
            self.random_sigma,
            self.column_share,
            self.scaling,
            self.der_share,
        )
        if any(not 0.0 < lo <= hi for lo, hi in ranges):
            raise ValueError("attack magnitude ranges must satisfy 0 < low <= high")
        regions = [self.replay_region] + ([self.stealthy_region] if self.stealthy_region else [])
        if any(not 1 <= lo < hi for lo, hi in regions):
            raise ValueError("region size ranges must satisfy 1 <= low < high")


#: Smallest change the stealthy attack keeps [p.u., MW, Mvar]; far below any noise floor.
NUMERICAL_ZERO = 1e-9

_Info = tuple[str, tuple[int, ...], int]  # detail, buses, lag_steps


class _Grid:
    """Topology helpers: bus positions, neighbours, buses excluded from attacks."""

    def __init__(self, net: Any, layout: MeasurementLayout) -> None:
        self.pos = {b: k for k, b in enumerate(layout.bus_index)}
        self.adj: dict[int, set[int]] = {b: set() for b in layout.bus_index}
        for m in layout.measurements:
            if m.to_bus >= 0:
                self.adj[m.bus].add(m.to_bus)
                self.adj[m.to_bus].add(m.bus)
        self.slack = {int(b) for b in net.ext_grid.bus}
        self.der = [int(b) for b in der_buses(net)]
        self.der_p_mw = {b: float(net.sgen.loc[net.sgen.bus == b, "p_mw"].sum()) for b in self.der}

    def region(self, rng: np.random.Generator, size: int) -> list[int]:
        """A connected set of up to ``size`` non-slack buses (breadth-first from a random bus)."""
        candidates = sorted(b for b in self.adj if b not in self.slack)
        seed = int(rng.choice(candidates))
        seen, queue, out = {seed}, deque([seed]), [seed]
        while queue and len(out) < size:
            b = queue.popleft()
            for n in sorted(self.adj[b]):
                if n not in seen and n not in self.slack:
                    seen.add(n)
                    out.append(n)
                    queue.append(n)
                    if len(out) >= size:
                        break
        return out


def stealthy_delta(
    model: AcMeasurementModel,
    v: np.ndarray,
    bus_positions: np.ndarray,
    dtheta_deg: float,
    vm_factor: np.ndarray | float,
) -> np.ndarray:
    """``h(V') - h(V)`` for a state shift of the given buses (layout bus positions).

    Exactly zero for every measurement that does not depend on a shifted bus; changes
    below :data:`NUMERICAL_ZERO` (rounding, e.g. ``|V|`` under a pure rotation) are
    zeroed, so a labelled cell always carries a real change.
    """
    rows = model.ppc_bus(bus_positions)
    factor = np.broadcast_to(np.asarray(vm_factor, dtype=float), rows.shape)
    # hidden auxiliary buses (behind open switches) move with their bus, same factor
    aux = [(x, f) for r, f in zip(rows, factor, strict=True) for x in model.aux_of.get(int(r), [])]
    if aux:
        rows = np.concatenate([rows, np.array([x for x, _ in aux], dtype=np.int64)])
        factor = np.concatenate([factor, np.array([f for _, f in aux], dtype=float)])
    v2 = v.copy()
    v2[rows] = v[rows] * factor * np.exp(1j * np.deg2rad(dtheta_deg))
    delta = np.asarray(model.measure(v2) - model.measure(v))
    delta[np.abs(delta) < NUMERICAL_ZERO] = 0.0
    return delta


class AttackInjector:
    """Injects labelled attacks into a :class:`GeneratedSeries` (deterministic given a seed)."""

    def __init__(
        self,
        series: GeneratedSeries,
        model: AcMeasurementModel | None = None,
        magnitudes: AttackMagnitudes | None = None,
    ) -> None:
        self.series = series
        self.mag = magnitudes or AttackMagnitudes()
        self.layout = series.layout
        net = load_grid(series.grid)
        self.grid = _Grid(net, self.layout)
        self.model = model or measurement_model(series.grid, self.layout)
        self.data = series.measured.copy()
        self.price = series.price_eur_per_mwh.copy()
        n = len(series.t)
        self.mask = np.zeros((n, len(self.layout)), dtype=bool)
        self.price_mask = np.zeros(n, dtype=bool)
        self.row_kind = np.full(n, NO_ATTACK, dtype=object)
        self.episodes: list[AttackEpisode] = []

    # -- one episode per kind ---------------------------------------------------------
    def stealthy(self, rng: np.random.Generator, start: int, stop: int) -> _Info:
        default = (2, 5) if len(self.layout.bus_index) < 50 else (2, 7)
        size = int(rng.integers(*(self.mag.stealthy_region or default)))
        buses = self.grid.region(rng, size)
        pos = np.array([self.grid.pos[b] for b in buses], dtype=np.int64)
        # direction: an angle shift of the region plus small per-bus magnitude changes;
        # size: scaled so the largest change is `target` noise standard deviations
        sign = float(rng.choice([-1.0, 1.0]))
        u = rng.uniform(-1.0, 1.0, size=len(pos))
        target = float(rng.uniform(*self.mag.stealthy_sigma))
        probe = stealthy_delta(
            self.model, self.series.voltages[start], pos, 0.1 * sign, 1.0 + 0.001 * u
        )
        ratio = float(np.max(np.abs(probe) / self.series.std))
        scale = min(target / max(ratio, 1e-12), 100.0)  # at most 10 degrees, 10 % in |V|
        dtheta = 0.1 * sign * scale
        vm_factor = 1.0 + 0.001 * u * scale
        for k in range(start, stop):
            delta = stealthy_delta(self.model, self.series.voltages[k], pos, dtheta, vm_factor)
            self._add(k, delta)
        return f"buses={buses} dtheta_deg={dtheta:.3f} target_sigma={target:.1f}", tuple(buses), 0

    def ramp(self, rng: np.random.Generator, start: int, stop: int) -> _Info:
        m = self.layout.measurements[int(rng.integers(len(self.layout)))]
        cols = np.array(
            [
                k
                for k, x in enumerate(self.layout.measurements)
                if x.element_type == m.element_type and x.element == m.element and not x.is_voltage
            ],
            dtype=np.int64,
        )
        final_sigma = float(rng.uniform(*self.mag.ramp_sigma))
        sign = rng.choice([-1.0, 1.0], size=len(cols))
        n = stop - start
        for i, k in enumerate(range(start, stop)):
            delta = np.zeros(len(self.layout))
            delta[cols] = sign * final_sigma * self.series.std[cols] * (i + 1) / n
            self._add(k, delta)
        names = [self.layout.measurements[c].column for c in cols]
        return f"columns={names} final_sigma={final_sigma:.1f}", (), 0

    def random(self, rng: np.random.Generator, start: int, stop: int) -> _Info:
        n_cols = max(2, int(rng.uniform(*self.mag.column_share) * len(self.layout)))
        cols = rng.choice(len(self.layout), size=n_cols, replace=False)
        for k in range(start, stop):
            delta = np.zeros(len(self.layout))
            size = rng.uniform(*self.mag.random_sigma, size=n_cols)
            size = size * rng.choice([-1.0, 1.0], size=n_cols)
            delta[cols] = size * self.series.std[cols]
            self._add(k, delta)
        return f"n_columns={n_cols}", (), 0

    def scaling(self, rng: np.random.Generator, start: int, stop: int) -> _Info:
        n_cols = max(2, int(rng.uniform(*self.mag.column_share) * len(self.layout)))
        cols = rng.choice(len(self.layout), size=n_cols, replace=False)
        s = float(rng.uniform(*self.mag.scaling) * rng.choice([-1.0, 1.0]))
        for k in range(start, stop):
            delta = np.zeros(len(self.layout))
            delta[cols] = self.data[k, cols] * s
            self._add(k, delta)
        return f"n_columns={n_cols} scale={1 + s:.2f}", (), 0

    def replay(self, rng: np.random.Generator, start: int, stop: int) -> _Info:
        lags = [d * STEPS_PER_DAY for d in (1, 2, 3) if d * STEPS_PER_DAY <= start]
        lag = int(rng.choice(lags)) if lags else start  # feasible() ensures start >= length
        buses = self.grid.region(rng, int(rng.integers(*self.mag.replay_region)))
        cols = np.flatnonzero(self.layout.mask_touching(set(buses)))
        for k in range(start, stop):
            row = self.data[k].copy()
            row[cols] = self.data[k - lag, cols]
            self._write(k, row)
        return f"buses={buses} lag_steps={lag}", tuple(buses), lag

    def der(self, rng: np.random.Generator, start: int, stop: int) -> _Info:
        ders = self.grid.der
        n = int(rng.integers((len(ders) + 1) // 2, len(ders) + 1))
        chosen = sorted(int(b) for b in rng.choice(ders, size=n, replace=False))
        share = float(rng.uniform(*self.mag.der_share))
        p_cols = {
            m.bus: k
            for k, m in enumerate(self.layout.measurements)
            if m.element_type == "bus" and m.quantity == "p_mw"
        }
        for k in range(start, stop):
            delta = np.zeros(len(self.layout))
            for b in chosen:
                delta[p_cols[b]] = -share * self.grid.der_p_mw[b]  # load convention: more export
            self._add(k, delta)
        return f"der_buses={chosen} share={share:.2f}", tuple(chosen), 0

    def price_attack(self, rng: np.random.Generator, start: int, stop: int) -> _Info:
        factor = float(1.0 + rng.uniform(0.4, 2.0) * rng.choice([-0.4, 1.0]))
        new = self.price[start:stop] * factor
        self.price_mask[start:stop] |= new != self.price[start:stop]
        self.price[start:stop] = new
        return f"factor={factor:.2f}", (), 0

    def _add(self, k: int, delta: np.ndarray) -> None:
        self._write(k, self.data[k] + delta)

    def _write(self, k: int, new: np.ndarray) -> None:
        self.mask[k] |= new != self.data[k]
        self.data[k] = new

    # -- scheduling -------------------------------------------------------------------
    def feasible(self, kind: str, start: int, length: int) -> bool:
        if kind == "replay":
            return start >= length
        if kind == "der":
            return bool(self.grid.der)
        return True

    def apply(self, kind: str, rng: np.random.Generator, start: int, stop: int) -> None:
        """Apply one ``kind`` episode to rows ``[start, stop)`` and label it."""
        if kind not in ATTACK_KINDS:
            raise ValueError(f"unknown attack kind {kind!r}; choose from {', '.join(ATTACK_KINDS)}")
        if not self.feasible(kind, start, stop - start):
            raise ValueError(f"attack {kind!r} is not possible at rows [{start}, {stop})")
        fn = self.price_attack if kind == "price" else getattr(self, kind)
        detail, buses, lag = fn(rng, start, stop)
        self.row_kind[start:stop] = kind
        self.episodes.append(AttackEpisode(kind, start, stop, detail, buses, lag))

    def result(self) -> AttackedSeries:
        data = pd.DataFrame(self.data, columns=self.layout.columns)
        data.insert(0, "t", self.series.t.astype(np.int64))
        data[PRICE_COLUMN] = self.price
        labels = pd.DataFrame(self.mask, columns=self.layout.columns)
        labels.insert(0, "t", self.series.t.astype(np.int64))
        labels.insert(1, ATTACK_COLUMN, pd.Series(self.row_kind, dtype="string"))
        labels[PRICE_COLUMN] = self.price_mask
        return AttackedSeries(data=data, labels=labels, episodes=list(self.episodes))


def inject_attacks(
    series: GeneratedSeries,
    *,
    rate: float,
    seed: int,
    kinds: tuple[str, ...] = ATTACK_KINDS,
    model: AcMeasurementModel | None = None,
    magnitudes: AttackMagnitudes | None = None,
) -> AttackedSeries:
    """Inject attack episodes until about ``rate`` of the rows are attacked.

    Episodes last 4-48 steps (ramps 16-64), do not overlap, are separated by clean
    gaps, and cycle through ``kinds`` in a random order. ``magnitudes``: the ranges
    attack sizes are drawn from (default :class:`AttackMagnitudes`).
    """
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"attack rate must be in [0, 1), got {rate}")
    unknown = [k for k in kinds if k not in ATTACK_KINDS]
    if unknown or not kinds:
        raise ValueError(f"unknown attack kinds {unknown}; choose from {', '.join(ATTACK_KINDS)}")
    injector = AttackInjector(series, model, magnitudes)
    rng = np.random.default_rng(seed)
    n = len(series.t)
    target = round(rate * n)
    attacked, cursor = 0, int(rng.integers(0, max(1, min(n, STEPS_PER_DAY // 2))))
    order: list[str] = []
    while attacked < target and cursor < n:
        if not order:
            order = [str(k) for k in rng.permutation(np.array(kinds))]
        kind = order.pop()
        lo, hi = (16, 64) if kind == "ramp" else (4, 48)
        length = min(int(rng.integers(lo, hi + 1)), target - attacked, n - cursor)
        if length < 1:
            break
        if injector.feasible(kind, cursor, length):
            injector.apply(kind, rng, cursor, cursor + length)
            attacked += length
        mean_gap = max(1.0, length * (1.0 - rate) / max(rate, 1e-9))
        cursor += length + 1 + int(rng.exponential(mean_gap))
    return injector.result()
