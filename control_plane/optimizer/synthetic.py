"""A deterministic synthetic fleet (households with batteries, EVs, PV, flexible loads).

Mix by count: 35 % batteries, 25 % EV sessions, 30 % PV, 10 % flexible loads; about two
assets per site; sites share ``feeders`` feeders. Every owner constraint is reachable.
"""

from __future__ import annotations

import numpy as np

from control_plane.optimizer.assets import (
    DT_H,
    STEPS,
    Battery,
    EvSession,
    FeederLimit,
    FleetState,
    FlexibleLoad,
    Pv,
    SiteLimits,
)


def _pv_shape(rng: np.random.Generator) -> np.ndarray:
    h = np.arange(STEPS) * DT_H + DT_H / 2
    bell = np.clip(np.sin(np.pi * (h - 6.0) / 14.0), 0.0, None) ** 1.5
    return np.asarray(bell * rng.uniform(0.6, 1.0), dtype=np.float64)


def synthetic_fleet(n_assets: int, seed: int = 0, feeders: int = 4) -> FleetState:
    """``n_assets`` mixed assets (see the module docstring), deterministic in ``seed``."""
    rng = np.random.default_rng(seed)
    kinds = rng.choice(4, size=n_assets, p=[0.35, 0.25, 0.10, 0.30])
    n_sites = max(1, n_assets // 2)
    site = rng.integers(0, n_sites, size=n_assets)
    shapes = [_pv_shape(rng) for _ in range(max(1, feeders))]
    bats: list[Battery] = []
    evs: list[EvSession] = []
    loads: list[FlexibleLoad] = []
    pvs: list[Pv] = []
    imp_kw = np.zeros(n_sites)
    exp_kw = np.zeros(n_sites)
    for i, k in enumerate(kinds):
        aid, sid = f"a{i}", f"s{site[i]}"
        s = int(site[i])
        if k == 0:
            e = float(rng.choice([5.0, 10.0, 13.5, 20.0]))
            c = float(rng.choice([0.5, 1.0]))
            bats.append(
                Battery(
                    aid, sid, e, e * c,
                    soc_init_pct=float(np.round(rng.uniform(20, 80), 1)),
                    eta_charge=float(rng.choice([0.95, 0.97])),
                    eta_discharge=float(rng.choice([0.95, 0.97])),
                    degradation_eur_per_kwh=float(np.round(rng.uniform(0.01, 0.03), 3)),
                )
            )  # fmt: skip
            imp_kw[s] += e * c
            exp_kw[s] += e * c
        elif k == 1:
            cap = float(rng.choice([40.0, 60.0, 80.0]))
            pmax = float(rng.choice([3.7, 7.4, 11.0]))
            if rng.random() < 0.5:
                arr, dep = 0, int(rng.choice([28, 30, 32]))
                dl, target = 28, 80.0
            else:
                arr, dep = int(rng.choice([68, 72, 76, 80])), STEPS
                dl, target = STEPS, float(rng.choice([80.0, 90.0]))
            reach_pct = 0.8 * pmax * (dl - arr) * DT_H * 0.92 / cap * 100
            init = float(np.round(max(rng.uniform(20, 60), target - reach_pct), 1))
            evs.append(EvSession(aid, sid, cap, pmax, arr, dep, init, target, dl))
            imp_kw[s] += pmax
        elif k == 2:
            start, end = [(0, 28), (40, 64), (64, 96)][int(rng.integers(3))]
            pmax = float(rng.choice([2.0, 3.0]))
            energy = float(np.round(rng.uniform(0.2, 0.6) * pmax * (end - start) * DT_H, 2))
            loads.append(FlexibleLoad(aid, sid, energy, pmax, start, end))
            imp_kw[s] += pmax
        else:
            kwp = float(rng.choice([4.0, 6.0, 8.0, 10.0]))
            f = kwp * shapes[s % len(shapes)] * rng.uniform(0.9, 1.0, STEPS)
            curt = float(rng.choice([0.0, 0.02]))
            pvs.append(Pv(aid, sid, tuple(float(x) for x in np.round(f, 3)), curt))
            exp_kw[s] += kwp
    used = np.unique(site)
    sites = tuple(
        SiteLimits.flat(f"s{s}", float(np.round(max(imp_kw[s], 1.0) * rng.uniform(1.0, 1.5), 1)),
                        float(np.round(max(exp_kw[s], 1.0) * rng.uniform(0.8, 1.5), 1)))
        for s in used
    )  # fmt: skip
    fd: list[FeederLimit] = []
    for j in range(max(1, feeders)):
        members = [s for s in used if s % max(1, feeders) == j]
        if members:
            fd.append(
                FeederLimit(
                    f"f{j}",
                    frozenset(f"s{s}" for s in members),
                    float(0.5 * imp_kw[members].sum() + 1.0),
                    float(0.5 * exp_kw[members].sum() + 1.0),
                )
            )
    return FleetState(tuple(bats), tuple(evs), tuple(pvs), tuple(loads), sites, tuple(fd))
