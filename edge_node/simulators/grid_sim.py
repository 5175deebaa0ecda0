"""Live simulation of a distribution grid as its substation RTU measures it.

Each :meth:`GridSimulator.step` runs one AC power flow (``pandapower.runpp``,
warm-started from the previous step) of a named grid (``detection.grid``, the
demo's ``cigre_mv``) at an operating point set by:

* loads and generators (``net.sgen``: PV, wind) following the daily shapes and
  correlated variation of ``detection.generate.operating_profiles``, drawn once
  for :attr:`horizon_days` days (step 0 = Monday 00:00 UTC, 15-minute steps,
  interpolated linearly in between, repeating after the horizon, which is a
  whole number of weeks by default);
* the DER sites attached with :meth:`GridSimulator.attach_site`, each a static
  generator at its bus whose active (and reactive) power is read from a callable
  at every step. Sign convention: the site's net injection, positive = export
  [kW, kvar], as everywhere in Gridfort.

It returns the measurement vector in the fixed layout (``detection.layout``,
grid-model units and signs: p.u., MW, Mvar, bus powers positive = consumed) with
Gaussian measurement noise of ``detection.generate.NoiseModel`` (0.2 % of |V|,
1 % of each power's nominal magnitude plus a small floor), then any active
false-data injection (``edge_node.simulators.rtu_attacks``: a compromised RTU).

Deterministic given the seed: the same calls with the same times give the same
vectors. A power flow that does not converge (after one cold restart from a flat
start at the *same* operating point) raises :class:`PowerFlowError`; nothing is
ever replaced by a milder or earlier operating point.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any

import numpy as np
import pandapower as pp
from pandapower.powerflow import LoadflowNotConverged

from detection.attacks import AcMeasurementModel
from detection.generate import (
    STEP_MINUTES,
    STEPS_PER_DAY,
    NoiseModel,
    nominal_snapshot,
    operating_profiles,
)
from detection.grid import load_grid, run_power_flow
from detection.layout import MeasurementLayout, build_layout, snapshot_vector
from edge_node.simulators.rtu_attacks import LiveAttack, StepState, plan_attack
from security.refusals import GridfortError

#: 1970-01-05 00:00 UTC, a Monday: step 0 of the daily profiles [ms, Unix epoch].
MONDAY_MS = 4 * 86_400_000
#: Length of one profile step [ms].
STEP_MS = STEP_MINUTES * 60_000

PowerFn = Callable[[], float]


class GridSimulationError(GridfortError):
    """The grid simulation cannot produce a snapshot; the message says why."""


class PowerFlowError(GridSimulationError):
    """The AC power flow of a step did not converge (or failed); no snapshot exists."""


@dataclass(frozen=True, slots=True)
class AttachedSite:
    """A DER site on a grid bus: a static generator fed by two callables [kW, kvar]."""

    site_id: str
    bus: int
    sgen: int  # index of its row in net.sgen
    p_kw_fn: PowerFn
    q_kvar_fn: PowerFn | None


@dataclass(frozen=True, slots=True)
class GridSnapshot:
    """One served measurement vector and what produced it (arrays are read-only).

    ``values``: what the RTU serves, layout order [p.u., MW, Mvar] (noise and any
    attack included); ``true_values``: the noise-free power flow; ``attacked``: per
    column, True where an attack changed the served value; ``attacks``: the kinds
    of the attacks active; ``site_p_kw``: each attached site's injection [kW].
    ``ts_ms``: sample time, ``sim_ms``: time of day the profiles used [ms, Unix epoch].
    """

    ts_ms: int
    sim_ms: int
    values: np.ndarray
    true_values: np.ndarray
    attacked: np.ndarray
    attacks: tuple[str, ...]
    site_p_kw: Mapping[str, float]


def _frozen(a: np.ndarray) -> np.ndarray:
    a.setflags(write=False)
    return a


def _sim_time(sim_ms: int) -> str:
    return datetime.fromtimestamp(sim_ms / 1000, tz=UTC).strftime("%a %H:%M UTC")


class GridSimulator:
    """A grid whose every step is an AC power flow, measured with noise (see the module doc).

    Parameters
    ----------
    grid : str
        One of ``detection.grid.GRID_NAMES``; ``cigre_mv`` for the demo.
    seed : int
        Seeds the profiles, the measurement noise and attack choices.
    noise : NoiseModel | None
        Measurement noise (default: ``NoiseModel()``, as the training data).
    horizon_days : int
        Days of profiles drawn up front [d]; time wraps after them.

    Thread safety: ``step``, ``attach_site``, ``inject`` and ``stop_attacks`` may
    be called from different threads. To run ``step`` in a worker thread while the
    sites' simulators live on the event loop, call :meth:`read_sites` on the loop
    and pass its result as ``site_powers`` (as ``rtu_server`` does).
    """

    def __init__(
        self,
        grid: str = "cigre_mv",
        *,
        seed: int = 0,
        noise: NoiseModel | None = None,
        horizon_days: int = 14,
    ) -> None:
        if not 1 <= horizon_days <= 366:
            raise ValueError(f"horizon_days must be within 1..366, got {horizon_days}")
        self.grid = grid
        self.horizon_days = horizon_days
        self._net: Any = load_grid(grid)
        self.layout: MeasurementLayout = build_layout(self._net)
        profile_seq, noise_seq, attack_seq = np.random.SeedSequence(seed).spawn(3)
        net = self._net
        self._profiles = operating_profiles(
            net, horizon_days * STEPS_PER_DAY, np.random.default_rng(profile_seq)
        )
        self._noise_rng = np.random.default_rng(noise_seq)
        self._attack_rng = np.random.default_rng(attack_seq)
        #: Noise standard deviation per layout column [p.u., MW, Mvar].
        self.std: np.ndarray = _frozen(
            (noise or NoiseModel()).std(self.layout, nominal_snapshot(grid))
        )
        self._load_p = net.load.p_mw.to_numpy(dtype=np.float64).copy()
        self._load_q = net.load.q_mvar.to_numpy(dtype=np.float64).copy()
        self._sgen_rows = net.sgen.index.to_numpy().copy()  # the grid's own DER
        self._sgen_p = net.sgen.p_mw.to_numpy(dtype=np.float64).copy()
        self._slack = {int(b) for b in net.ext_grid.bus}
        self._sites: dict[str, AttachedSite] = {}
        self._attacks: list[LiveAttack] = []
        self._model: AcMeasurementModel | None = None
        self._warm = False
        self._lock = threading.Lock()

    @property
    def columns(self) -> list[str]:
        """The layout's column names, in order."""
        return self.layout.columns

    @property
    def sites(self) -> tuple[AttachedSite, ...]:
        return tuple(self._sites.values())

    @property
    def attacks(self) -> tuple[LiveAttack, ...]:
        """Every injected attack, in injection order (finished ones included)."""
        with self._lock:
            return tuple(self._attacks)

    # -- configuration ----------------------------------------------------------------

    def attach_site(
        self, site_id: str, bus: int, p_kw_fn: PowerFn, q_kvar_fn: PowerFn | None = None
    ) -> AttachedSite:
        """Attach a DER site at ``bus`` (a pandapower bus index of the grid).

        ``p_kw_fn()`` / ``q_kvar_fn()`` return the site's current net injection
        [kW] / [kvar], positive = export; they are called at every step.
        """
        if not site_id:
            raise ValueError("site_id must be non-empty")
        if int(bus) not in self._net.bus.index:
            raise ValueError(f"{self.grid} has no bus {bus}")
        with self._lock:
            if site_id in self._sites:
                raise ValueError(f"site {site_id!r} is already attached")
            row = pp.create_sgen(
                self._net, int(bus), p_mw=0.0, q_mvar=0.0, name=f"site:{site_id}", type="site"
            )
            site = AttachedSite(site_id, int(bus), int(row), p_kw_fn, q_kvar_fn)
            self._sites[site_id] = site
            self._warm = False  # the internal model changes: next run is cold
            self._model = None
        return site

    def inject(
        self,
        kind: str,
        start_ms: int,
        *,
        duration_ms: int | None = None,
        seed: int | None = None,
        buses: Sequence[int] | None = None,
        columns: Sequence[str] | None = None,
        ramp_ms: int | None = None,
    ) -> LiveAttack:
        """Start a false-data injection on the served vectors (a compromised RTU).

        ``kind``: one of ``rtu_attacks.LIVE_ATTACK_KINDS`` (stealthy, ramp,
        scaling, random). Active for sample times ``start_ms <= ts <
        start_ms + duration_ms`` [ms] (open-ended when ``duration_ms`` is None).
        ``buses`` / ``columns`` / ``ramp_ms``: see ``rtu_attacks.plan_attack``;
        unset choices are drawn from the simulator's seed (or ``seed``).
        """
        with self._lock:
            attack = plan_attack(
                kind,
                self.layout,
                self._slack,
                start_ms=start_ms,
                duration_ms=duration_ms,
                seed=int(self._attack_rng.integers(2**63)) if seed is None else seed,
                buses=tuple(int(b) for b in buses) if buses else None,
                columns=tuple(columns) if columns else None,
                ramp_ms=ramp_ms,
            )
            self._attacks.append(attack)
        return attack

    def stop_attacks(self, now_ms: int) -> None:
        """End every attack at ``now_ms`` [ms] (it no longer applies from then on)."""
        with self._lock:
            for a in self._attacks:
                if a.stop_ms is None or a.stop_ms > now_ms:
                    a.stop_ms = max(now_ms, a.start_ms)

    # -- one step ---------------------------------------------------------------------

    def read_sites(self) -> dict[str, tuple[float, float]]:
        """Call every attached site's functions: ``site_id -> (p [kW], q [kvar])``, export > 0.

        Raises :class:`GridSimulationError` naming the site if one fails or is not finite.
        """
        return {
            site.site_id: (
                self._read_power(site, "p_kw_fn", site.p_kw_fn),
                0.0
                if site.q_kvar_fn is None
                else self._read_power(site, "q_kvar_fn", site.q_kvar_fn),
            )
            for site in self.sites
        }

    def step(
        self,
        ts_ms: int,
        *,
        sim_ms: int | None = None,
        site_powers: Mapping[str, tuple[float, float]] | None = None,
    ) -> GridSnapshot:
        """Measure the grid at sample time ``ts_ms`` [ms, Unix epoch].

        ``sim_ms`` [ms]: the time of day the load and generation profiles use
        (default ``ts_ms``; the demo passes its accelerated simulation clock).
        ``site_powers``: the sites' powers as :meth:`read_sites` returns them, read
        beforehand (e.g. on the event loop, when ``step`` runs in a worker thread);
        default: read now. Raises :class:`PowerFlowError` if the power flow fails
        and :class:`GridSimulationError` if a site's power cannot be read.
        """
        sim = ts_ms if sim_ms is None else sim_ms
        powers = self.read_sites() if site_powers is None else dict(site_powers)
        with self._lock:
            if set(powers) != set(self._sites):
                raise ValueError(f"site_powers must cover exactly the sites {sorted(self._sites)}")
            site_p = self._apply_operating_point(sim, powers)
            self._solve(ts_ms, sim, site_p)
            true = snapshot_vector(self._net, self.layout)
            if not np.all(np.isfinite(true)):
                self._warm = False
                raise PowerFlowError(
                    f"{self.grid} power flow at simulated {_sim_time(sim)} gave non-finite results"
                )
            served = true + self._noise_rng.standard_normal(len(true)) * self.std
            attacked = np.zeros(len(true), dtype=bool)
            kinds: list[str] = []
            active = [a for a in self._attacks if a.active(ts_ms)]
            if active:
                state = self._step_state()
                for attack in active:
                    delta = attack.delta(ts_ms, served, state)
                    served = served + delta
                    attacked |= delta != 0.0
                    kinds.append(attack.kind)
        return GridSnapshot(
            ts_ms=ts_ms,
            sim_ms=sim,
            values=_frozen(served),
            true_values=_frozen(true),
            attacked=_frozen(attacked),
            attacks=tuple(kinds),
            site_p_kw=MappingProxyType(site_p),
        )

    def _profile_at(self, sim_ms: int) -> tuple[np.ndarray, np.ndarray]:
        """Load and DER multipliers at ``sim_ms``, interpolated between 15-minute steps."""
        pos = (sim_ms - MONDAY_MS) / STEP_MS
        k = math.floor(pos)
        frac = pos - k
        n = len(self._profiles.load)
        k0, k1 = k % n, (k + 1) % n
        prof = self._profiles
        load = (1.0 - frac) * prof.load[k0] + frac * prof.load[k1]
        sgen = (1.0 - frac) * prof.sgen[k0] + frac * prof.sgen[k1]
        return load, sgen

    def _apply_operating_point(
        self, sim_ms: int, powers: Mapping[str, tuple[float, float]]
    ) -> dict[str, float]:
        """Set loads, the grid's DER and the attached sites; returns each site's p [kW]."""
        net = self._net
        load, sgen = self._profile_at(sim_ms)
        net.load["p_mw"] = self._load_p * load
        net.load["q_mvar"] = self._load_q * load
        if len(self._sgen_rows):
            net.sgen.loc[self._sgen_rows, "p_mw"] = self._sgen_p * sgen
        site_p: dict[str, float] = {}
        for site in self._sites.values():
            p_kw, q_kvar = powers[site.site_id]
            if not (math.isfinite(p_kw) and math.isfinite(q_kvar)):
                raise GridSimulationError(f"site {site.site_id}: power is not finite")
            net.sgen.at[site.sgen, "p_mw"] = p_kw / 1000.0
            net.sgen.at[site.sgen, "q_mvar"] = q_kvar / 1000.0
            site_p[site.site_id] = p_kw
        return site_p

    @staticmethod
    def _read_power(site: AttachedSite, name: str, fn: PowerFn) -> float:
        try:
            value = float(fn())
        except Exception as exc:
            raise GridSimulationError(
                f"site {site.site_id}: {name} failed ({type(exc).__name__})"
            ) from exc
        if not math.isfinite(value):
            raise GridSimulationError(f"site {site.site_id}: {name} returned {value}")
        return value

    def _solve(self, ts_ms: int, sim_ms: int, site_p: Mapping[str, float]) -> None:
        """Run the power flow: warm, then once cold from a flat start; else PowerFlowError."""
        for warm in (True, False) if self._warm else (False,):
            try:
                run_power_flow(self._net, warm=warm)
            except LoadflowNotConverged:
                continue
            except Exception as exc:  # pandapower/numpy failures: reported, never hidden
                self._warm = False
                raise PowerFlowError(
                    f"{self.grid} power flow at simulated {_sim_time(sim_ms)} failed "
                    f"({type(exc).__name__})"
                ) from exc
            self._warm = True
            return
        self._warm = False
        sites = ", ".join(f"{k}={v:.1f} kW" for k, v in site_p.items()) or "none"
        raise PowerFlowError(
            f"{self.grid} power flow did not converge at simulated {_sim_time(sim_ms)} "
            f"(sample time {ts_ms} ms; total load {self._net.load.p_mw.sum():.3f} MW; "
            f"attached sites: {sites})"
        )

    def _step_state(self) -> StepState:
        """The true state of the last power flow, for attacks that rewrite physics."""
        if self._model is None:
            self._model = AcMeasurementModel(self._net, self.layout)
        bus = self._net._ppc["bus"]
        v = bus[:, 7].real * np.exp(1j * np.deg2rad(bus[:, 8].real))
        return StepState(self._model, np.asarray(v), self.std)
