"""Scale by aggregation: cluster assets, schedule inner approximations of each cluster's joint
flexibility, disaggregate to every asset, verify every asset.

1. **Site envelopes -> own limits.** Each site's import/export envelope is split among its
   assets step by step, in proportion to what each can deliver in that step (exporters:
   battery power, PV forecast; importers: battery power, EV/load power while plugged in).
   Each asset's power bound becomes the smaller of its rating and its share, so any
   combination of per-asset schedules respects the site limit (inner approximation).
2. **Clusters.** Assets of one kind and one feeder with similar parameters: batteries by
   efficiencies (exact), C-rate and initial state-of-charge bin (:func:`soc_bin_pct`); EV
   sessions and loads by window, deadline and power-to-energy ratio bin; PV by curtailment
   cost. Where demand-response caps name a subset of sites, assets are also clustered by
   which caps cover their site, so every virtual device lies wholly inside or outside each
   cap's group.
3. **Inner approximation (homothetic).** A cluster is one virtual device whose every feasible
   trajectory, split by fixed weights, is feasible for each member: batteries by energy
   (w_i = e_i / E) with the tightest per-unit power and relative energy bounds of the members;
   demands by required energy (w_i = e_req_i / E_req) with the tightest power per required kWh;
   PV by available power per step. The split is exact for identical members and conservative
   otherwise, never optimistic.
4. **Optimize** the virtual fleet with the same model as the exact schedule (feeder limits,
   demand-response caps and market rules act on the virtual devices; a cap on a sum is exact
   because the weights of a cluster's members sum to one), **disaggregate** by the weights,
   and check every asset with :func:`control_plane.optimizer.check.check_plan` (target: 0
   violations). FCR and aFRR (per direction) split by the same battery weights: headroom and
   held energy are linear in power and reserve, so the virtual battery's constraints scaled
   by w_i imply each member's own, and the block totals (whole lots) are kept.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from control_plane.optimizer.assets import STEPS, FleetState
from control_plane.optimizer.constraints import (
    DR_PREFIX,
    DemandTable,
    FloatArray,
    GroupLimit,
    IntArray,
    PvTable,
    StorageTable,
    Tables,
    build_tables,
    validate,
)
from control_plane.optimizer.market import MarketPrices, MarketRules
from control_plane.optimizer.plan import Diagnosis, Plan
from control_plane.optimizer.schedule import _fallback, diagnose, solve_tables

SOC_BIN_MAX_PCT = 5.0  #: widest initial state-of-charge bin [%] (large fleets)
SOC_BIN_MIN_PCT = 1.0  #: narrowest initial state-of-charge bin [%] (small fleets)
BATTERIES_PER_PCT = 7000  #: batteries per percent of bin width (the cluster budget)
RATIO_BIN = 1.15  #: geometric width of power-to-energy ratio bins [-]


@dataclass(frozen=True, slots=True)
class Clusters:
    """Which virtual device each asset belongs to (-1: none, scheduled at 0) and its weight."""

    storage: IntArray
    storage_w: FloatArray
    demand: IntArray
    demand_w: FloatArray
    pv: IntArray
    pv_w: FloatArray  # (n_pv, STEPS)


def _shares(tables: Tables) -> Tables:
    """Per-asset power bounds from the site envelopes (step 1 of the module docstring)."""
    st, dm, pv = tables.storage, tables.demand, tables.pv
    dis, chg = st.p_discharge_max_kw.copy(), st.p_charge_max_kw.copy()
    imp, avail = dm.p_import_max_kw.copy(), pv.p_avail_kw.copy()
    for lim in tables.limits:
        if not lim.name.startswith("site "):
            continue
        s, d, p = lim.storage_rows, lim.demand_rows, lim.pv_rows
        exp_rating = np.vstack([st.p_discharge_max_kw[s], pv.p_avail_kw[p]])
        imp_rating = np.vstack([st.p_charge_max_kw[s], dm.p_import_max_kw[d]])
        ex = lim.export_max_kw[None, :] * exp_rating / np.maximum(exp_rating.sum(0), 1e-12)
        im = lim.import_max_kw[None, :] * imp_rating / np.maximum(imp_rating.sum(0), 1e-12)
        dis[s] = np.minimum(dis[s], ex[: len(s)])
        avail[p] = np.minimum(avail[p], ex[len(s) :])
        chg[s] = np.minimum(chg[s], im[: len(s)])
        imp[d] = np.minimum(imp[d], im[len(s) :])
    storage = StorageTable(
        st.ids, dis, chg, st.e_init_kwh, st.e_min_kwh, st.e_max_kwh, st.e_final_min_kwh,
        st.eta_charge, st.eta_discharge, st.degradation_eur_per_kwh,
    )  # fmt: skip
    demand = DemandTable(dm.ids, dm.kinds, imp, dm.e_required_kwh, dm.deadline_step, dm.e_max_kwh)
    shared = Tables(storage, demand, PvTable(pv.ids, avail, avail, pv.curtailment_eur_per_kwh))
    shared.limits = [g for g in tables.limits if not g.name.startswith("site ")]
    # A demand whose share cannot meet its own target keeps its rating (the checker reports
    # a site limit it then breaks); better than failing the whole fleet.
    for f in validate(shared):
        if f.asset_id in dm.ids:
            i = dm.ids.index(f.asset_id)
            imp[i] = dm.p_import_max_kw[i]
    return shared


def _group(keys: Sequence[tuple[Any, ...]]) -> tuple[IntArray, int]:
    index: dict[tuple[Any, ...], int] = {}
    g = np.array([index.setdefault(k, len(index)) for k in keys], dtype=np.int64)
    return g, len(index)


def _min_at(g: IntArray, n: int, x: FloatArray) -> FloatArray:
    out = np.full((n, *x.shape[1:]), np.inf)
    np.minimum.at(out, g, x)
    return out


def _max_at(g: IntArray, n: int, x: FloatArray) -> FloatArray:
    out = np.full((n, *x.shape[1:]), -np.inf)
    np.maximum.at(out, g, x)
    return out


def _sum_at(g: IntArray, n: int, x: FloatArray) -> FloatArray:
    out = np.zeros((n, *x.shape[1:]))
    np.add.at(out, g, x)
    return out


def soc_bin_pct(n_batteries: int) -> float:
    """Initial state-of-charge bin width [%]: fine for small fleets, coarse for large ones, so
    the number of virtual devices (and the solve time) stays bounded."""
    return min(SOC_BIN_MAX_PCT, max(SOC_BIN_MIN_PCT, n_batteries / BATTERIES_PER_PCT))


def aggregate(
    fleet: FleetState, tables: Tables, bin_pct: float | None = None
) -> tuple[Tables, Clusters]:
    """Virtual-device tables and the cluster map of ``fleet`` (steps 1-3 of the docstring);
    ``bin_pct`` [%] overrides :func:`soc_bin_pct`."""
    width = bin_pct if bin_pct is not None else soc_bin_pct(len(fleet.batteries))
    t = _shares(tables)
    st, dm, pv = t.storage, t.demand, t.pv
    feeder_of_site: dict[str, int] = {}
    for j, fd in enumerate(fleet.feeders):
        for s in fd.site_ids:
            feeder_of_site.setdefault(s, j)
    covered = _dr_cover(fleet)
    fs = [(feeder_of_site.get(b.site_id, -1), covered(b.site_id)) for b in fleet.batteries]
    e = np.array([b.e_kwh for b in fleet.batteries])
    c_rate = np.array([b.p_max_kw / b.e_kwh for b in fleet.batteries])
    soc0 = np.array([b.soc_init_pct for b in fleet.batteries])
    keys_s = [
        (fs[i], st.eta_charge[i], st.eta_discharge[i], round(c_rate[i], 2),
         int(soc0[i] // width))
        for i in range(len(st))
    ]  # fmt: skip
    gs, ns = _group(keys_s)
    big_e = _sum_at(gs, ns, e)
    ws = e / big_e[gs] if len(st) else np.zeros(0)
    vs = StorageTable(
        ids=[f"cluster-battery-{k}" for k in range(ns)],
        p_discharge_max_kw=big_e[:, None] * _min_at(gs, ns, st.p_discharge_max_kw / e[:, None]),
        p_charge_max_kw=big_e[:, None] * _min_at(gs, ns, st.p_charge_max_kw / e[:, None]),
        e_init_kwh=np.zeros(ns),
        e_min_kwh=big_e * _max_at(gs, ns, (st.e_min_kwh - st.e_init_kwh) / e),
        e_max_kwh=big_e * _min_at(gs, ns, (st.e_max_kwh - st.e_init_kwh) / e),
        e_final_min_kwh=big_e * _max_at(gs, ns, (st.e_final_min_kwh - st.e_init_kwh) / e),
        eta_charge=_min_at(gs, ns, st.eta_charge),
        eta_discharge=_min_at(gs, ns, st.eta_discharge),
        degradation_eur_per_kwh=_sum_at(gs, ns, e * st.degradation_eur_per_kwh) / big_e,
    )
    demand_sites = [x.site_id for x in fleet.evs] + [x.site_id for x in fleet.loads]
    dr_d = [covered(site) for site in demand_sites]
    windows = [(x.arrival_step, x.departure_step) for x in fleet.evs] + [
        (x.window_start_step, x.window_end_step) for x in fleet.loads
    ]
    req = dm.e_required_kwh
    active = req > 1e-9
    ratio = np.where(active, dm.p_import_max_kw.max(axis=1) / np.maximum(req, 1e-9), 0.0)
    rbin = np.floor(np.log(np.maximum(ratio, 1e-9)) / np.log(RATIO_BIN)).astype(np.int64)
    keys_d = [
        (feeder_of_site.get(demand_sites[i], -1), dm.kinds[i], windows[i],
         int(dm.deadline_step[i]), int(rbin[i]), dr_d[i])
        for i in range(len(dm))
    ]  # fmt: skip
    gd = np.full(len(dm), -1, dtype=np.int64)
    sel = np.flatnonzero(active)
    gd[sel], nd = _group([keys_d[i] for i in sel])
    big_r = _sum_at(gd[sel], nd, req[sel])
    wd = np.zeros(len(dm))
    wd[sel] = req[sel] / big_r[gd[sel]]
    per_kwh = dm.p_import_max_kw[sel] / req[sel][:, None]
    deadline = np.zeros(nd, dtype=np.int64)
    deadline[gd[sel]] = dm.deadline_step[sel]
    vd = DemandTable(
        ids=[f"cluster-demand-{k}" for k in range(nd)],
        kinds=["cluster"] * nd,
        p_import_max_kw=big_r[:, None] * _min_at(gd[sel], nd, per_kwh),
        e_required_kwh=big_r,
        deadline_step=deadline,
        e_max_kwh=big_r * _min_at(gd[sel], nd, dm.e_max_kwh[sel] / req[sel]),
    )
    fp = [feeder_of_site.get(x.site_id, -1) for x in fleet.pvs]
    dr_p = [covered(x.site_id) for x in fleet.pvs]
    gp, npv = _group(
        [(fp[i], float(pv.curtailment_eur_per_kwh[i, 0]), dr_p[i]) for i in range(len(pv))]
    )
    avail = _sum_at(gp, npv, pv.p_avail_kw)
    wp = pv.p_avail_kw / np.maximum(avail[gp], 1e-12) if len(pv) else np.zeros((0, STEPS))
    curt = np.zeros((npv, STEPS))
    curt[gp] = pv.curtailment_eur_per_kwh
    vp = PvTable([f"cluster-pv-{k}" for k in range(npv)], avail, avail, curt)
    agg = Tables(vs, vd, vp)
    feeder_s = _first(gs, ns, np.array([f for f, _ in fs], dtype=np.int64))
    feeder_d = _first(gd[sel], nd, np.array([k[0] for k in keys_d], dtype=np.int64)[sel])
    feeder_p = _first(gp, npv, np.array(fp, dtype=np.int64))
    for j, fd in enumerate(fleet.feeders):
        agg.limits.append(
            GroupLimit(
                f"feeder {fd.feeder_id}",
                np.flatnonzero(feeder_s == j),
                np.flatnonzero(feeder_d == j),
                np.flatnonzero(feeder_p == j),
                np.full(STEPS, fd.import_max_kw),
                np.full(STEPS, fd.export_max_kw),
            )
        )
    # Demand-response caps: a virtual device is in a cap's group iff its members are.
    caps = [g for g in tables.limits if g.name.startswith(DR_PREFIX)]
    in_s = _members(gs, ns, [c for _, c in fs], len(caps))
    in_d = _members(gd[sel], nd, [dr_d[i] for i in sel], len(caps))
    in_p = _members(gp, npv, dr_p, len(caps))
    for j, g in enumerate(caps):
        agg.limits.append(
            GroupLimit(
                g.name,
                np.flatnonzero(in_s[:, j]),
                np.flatnonzero(in_d[:, j]),
                np.flatnonzero(in_p[:, j]),
                g.import_max_kw,
                g.export_max_kw,
            )
        )
    return agg, Clusters(gs, ws, gd, wd, gp, wp)


def _dr_cover(fleet: FleetState) -> Callable[[str], tuple[int, ...]]:
    """``site -> tuple`` of the indices of the demand-response caps whose group holds it."""
    drs = fleet.demand_response

    def covered(site_id: str) -> tuple[int, ...]:
        return tuple(j for j, d in enumerate(drs) if not d.site_ids or site_id in d.site_ids)

    return covered


def _members(
    g: IntArray, n: int, covers: Sequence[tuple[int, ...]], n_caps: int
) -> NDArray[np.bool_]:
    """(virtual devices, caps): True where a virtual device's members lie in a cap's group."""
    out = np.zeros((n, n_caps), dtype=bool)
    for i, c in enumerate(covers):
        out[g[i], list(c)] = True
    return out


def _first(g: IntArray, n: int, values: IntArray) -> IntArray:
    out = np.full(n, -1, dtype=np.int64)
    out[g] = values
    return out


def schedule_aggregated(
    fleet: FleetState,
    prices: MarketPrices,
    rules: MarketRules | None = None,
    *,
    time_limit_s: float = 30.0,
    mip_rel_gap: float = 1e-4,
    bin_pct: float | None = None,
) -> Plan:
    """Day-ahead plan of ``fleet`` by aggregation (module docstring); same output, fallback and
    diagnosis contract as :func:`control_plane.optimizer.schedule.schedule`."""
    t0 = time.perf_counter()
    rules = rules or MarketRules()
    tables = build_tables(fleet)
    findings = validate(tables)
    if findings:
        diag = tuple(Diagnosis(f.constraint, (f.asset_id,), f.message) for f in findings)
        return _fallback(fleet, rules, diag, t0)
    agg, cl = aggregate(fleet, tables, bin_pct)
    t_agg = time.perf_counter() - t0
    sol = solve_tables(agg, prices, rules, time_limit_s=time_limit_s, mip_rel_gap=mip_rel_gap)
    if sol.status == "infeasible":
        return _fallback(fleet, rules, diagnose(agg, prices, rules), t0)
    if sol.status == "no_solution":
        why = Diagnosis("solver.time_limit", (), f"no solution within {time_limit_s:g} s")
        return _fallback(fleet, rules, (why,), t0)
    p_s = cl.storage_w[:, None] * sol.storage_kw[cl.storage]
    r_s = cl.storage_w[:, None] * sol.reserve_kw[cl.storage]
    up_s = cl.storage_w[:, None] * sol.afrr_up_kw[cl.storage]
    down_s = cl.storage_w[:, None] * sol.afrr_down_kw[cl.storage]
    p_d = np.where(cl.demand[:, None] >= 0, cl.demand_w[:, None] * sol.demand_kw[cl.demand], 0.0)
    p_p = cl.pv_w * sol.pv_kw[cl.pv] if len(cl.pv) else np.zeros((0, STEPS))
    p = np.vstack([p_s.reshape(-1, STEPS), p_d.reshape(-1, STEPS), p_p.reshape(-1, STEPS)])
    n_virtual = len(agg.storage) + len(agg.demand) + len(agg.pv)
    nb = (len(fleet.batteries), rules.blocks)
    return Plan(
        asset_ids=fleet.asset_ids,
        p_kw=p,
        reserve_kw=r_s.reshape(nb),
        afrr_up_kw=up_s.reshape(nb),
        afrr_down_kw=down_s.reshape(nb),
        status=sol.status,
        bids=True,
        objective_eur=sol.objective_eur,
        solve_s=sol.solve_s,
        wall_s=time.perf_counter() - t0,
        info={"virtual_devices": float(n_virtual), "aggregate_s": t_agg},
    )
