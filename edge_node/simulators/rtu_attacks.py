"""A compromised substation RTU: false-data injections applied live to served snapshots.

The offline generator (``detection.attacks``) attacks a whole recorded series; a
live RTU attacks one snapshot at a time, at the moment it is served. This module
applies the same attacks, with the same parameter ranges, to one measurement
vector (layout order, ``detection.layout``) at a time ``t_ms`` [ms]:

``stealthy``
    AC-consistent attack on a region (``detection.attacks.stealthy_delta``): a
    few connected non-slack buses get their state shifted (angle ``dtheta``,
    magnitudes by a factor), sized when the attack first applies so that the
    largest rewritten measurement moves by 5-30 noise standard deviations; then
    every measurement depending on those buses is rewritten with
    ``h(V') - h(V)`` of the current true state ``V``, so the served data is a
    noise-consistent measurement of another valid state.
``ramp``
    a bias on the powers of one element (random signs), growing linearly from 0
    at ``start_ms`` to 4-15 noise standard deviations after ``ramp_ms``.
``scaling``
    2-3 random columns multiplied by ``1 + s``, ``|s|`` in [0.1, 0.5].
``random``
    random additive injections of 3-10 noise standard deviations on 2-3 random
    columns, redrawn for every snapshot.

Every attack is deterministic given its seed. Pure: no I/O, no clock.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from detection.attacks import STEALTHY_TARGET_SIGMA, AcMeasurementModel, stealthy_delta
from detection.layout import MeasurementLayout

LIVE_ATTACK_KINDS: tuple[str, ...] = ("stealthy", "ramp", "scaling", "random")

#: How long a ramp grows when neither ``ramp_ms`` nor a duration is given [ms].
DEFAULT_RAMP_MS = 120_000
_RAMP_SIGMA = (4.0, 15.0)
_RANDOM_SIGMA = (3.0, 10.0)
_SCALING = (0.1, 0.5)
_COLUMN_SHARE = (0.01, 0.05)  # scaling / random: share of the columns attacked


@dataclass(frozen=True, slots=True)
class StepState:
    """What an attack may use about the current snapshot.

    ``v``: complex bus voltages of the true state [p.u.], pandapower's internal
    bus order; ``std``: noise standard deviation per column [p.u., MW, Mvar].
    """

    model: AcMeasurementModel
    v: np.ndarray
    std: np.ndarray


@dataclass(slots=True)
class LiveAttack:
    """One false-data injection, active for ``start_ms <= t < stop_ms`` (``stop_ms`` None: open).

    ``columns``: layout positions it may change (stealthy: every column touching
    ``buses`` and the bus powers of their neighbours); ``detail``: its parameters.
    """

    kind: str
    start_ms: int
    stop_ms: int | None
    columns: tuple[int, ...]
    buses: tuple[int, ...]
    detail: str
    _rng: np.random.Generator = field(repr=False)
    _params: dict[str, Any] = field(default_factory=dict, repr=False)

    def active(self, t_ms: int) -> bool:
        """True while the attack runs at time ``t_ms`` [ms]."""
        return self.start_ms <= t_ms and (self.stop_ms is None or t_ms < self.stop_ms)

    def delta(self, t_ms: int, served: np.ndarray, state: StepState) -> np.ndarray:
        """The change this attack makes to ``served`` at ``t_ms`` (zeros when inactive)."""
        out = np.zeros(len(served))
        if not self.active(t_ms):
            return out
        cols = np.asarray(self.columns, dtype=np.int64)
        p = self._params
        if self.kind == "stealthy":
            if "dtheta_deg" not in p:
                self._size_stealthy(state)
            return stealthy_delta(
                state.model, state.v, p["bus_positions"], p["dtheta_deg"], p["vm_factor"]
            )
        if self.kind == "ramp":
            share = min(1.0, (t_ms - self.start_ms) / p["ramp_ms"])
            out[cols] = p["sign"] * p["final_sigma"] * state.std[cols] * share
        elif self.kind == "scaling":
            out[cols] = served[cols] * p["s"]
        else:  # random
            size = self._rng.uniform(*_RANDOM_SIGMA, size=len(cols))
            out[cols] = size * self._rng.choice([-1.0, 1.0], size=len(cols)) * state.std[cols]
        return out

    def _size_stealthy(self, state: StepState) -> None:
        """Fix the state shift the first time the attack applies (as ``detection.attacks``)."""
        p = self._params
        probe = stealthy_delta(
            state.model, state.v, p["bus_positions"], 0.1 * p["sign"], 1.0 + 0.001 * p["u"]
        )
        ratio = float(np.max(np.abs(probe) / state.std))
        scale = min(p["target_sigma"] / max(ratio, 1e-12), 100.0)  # <= 10 deg, 10 % in |V|
        p["dtheta_deg"] = 0.1 * p["sign"] * scale
        p["vm_factor"] = 1.0 + 0.001 * p["u"] * scale
        self.detail += f" dtheta_deg={p['dtheta_deg']:.3f}"


def _adjacency(layout: MeasurementLayout) -> dict[int, set[int]]:
    adj: dict[int, set[int]] = {b: set() for b in layout.bus_index}
    for m in layout.measurements:
        if m.to_bus >= 0:
            adj[m.bus].add(m.to_bus)
            adj[m.to_bus].add(m.bus)
    return adj


def _region(adj: dict[int, set[int]], slack: set[int], rng: np.random.Generator) -> list[int]:
    """A connected set of 2-4 non-slack buses (2-6 on large grids), breadth-first."""
    size = int(rng.integers(2, 5 if len(adj) < 50 else 7))
    seed = int(rng.choice(sorted(b for b in adj if b not in slack)))
    seen, queue, out = {seed}, deque([seed]), [seed]
    while queue and len(out) < size:
        for n in sorted(adj[queue.popleft()]):
            if n not in seen and n not in slack and len(out) < size:
                seen.add(n)
                out.append(n)
                queue.append(n)
    return out


def _stealthy_columns(
    layout: MeasurementLayout, adj: dict[int, set[int]], region: list[int]
) -> list[int]:
    """Columns a state shift of ``region`` can change: every measurement touching it,
    and the bus powers of its neighbours (their injections depend on its voltages)."""
    inside = set(region)
    around = {n for b in region for n in adj[b]} - inside
    return [
        k
        for k, m in enumerate(layout.measurements)
        if any(b in inside for b in m.buses)
        or (m.element_type == "bus" and not m.is_voltage and m.bus in around)
    ]


def _random_columns(layout: MeasurementLayout, rng: np.random.Generator) -> list[int]:
    n = max(2, int(rng.uniform(*_COLUMN_SHARE) * len(layout)))
    return sorted(int(c) for c in rng.choice(len(layout), size=n, replace=False))


def _element_powers(layout: MeasurementLayout, rng: np.random.Generator) -> list[int]:
    """The non-voltage columns of one random element (as ``detection.attacks`` ramps)."""
    m = layout.measurements[int(rng.integers(len(layout)))]
    return [
        k
        for k, x in enumerate(layout.measurements)
        if x.element_type == m.element_type and x.element == m.element and not x.is_voltage
    ]


def plan_attack(
    kind: str,
    layout: MeasurementLayout,
    slack_buses: set[int],
    *,
    start_ms: int,
    duration_ms: int | None,
    seed: int,
    buses: tuple[int, ...] | None = None,
    columns: tuple[str, ...] | None = None,
    ramp_ms: int | None = None,
) -> LiveAttack:
    """Draw one attack of ``kind`` (see the module docstring), deterministic given ``seed``.

    ``buses`` (stealthy) and ``columns`` (ramp, scaling, random: layout column
    names) replace the random choice. ``ramp_ms`` [ms]: how long a ramp grows
    (default: the duration, else :data:`DEFAULT_RAMP_MS`). Raises ``ValueError``
    for an unknown kind, bus or column, or a non-positive duration.
    """
    if kind not in LIVE_ATTACK_KINDS:
        raise ValueError(
            f"unknown attack kind {kind!r}; choose from {', '.join(LIVE_ATTACK_KINDS)}"
        )
    if duration_ms is not None and duration_ms <= 0:
        raise ValueError(f"duration_ms must be > 0, got {duration_ms}")
    rng = np.random.default_rng(seed)
    stop_ms = None if duration_ms is None else start_ms + duration_ms
    params: dict[str, Any] = {}
    if kind == "stealthy":
        adj = _adjacency(layout)
        chosen = list(buses) if buses else _region(adj, slack_buses, rng)
        bad = [b for b in chosen if b not in layout.bus_index or b in slack_buses]
        if bad:
            raise ValueError(f"stealthy attack buses {bad} are unknown or slack buses")
        pos = {b: k for k, b in enumerate(layout.bus_index)}
        params["bus_positions"] = np.array([pos[b] for b in chosen], dtype=np.int64)
        params["sign"] = float(rng.choice([-1.0, 1.0]))
        params["u"] = rng.uniform(-1.0, 1.0, size=len(chosen))
        params["target_sigma"] = float(rng.uniform(*STEALTHY_TARGET_SIGMA))
        cols = _stealthy_columns(layout, adj, chosen)
        detail = f"buses={chosen} target_sigma={params['target_sigma']:.1f}"
        return LiveAttack(kind, start_ms, stop_ms, tuple(cols), tuple(chosen), detail, rng, params)
    if columns:
        unknown = [c for c in columns if c not in layout.columns]
        if unknown:
            raise ValueError(f"unknown measurement column(s) {unknown}")
        cols = [layout.position(c) for c in columns]
    else:
        cols = _element_powers(layout, rng) if kind == "ramp" else _random_columns(layout, rng)
    names = [layout.measurements[c].column for c in cols]
    if kind == "ramp":
        params["final_sigma"] = float(rng.uniform(*_RAMP_SIGMA))
        params["sign"] = rng.choice([-1.0, 1.0], size=len(cols))
        params["ramp_ms"] = int(ramp_ms or duration_ms or DEFAULT_RAMP_MS)
        if params["ramp_ms"] <= 0:
            raise ValueError(f"ramp_ms must be > 0, got {ramp_ms}")
        detail = f"columns={names} final_sigma={params['final_sigma']:.1f}"
    elif kind == "scaling":
        params["s"] = float(rng.uniform(*_SCALING) * rng.choice([-1.0, 1.0]))
        detail = f"columns={names} scale={1.0 + params['s']:.2f}"
    else:
        detail = f"columns={names}"
    return LiveAttack(kind, start_ms, stop_ms, tuple(cols), (), detail, rng, params)
