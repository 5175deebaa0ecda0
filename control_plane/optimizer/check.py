"""Independent verification of a plan against every asset's and grid limit's own constraints.

Reads the typed assets of :class:`FleetState` directly (not the solver's tables or values),
recomputes each battery's state of charge from its net power alone (a device receives one
setpoint, so charge and discharge never overlap), and reports every violation beyond
``tol`` (absolute, in kW or kWh). Demand-response caps are checked like grid limits
(``demand_response.import_max_kw``, subject ``demand_response <event_id>``), also for a
fallback plan, which does not try to honour them. An empty list means the plan is
deliverable as written.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from control_plane.optimizer.assets import DT_H, STEPS, FleetState
from control_plane.optimizer.constraints import FloatArray
from control_plane.optimizer.market import MarketRules
from control_plane.optimizer.plan import Plan

TOL = 1e-3


@dataclass(frozen=True, slots=True)
class Violation:
    """``subject`` (asset, site, feeder or ``portfolio``) breaks ``constraint`` at ``step``
    by ``excess`` [kW or kWh]."""

    subject: str
    constraint: str
    step: int
    excess: float


class _Sink:
    def __init__(self, tol: float) -> None:
        self.tol = tol
        self.out: list[Violation] = []

    def over(self, ids: list[str], name: str, excess: FloatArray) -> None:
        """Record rows/steps where ``excess`` (n,) or (n, T) > tol."""
        ex = excess[:, None] if excess.ndim == 1 else excess
        for i, t in zip(*np.nonzero(ex > self.tol), strict=True):
            step = int(t) if excess.ndim == 2 else STEPS - 1
            self.out.append(Violation(ids[int(i)], name, step, float(ex[i, t])))


def soc_kwh(
    p_kw: FloatArray, e0_kwh: FloatArray, eta_c: FloatArray, eta_d: FloatArray
) -> FloatArray:
    """Stored energy after each step [kWh] (n, STEPS) from net power ``p_kw`` (+ discharge)."""
    flow = np.where(p_kw < 0, -p_kw * eta_c[:, None], -p_kw / eta_d[:, None])
    return np.asarray(e0_kwh[:, None] + np.cumsum(flow, axis=1) * DT_H, dtype=np.float64)


def check_plan(
    fleet: FleetState, plan: Plan, rules: MarketRules, tol: float = TOL
) -> list[Violation]:
    """Every violated constraint of ``plan`` for ``fleet`` (see the module docstring)."""
    if plan.asset_ids != fleet.asset_ids or plan.p_kw.shape != (len(fleet), STEPS):
        return [Violation("plan", "plan.shape", 0, float("inf"))]
    sink = _Sink(tol)
    nb, ne, nl = len(fleet.batteries), len(fleet.evs), len(fleet.loads)
    p = plan.p_kw
    if not np.all(np.isfinite(p)) or not np.all(np.isfinite(plan.reserve_kw)):
        return [Violation("plan", "plan.finite", 0, float("inf"))]
    _check_batteries(fleet, p[:nb], plan.reserve_kw, rules, sink)
    _check_evs(fleet, p[nb : nb + ne], sink)
    _check_loads(fleet, p[nb + ne : nb + ne + nl], sink)
    pv = p[nb + ne + nl :]
    ids = [x.asset_id for x in fleet.pvs]
    fc = np.array([x.forecast_kw for x in fleet.pvs], dtype=np.float64).reshape(-1, STEPS)
    sink.over(ids, "pv.no_import", -pv)
    sink.over(ids, "pv.forecast", pv - fc)
    _check_grid(fleet, p, sink)
    _check_demand_response(fleet, p, sink)
    if plan.bids:
        _check_market(plan, rules, sink)
    return sink.out


def _check_batteries(
    fleet: FleetState, p: FloatArray, r: FloatArray, rules: MarketRules, sink: _Sink
) -> None:
    b = fleet.batteries
    if not b:
        return
    ids = [x.asset_id for x in b]
    e = np.array([x.e_kwh for x in b])
    pmax = np.array([x.p_max_kw for x in b])[:, None]
    eta_c = np.array([x.eta_charge for x in b])
    eta_d = np.array([x.eta_discharge for x in b])
    lo = (e * np.array([x.soc_min_pct for x in b]) / 100)[:, None]
    hi = (e * np.array([x.soc_max_pct for x in b]) / 100)[:, None]
    e0 = e * np.array([x.soc_init_pct for x in b]) / 100
    soc = soc_kwh(p, e0, eta_c, eta_d)
    sink.over(ids, "battery.p_max_kw", np.abs(p) - pmax)
    sink.over(ids, "battery.soc_min_pct", lo - soc)
    sink.over(ids, "battery.soc_max_pct", soc - hi)
    final = e * np.array([x.final_pct for x in b]) / 100
    sink.over(ids, "battery.soc_final_min_pct", final - soc[:, -1])
    if r.shape != (len(b), rules.blocks):
        sink.out.append(Violation("plan", "plan.reserve_shape", 0, float("inf")))
        return
    sink.over(ids, "fcr.nonnegative", -r)
    rt = np.repeat(r, rules.fcr_block_steps, axis=1)
    sink.over(ids, "fcr.headroom_up", p + rt - pmax)
    sink.over(ids, "fcr.headroom_down", rt - p - pmax)
    before = np.hstack([e0[:, None], soc[:, :-1]])
    h = rules.fcr_energy_h
    for stock in (before, soc):
        sink.over(ids, "fcr.energy_up", lo - (stock - rt * h / eta_d[:, None]))
        sink.over(ids, "fcr.energy_down", stock + rt * h * eta_c[:, None] - hi)


def _window(n: int, starts: list[int], ends: list[int]) -> FloatArray:
    t = np.arange(STEPS)[None, :]
    s = np.asarray(starts).reshape(n, 1)
    en = np.asarray(ends).reshape(n, 1)
    return np.asarray((t >= s) & (t < en), dtype=np.float64)


def _check_evs(fleet: FleetState, p: FloatArray, sink: _Sink) -> None:
    evs = fleet.evs
    if not evs:
        return
    ids = [x.asset_id for x in evs]
    plugged = _window(len(evs), [x.arrival_step for x in evs], [x.departure_step for x in evs])
    pmax = np.array([x.p_max_kw for x in evs])[:, None]
    imp = -p
    sink.over(ids, "ev.no_export", -imp)
    sink.over(ids, "ev.p_max_kw", imp - pmax * plugged)
    cap = np.array([x.battery_kwh for x in evs])
    eta = np.array([x.eta_charge for x in evs])
    soc = (
        np.array([x.soc_init_pct for x in evs])[:, None]
        + np.cumsum(np.clip(imp, 0, None), axis=1) * DT_H * eta[:, None] / cap[:, None] * 100
    )
    sink.over(
        ids,
        "ev.soc_max_pct",
        (soc - np.array([x.soc_max_pct for x in evs])[:, None]) * cap[:, None] / 100,
    )
    deadline = np.array([x.deadline_step for x in evs])
    at = np.where(
        deadline > 0,
        soc[np.arange(len(evs)), np.maximum(deadline - 1, 0)],
        np.array([x.soc_init_pct for x in evs]),
    )
    target = np.array([x.target_soc_pct for x in evs])
    need = np.maximum(target - np.array([x.soc_init_pct for x in evs]), 0)
    short = np.where(need > 0, (target - at) * cap / 100, 0.0)
    sink.over(ids, "ev.target_by_deadline", short)


def _check_loads(fleet: FleetState, p: FloatArray, sink: _Sink) -> None:
    ld = fleet.loads
    if not ld:
        return
    ids = [x.asset_id for x in ld]
    win = _window(len(ld), [x.window_start_step for x in ld], [x.window_end_step for x in ld])
    pmax = np.array([x.p_max_kw for x in ld])[:, None]
    imp = -p
    sink.over(ids, "load.no_export", -imp)
    sink.over(ids, "load.p_max_kw", imp - pmax * win)
    got = imp.sum(axis=1) * DT_H
    sink.over(ids, "load.energy_in_window", np.abs(got - np.array([x.energy_kwh for x in ld])))


def _site_of(fleet: FleetState) -> list[str]:
    """Each plan row's site, in row order (batteries, EVs, loads, PVs)."""
    return (
        [x.site_id for x in fleet.batteries]
        + [x.site_id for x in fleet.evs]
        + [x.site_id for x in fleet.loads]
        + [x.site_id for x in fleet.pvs]
    )


def _check_demand_response(fleet: FleetState, p: FloatArray, sink: _Sink) -> None:
    """Each demand-response cap: the group's net import (minus summed power) per covered step."""
    site_of = _site_of(fleet)
    for dr in fleet.demand_response:
        rows = [i for i, s in enumerate(site_of) if not dr.site_ids or s in dr.site_ids]
        net_import = -p[rows].sum(axis=0) if rows else np.zeros(STEPS)
        excess = np.full(STEPS, -np.inf)
        window = slice(dr.start_step, dr.end_step)
        excess[window] = net_import[window] - np.asarray(dr.import_max_kw)
        sink.over([f"demand_response {dr.event_id}"], "demand_response.import_max_kw", excess[None])


def _check_grid(fleet: FleetState, p: FloatArray, sink: _Sink) -> None:
    site_of = _site_of(fleet)
    index: dict[str, int] = {}
    rows = np.array([index.setdefault(s, len(index)) for s in site_of], dtype=np.int64)
    net = np.zeros((len(index), STEPS))
    np.add.at(net, rows, p)
    for lim in fleet.sites:
        k = index.get(lim.site_id)
        if k is None:
            continue
        site = [f"site {lim.site_id}"]
        sink.over(site, "site.export_max_kw", (net[k] - np.asarray(lim.export_max_kw))[None, :])
        sink.over(site, "site.import_max_kw", (-net[k] - np.asarray(lim.import_max_kw))[None, :])
    for fd in fleet.feeders:
        ks = [index[s] for s in fd.site_ids if s in index]
        total = net[ks].sum(axis=0) if ks else np.zeros(STEPS)
        name = [f"feeder {fd.feeder_id}"]
        sink.over(name, "feeder.export_max_kw", (total - fd.export_max_kw)[None, :])
        sink.over(name, "feeder.import_max_kw", (-total - fd.import_max_kw)[None, :])


def _lots_off(x: FloatArray, inc: float) -> FloatArray:
    return np.asarray(np.abs(x - inc * np.round(x / inc)), dtype=np.float64)


def _check_market(plan: Plan, rules: MarketRules, sink: _Sink) -> None:
    if rules.energy_increment_kw > 0:
        off = _lots_off(plan.portfolio_kw(), rules.energy_increment_kw)
        sink.over(["portfolio"], "market.energy_increment_kw", off[None, :])
    if rules.reserve_increment_kw > 0 and plan.reserve_kw.size:
        off = _lots_off(plan.reserve_kw.sum(axis=0), rules.reserve_increment_kw)
        for blk, x in enumerate(off):
            if x > sink.tol:
                step = blk * rules.fcr_block_steps
                sink.out.append(Violation("portfolio", "market.reserve_increment_kw", step, x))
