"""Independent verification of a plan against every asset's and grid limit's own constraints.

Reads the typed assets of :class:`FleetState` directly (not the solver's tables or values),
recomputes each battery's state of charge from its net power alone (a device receives one
setpoint, so charge and discharge never overlap), checks the reserves each battery holds (FCR
symmetric; aFRR up and down on top of it: headroom to the power rating and the energy for
full activation, per direction, with FCR's added), and reports every violation beyond
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
    arrays = (p, plan.reserve_kw, plan.afrr_up_kw, plan.afrr_down_kw)
    if not all(np.all(np.isfinite(x)) for x in arrays):
        return [Violation("plan", "plan.finite", 0, float("inf"))]
    _check_batteries(fleet, p[:nb], plan.reserve_kw, rules, sink)
    _check_afrr(fleet, p[:nb], plan, rules, sink)
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
    _check_sold(plan, rules, sink)
    return sink.out


def _check_sold(plan: Plan, rules: MarketRules, sink: _Sink) -> None:
    """The portfolio holds at least the capacity already sold, per product and block."""
    for name, x_kw in (
        ("fcr", plan.reserve_kw),
        ("afrr_up", plan.afrr_up_kw),
        ("afrr_down", plan.afrr_down_kw),
    ):
        sold = rules.sold(name)
        if not sold.any():
            continue
        held = x_kw.sum(axis=0) if x_kw.size else np.zeros(rules.blocks)
        if held.shape != sold.shape:
            sink.out.append(Violation("plan", "plan.reserve_shape", 0, float("inf")))
            return
        short = sold - held
        for blk in np.flatnonzero(short > sink.tol):  # reported at the block's first step
            step = int(rules.starts()[blk])
            sink.out.append(
                Violation("portfolio", f"market.sold_{name}_kw", step, float(short[blk]))
            )


def _check_batteries(
    fleet: FleetState, p: FloatArray, r: FloatArray, rules: MarketRules, sink: _Sink
) -> None:
    b = fleet.batteries
    if not b:
        return
    ids = [x.asset_id for x in b]
    e = np.array([x.e_kwh for x in b])
    pmax, eta_c, eta_d, lo, hi, before, soc = _battery_arrays(fleet, p)
    sink.over(ids, "battery.p_max_kw", np.abs(p) - pmax)
    sink.over(ids, "battery.soc_min_pct", lo - soc)
    sink.over(ids, "battery.soc_max_pct", soc - hi)
    final = e * np.array([x.final_pct for x in b]) / 100
    sink.over(ids, "battery.soc_final_min_pct", final - soc[:, -1])
    if r.shape != (len(b), rules.blocks):
        sink.out.append(Violation("plan", "plan.reserve_shape", 0, float("inf")))
        return
    sink.over(ids, "fcr.nonnegative", -r)
    rt = rules.per_block(r)
    sink.over(ids, "fcr.headroom_up", p + rt - pmax)
    sink.over(ids, "fcr.headroom_down", rt - p - pmax)
    h = rules.fcr_energy_h
    for stock in (before, soc):
        sink.over(ids, "fcr.energy_up", lo - (stock - rt * h / eta_d[:, None]))
        sink.over(ids, "fcr.energy_down", stock + rt * h * eta_c[:, None] - hi)


def _battery_arrays(
    fleet: FleetState, p: FloatArray
) -> tuple[FloatArray, FloatArray, FloatArray, FloatArray, FloatArray, FloatArray, FloatArray]:
    """Per battery: rating (n, 1) [kW], efficiencies (n,), SOC bounds (n, 1) [kWh], stored
    energy before and after each step (n, STEPS) [kWh], recomputed from ``p`` alone."""
    b = fleet.batteries
    e = np.array([x.e_kwh for x in b])
    pmax = np.array([x.p_max_kw for x in b])[:, None]
    eta_c = np.array([x.eta_charge for x in b])
    eta_d = np.array([x.eta_discharge for x in b])
    lo = (e * np.array([x.soc_min_pct for x in b]) / 100)[:, None]
    hi = (e * np.array([x.soc_max_pct for x in b]) / 100)[:, None]
    e0 = e * np.array([x.soc_init_pct for x in b]) / 100
    soc = soc_kwh(p, e0, eta_c, eta_d)
    before = np.hstack([e0[:, None], soc[:, :-1]])
    return pmax, eta_c, eta_d, lo, hi, before, soc


def _check_afrr(
    fleet: FleetState, p: FloatArray, plan: Plan, rules: MarketRules, sink: _Sink
) -> None:
    """aFRR up/down per battery and block: nonnegative; with the FCR of the same block,
    ``p + fcr + up <= p_max`` and ``p - fcr - down >= -p_max`` in every step; the energy of
    full activation, ``fcr_energy_h * fcr + afrr_energy_h * up`` deliverable above the SOC
    floor and ``... * down`` storable below the ceiling, before and after every step of the
    block. Reported only where aFRR is held (FCR alone is :func:`_check_batteries`'), so one
    breach is not counted twice."""
    up, down, r = plan.afrr_up_kw, plan.afrr_down_kw, plan.reserve_kw
    if not (up.any() or down.any()):
        return
    b = fleet.batteries
    if up.shape != (len(b), rules.blocks) or down.shape != up.shape or r.shape != up.shape:
        sink.out.append(Violation("plan", "plan.afrr_shape", 0, float("inf")))
        return
    ids = [x.asset_id for x in b]
    sink.over(ids, "afrr.nonnegative", -np.minimum(up, down))
    pmax, eta_c, eta_d, lo, hi, before, soc = _battery_arrays(fleet, p)
    rt, ut, dt = (rules.per_block(x) for x in (r, up, down))

    def where(held: FloatArray, excess: FloatArray) -> FloatArray:
        return np.where(held > 0, excess, -np.inf)

    sink.over(ids, "afrr.headroom_up", where(ut, p + rt + ut - pmax))
    sink.over(ids, "afrr.headroom_down", where(dt, rt + dt - p - pmax))
    e_up = rt * rules.fcr_energy_h + ut * rules.afrr_energy_h
    e_down = rt * rules.fcr_energy_h + dt * rules.afrr_energy_h
    for stock in (before, soc):
        sink.over(ids, "afrr.energy_up", where(ut, lo - (stock - e_up / eta_d[:, None])))
        sink.over(ids, "afrr.energy_down", where(dt, stock + e_down * eta_c[:, None] - hi))


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
    if rules.reserve_increment_kw > 0:
        for name, x_kw in (
            ("market.reserve_increment_kw", plan.reserve_kw),
            ("market.afrr_up_increment_kw", plan.afrr_up_kw),
            ("market.afrr_down_increment_kw", plan.afrr_down_kw),
        ):
            if not x_kw.size:
                continue
            off = _lots_off(x_kw.sum(axis=0), rules.reserve_increment_kw)
            for blk, x in enumerate(off):
                if x > sink.tol:
                    step = int(rules.starts()[blk])
                    sink.out.append(Violation("portfolio", name, step, x))
