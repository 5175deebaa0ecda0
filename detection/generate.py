"""Realistic operating time series of a grid, in the fixed measurement layout.

Each row is one 15-minute snapshot (integer column ``t``, step 0 = Monday 00:00).
The operating point of every step comes from an AC power flow (``pandapower.runpp``,
warm-started from the previous step) driven by:

* a daily load shape with a morning and an evening peak, 10 % lower on weekends;
* a slow common drift (AR(1), correlation time 3 days, std 5 %), zonal
  variation (AR(1), 6 h, std 3 %) and per-load variation (AR(1), 2 h, std 2 %);
  these are the defaults of :class:`LoadPattern`, which other grids' operators (and
  held-out evaluations) vary: peak hours, weekend dip, variation sizes, zone count;
* PV: a clear-sky bell between 06:00 and 20:00 times a cloudiness process that
  drifts within and across days; wind: a bounded AR(1) process (correlation time 6 h);
* conventional generators (``net.gen``) following the system's net load;
* a day-ahead-like price ``price_eur_per_mwh`` that follows the net load.

Gaussian measurement noise of a stated size (:class:`NoiseModel`) is added to the
true power-flow values. Everything is deterministic given the seed: profiles come
from one ``numpy`` generator, power flows run in fixed chunks of
:data:`CHUNK_STEPS` steps (each chunk cold-started), so the result does not depend
on how many worker processes run them.

A step whose power flow does not converge is retried with the operating point moved
halfway back towards the nominal case (up to :data:`MAX_RETRIES` times); retried
steps are listed in :attr:`GeneratedSeries.retried_steps`, never dropped.
"""

from __future__ import annotations

import functools
import multiprocessing
import os
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from detection.grid import load_grid, run_power_flow
from detection.layout import MeasurementLayout, build_layout, snapshot_vector

STEPS_PER_DAY = 96
STEP_MINUTES = 15
CHUNK_STEPS = 250
MAX_RETRIES = 4
PRICE_COLUMN = "price_eur_per_mwh"
#: Worker start method: "fork" where available (no re-import of ``__main__``; the
#: generator starts no threads before forking), else "spawn".
_START_METHOD = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"

ProgressFn = Callable[[int, int], None]


@dataclass(frozen=True, slots=True)
class NoiseModel:
    """Standard deviations of the Gaussian measurement noise.

    Voltage magnitudes: ``vm_rel`` times the value (0.2 % by default, inside the
    0.1-0.5 % of real PMU/RTU classes). Powers: ``power_rel`` of the measurement's
    typical magnitude (its absolute value at the nominal operating point) plus a
    floor of ``power_floor_rel`` times the median typical power magnitude, at least
    ``power_floor_min_mw`` [MW or Mvar].
    """

    vm_rel: float = 0.002
    power_rel: float = 0.01
    power_floor_rel: float = 0.002
    power_floor_min_mw: float = 0.001

    def __post_init__(self) -> None:
        if not 0.0 < self.vm_rel <= 0.05:
            raise ValueError(f"vm_rel must be in (0, 0.05], got {self.vm_rel}")
        if not 0.0 <= self.power_rel <= 0.2:
            raise ValueError(f"power_rel must be in [0, 0.2], got {self.power_rel}")
        if self.power_floor_rel < 0 or self.power_floor_min_mw <= 0:
            raise ValueError("power floors must be positive")

    def std(self, layout: MeasurementLayout, typical: np.ndarray) -> np.ndarray:
        """Noise standard deviation per layout column [p.u., MW, Mvar]."""
        mag = np.abs(np.asarray(typical, dtype=np.float64))
        is_vm = np.array([m.is_voltage for m in layout.measurements], dtype=bool)
        powers = mag[~is_vm]
        median = float(np.median(powers[powers > 0])) if np.any(powers > 0) else 0.0
        floor = max(self.power_floor_min_mw, self.power_floor_rel * median)
        return np.where(is_vm, self.vm_rel * np.maximum(mag, 0.5), self.power_rel * mag + floor)


@dataclass(frozen=True, slots=True)
class LoadPattern:
    """The shape and variability of demand and PV (the defaults are the reference grid).

    Peak hours in hours of the day [h]; ``weekend_factor`` scales weekend demand;
    ``*_std`` are relative standard deviations of the AR(1) variations (drift: common,
    3 days; zone: per zone, 6 h; own: per load, 2 h); loads are spread over ``zones``
    zones; each day's cloudiness is uniform in ``cloud_range`` (1 = clear sky).
    """

    morning_peak_h: float = 8.5
    evening_peak_h: float = 19.0
    weekend_factor: float = 0.9
    drift_std: float = 0.05
    zone_std: float = 0.03
    own_std: float = 0.02
    zones: int = 4
    cloud_range: tuple[float, float] = (0.35, 1.0)

    def __post_init__(self) -> None:
        if not (4.0 <= self.morning_peak_h <= 12.0 and 14.0 <= self.evening_peak_h <= 23.0):
            raise ValueError("peaks must be in [4, 12] h (morning) and [14, 23] h (evening)")
        if not 0.5 <= self.weekend_factor <= 1.2:
            raise ValueError(f"weekend_factor must be in [0.5, 1.2], got {self.weekend_factor}")
        if not all(0.0 <= v <= 0.2 for v in (self.drift_std, self.zone_std, self.own_std)):
            raise ValueError("variation standard deviations must be in [0, 0.2]")
        if self.zones < 1:
            raise ValueError(f"zones must be at least 1, got {self.zones}")
        lo, hi = self.cloud_range
        if not 0.0 < lo <= hi <= 1.0:
            raise ValueError(f"cloud_range must satisfy 0 < low <= high <= 1: {self.cloud_range}")


@dataclass(frozen=True, slots=True)
class Profiles:
    """Per-step multipliers of the nominal element powers (steps along axis 0)."""

    load: np.ndarray  # (steps, n_load)
    sgen: np.ndarray  # (steps, n_sgen), PV and wind
    gen: np.ndarray  # (steps,)
    price_eur_per_mwh: np.ndarray  # (steps,)


@dataclass(slots=True)
class GeneratedSeries:
    """A clean generated series (no attacks yet), with the truth kept for attack injection."""

    grid: str
    seed: int
    layout: MeasurementLayout
    noise: NoiseModel
    std: np.ndarray  # (m,) noise std per column
    t: np.ndarray  # (steps,) int64
    true: np.ndarray  # (steps, m) noise-free power-flow values
    measured: np.ndarray  # (steps, m) true + noise
    price_eur_per_mwh: np.ndarray  # (steps,)
    voltages: np.ndarray  # (steps, n_ppc_bus) complex bus voltages [p.u.], internal bus order
    retried_steps: list[tuple[int, int]] = field(default_factory=list)  # (t, retries)
    pattern: LoadPattern = field(default_factory=LoadPattern)

    def to_frame(self) -> pd.DataFrame:
        """The measured data as a DataFrame: ``t``, every layout column, the price."""
        frame = pd.DataFrame(self.measured, columns=self.layout.columns)
        frame.insert(0, "t", self.t.astype(np.int64))
        frame[PRICE_COLUMN] = self.price_eur_per_mwh
        return frame


def _ar1(rng: np.random.Generator, steps: int, n: int, tau_steps: float, std: float) -> np.ndarray:
    """Stationary AR(1) paths (steps, n) with correlation time ``tau_steps`` and std ``std``."""
    phi = float(np.exp(-1.0 / tau_steps))
    eps = rng.standard_normal((steps, n)) * std * np.sqrt(1.0 - phi * phi)
    out = np.empty((steps, n))
    out[0] = rng.standard_normal(n) * std
    for k in range(1, steps):
        out[k] = phi * out[k - 1] + eps[k]
    return out


def _raw_shape(hour: np.ndarray, pattern: LoadPattern) -> np.ndarray:
    return np.asarray(
        0.25
        + 0.35 * np.exp(-(((hour - pattern.morning_peak_h) / 2.0) ** 2))
        + 0.45 * np.exp(-(((hour - pattern.evening_peak_h) / 2.5) ** 2))
        + 0.15 * np.exp(-(((hour - 13.0) / 3.0) ** 2))
    )


def daily_load_shape(t: np.ndarray, pattern: LoadPattern | None = None) -> np.ndarray:
    """Relative demand in [0.55, 1.0] by time of day, times the weekend factor on weekends."""
    pattern = pattern or LoadPattern()
    hour = (t % STEPS_PER_DAY) * STEP_MINUTES / 60.0
    raw = _raw_shape(hour, pattern)
    grid = _raw_shape(np.arange(0, 24, 0.25), pattern)
    lo, hi = grid.min(), grid.max()
    shape = 0.55 + 0.45 * (raw - lo) / (hi - lo)
    weekend = ((t // STEPS_PER_DAY) % 7) >= 5
    return np.asarray(np.where(weekend, pattern.weekend_factor * shape, shape))


def clear_sky_pv(t: np.ndarray) -> np.ndarray:
    """Clear-sky PV output in [0, 1] of rated power by time of day."""
    hour = (t % STEPS_PER_DAY) * STEP_MINUTES / 60.0
    x = (hour - 6.0) / 14.0
    day = (x > 0.0) & (x < 1.0)
    return np.asarray(np.where(day, np.sin(np.pi * np.clip(x, 0.0, 1.0)) ** 1.5, 0.0))


def operating_profiles(
    net: Any, steps: int, rng: np.random.Generator, pattern: LoadPattern | None = None
) -> Profiles:
    """Draw the load, DER, generator and price profiles of ``steps`` steps."""
    pattern = pattern or LoadPattern()
    t = np.arange(steps)
    n_load, n_sgen = len(net.load), len(net.sgen)
    shape = daily_load_shape(t, pattern)
    drift = _ar1(rng, steps, 1, 3 * STEPS_PER_DAY, pattern.drift_std)
    zones = _ar1(rng, steps, pattern.zones, 24, pattern.zone_std)
    own = _ar1(rng, steps, n_load, 8, pattern.own_std)
    zone_of = np.arange(n_load) % pattern.zones
    load = shape[:, None] * (1.0 + drift + zones[:, zone_of] + own)
    load = np.clip(load, 0.2, 1.3)

    is_pv = np.array([str(x).upper() == "PV" for x in net.sgen.type], dtype=bool)
    day_cloud = rng.uniform(*pattern.cloud_range, size=steps // STEPS_PER_DAY + 2)
    daily = np.repeat(day_cloud, STEPS_PER_DAY)[:steps]
    cloud = np.clip(daily[:, None] + _ar1(rng, steps, 1, 6, 0.12), 0.05, 1.0)
    pv = clear_sky_pv(t)[:, None] * np.clip(cloud + _ar1(rng, steps, n_sgen, 4, 0.05), 0.0, 1.0)
    wind = 1.0 / (1.0 + np.exp(-(_ar1(rng, steps, n_sgen, 24, 1.2) - 0.3)))
    sgen = np.where(is_pv[None, :], pv, wind) if n_sgen else np.zeros((steps, 0))

    p_load = net.load.p_mw.to_numpy(dtype=np.float64)
    p_sgen = net.sgen.p_mw.to_numpy(dtype=np.float64)
    total_load = max(float(p_load.sum()), 1e-9)
    net_load = (load @ p_load - sgen @ p_sgen) / total_load
    gen = np.clip(net_load, 0.3, 1.3) if len(net.gen) else np.ones(steps)
    price = 25.0 + 80.0 * np.clip(net_load, 0.0, None) + _ar1(rng, steps, 1, 8, 4.0)[:, 0]
    return Profiles(load=load, sgen=sgen, gen=gen, price_eur_per_mwh=price)


def _apply(net: Any, nominal: dict[str, np.ndarray], prof: Profiles, k: int, mild: float) -> None:
    """Set the operating point of step ``k``; ``mild`` in [0, 1] blends towards nominal."""

    def blend(x: np.ndarray) -> np.ndarray:
        return 1.0 + (x - 1.0) * mild

    lf = blend(prof.load[k])
    net.load["p_mw"] = nominal["load_p"] * lf
    net.load["q_mvar"] = nominal["load_q"] * lf
    if len(net.sgen):
        net.sgen["p_mw"] = nominal["sgen_p"] * (prof.sgen[k] * mild + (1.0 - mild))
    if len(net.gen):
        net.gen["p_mw"] = nominal["gen_p"] * blend(np.asarray(prof.gen[k]))


def _run_chunk(
    grid: str, prof: Profiles, start: int, stop: int
) -> tuple[np.ndarray, np.ndarray, list[tuple[int, int]]]:
    """Power flows of steps [start, stop): true snapshots, bus voltages, retried steps."""
    from pandapower.powerflow import LoadflowNotConverged

    net = load_grid(grid)
    layout = build_layout(net)
    nominal = {
        "load_p": net.load.p_mw.to_numpy(dtype=np.float64).copy(),
        "load_q": net.load.q_mvar.to_numpy(dtype=np.float64).copy(),
        "sgen_p": net.sgen.p_mw.to_numpy(dtype=np.float64).copy(),
        "gen_p": net.gen.p_mw.to_numpy(dtype=np.float64).copy(),
    }
    rows, volts, retried = [], [], []
    warm = False
    for k in range(start, stop):
        for attempt in range(MAX_RETRIES + 1):
            mild = 0.5**attempt if attempt < MAX_RETRIES else 0.0
            _apply(net, nominal, prof, k, mild)
            try:
                run_power_flow(net, warm=warm)
                warm = True
                break
            except LoadflowNotConverged:
                warm = False  # restart cold from the milder point
                if attempt == MAX_RETRIES:
                    raise
        if attempt:
            retried.append((k, attempt))
        rows.append(snapshot_vector(net, layout))
        bus = net._ppc["bus"]
        volts.append(bus[:, 7] * np.exp(1j * np.deg2rad(bus[:, 8])))
    return np.vstack(rows), np.vstack(volts), retried


def nominal_snapshot(grid: str) -> np.ndarray:
    """True measurement vector at the grid's nominal operating point."""
    return _nominal_snapshot(grid).copy()


@functools.cache
def _nominal_snapshot(grid: str) -> np.ndarray:
    net = load_grid(grid)
    run_power_flow(net)
    return snapshot_vector(net)


def generate_series(
    grid: str,
    steps: int,
    *,
    seed: int = 0,
    noise: NoiseModel | None = None,
    pattern: LoadPattern | None = None,
    workers: int | None = None,
    progress: ProgressFn | None = None,
) -> GeneratedSeries:
    """Generate ``steps`` clean noisy snapshots of ``grid`` (deterministic given ``seed``).

    ``noise`` and ``pattern`` default to :class:`NoiseModel` and :class:`LoadPattern`.
    ``workers`` processes run fixed chunks of power flows (default: one per CPU core,
    at most one per chunk). ``progress(done, total)`` is called after each chunk.
    """
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    noise = noise or NoiseModel()
    net = load_grid(grid)
    layout = build_layout(net)
    rng = np.random.default_rng(seed)
    prof = operating_profiles(net, steps, rng, pattern)
    bounds = [(s, min(s + CHUNK_STEPS, steps)) for s in range(0, steps, CHUNK_STEPS)]
    n_workers = min(workers or os.cpu_count() or 1, len(bounds))
    results: list[tuple[np.ndarray, np.ndarray, list[tuple[int, int]]]] = []
    done = 0
    if n_workers <= 1:
        for s, e in bounds:
            results.append(_run_chunk(grid, prof, s, e))
            done += e - s
            if progress:
                progress(done, steps)
    else:
        ctx = multiprocessing.get_context(_START_METHOD)
        with ProcessPoolExecutor(max_workers=n_workers, mp_context=ctx) as pool:
            futures = [pool.submit(_run_chunk, grid, prof, s, e) for s, e in bounds]
            for (s, e), fut in zip(bounds, futures, strict=True):
                results.append(fut.result())
                done += e - s
                if progress:
                    progress(done, steps)
    true = np.vstack([r[0] for r in results])
    volts = np.vstack([r[1] for r in results])
    retried = [x for r in results for x in r[2]]
    std = noise.std(layout, nominal_snapshot(grid))
    measured = true + rng.standard_normal(true.shape) * std[None, :]
    return GeneratedSeries(
        grid=grid,
        seed=seed,
        layout=layout,
        noise=noise,
        std=std,
        t=np.arange(steps, dtype=np.int64),
        true=true,
        measured=measured,
        price_eur_per_mwh=prof.price_eur_per_mwh,
        voltages=volts,
        retried_steps=retried,
        pattern=pattern or LoadPattern(),
    )
