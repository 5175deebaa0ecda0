"""The day-ahead model over constraint tables: a cvxpy MILP (LP when no rule is integral).

Maximize, in EUR over the horizon (``dt`` = step length [h], prices per MWh hence /1000)::

    sum_t price_t/1000 * P_t * dt                      energy arbitrage, P = portfolio net [kW]
  + sum_b fcr_b/1000 * R_b * block_h                  symmetric FCR capacity R_b [kW]
  + sum_b (up_b * U_b + down_b * D_b)/1000 * block_h  aFRR capacity per direction [kW]
  + sc_value/1000 * sum_{site,t} sc * dt              PV consumed at its own site
  - sum deg * (charge + discharge) * dt               battery degradation
  - sum curt_cost * (available - generated) * dt      PV curtailment

subject to every table row: power bounds, stored energy (with efficiencies) within bounds
after every step and at the end, demand energy by its deadline and under its cap, site and
feeder net-power limits, demand-response caps on a group's net import in the steps an
event covers (``-net <= cap``), reserve headroom per battery and step (``p + r + u <= p_dis``,
``p - r - d >= -p_ch``; r FCR, u/d aFRR up/down of the step's block), reserve energy held per
direction after every step and at block starts (``fcr_energy_h * r + afrr_energy_h * u``
deliverable above the SOC floor, ``fcr_energy_h * r + afrr_energy_h * d`` storable below the
ceiling: the products are activated independently, so their energies add), and the integral
market rules ``P_t = energy_increment * n_t`` and ``sum R_b = reserve_increment * k_b``, the
same for ``sum U_b`` and ``sum D_b`` (n, k integer). aFRR variables exist only when
``prices.offers_afrr`` (and are fixed at 0 in blocks without a positive price), so a problem
without aFRR prices is built exactly as before.

``fixed_lots`` = (portfolio kW per step, FCR kW per block), either may be None: fixes that
total by an equality instead of integer lots; ``fixed_afrr`` = (aFRR up, down kW per block)
likewise. ``energy_offset_kw`` [kW] per step is added to
the portfolio before the energy-lot constraint (the fixed rest of the fleet in the lot
repair of :mod:`.lots`). ``exclusive`` adds a binary per storage row and step so that charge
and discharge never overlap (used in the small lot repair, where a time-limited incumbent
could otherwise burn energy through simultaneous flows).

With ``elastic=True`` the economic objective is replaced by the sum of nonnegative slacks on
each relaxable constraint group (final SOC, demand energy, grid export/import limits,
``demand_response.import_max``; integrality is dropped): the groups whose slack is
positive are the ones that make the problem infeasible (see :mod:`.diagnosis`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import cvxpy as _cvxpy
import numpy as np
import scipy.sparse as sp

from control_plane.optimizer.assets import DT_H, STEPS
from control_plane.optimizer.constraints import (
    DR_PREFIX,
    FloatArray,
    GroupLimit,
    StorageTable,
    Tables,
)
from control_plane.optimizer.market import MarketPrices, MarketRules

cp: Any = _cvxpy  # cvxpy ships partial type information; treat it as untyped


@dataclass(slots=True)
class Built:
    """A built problem and handles on its variables (``None`` where a table is empty)."""

    problem: Any
    charge: Any = None
    discharge: Any = None
    reserve: Any = None
    afrr_up: Any = None
    afrr_down: Any = None
    imports: Any = None
    generation: Any = None
    slacks: dict[str, tuple[Any, list[str]]] = field(default_factory=dict)


def _incidence(rows_list: list[Any], n: int) -> sp.csr_matrix:
    r = [np.full(len(rows), g, dtype=np.int64) for g, rows in enumerate(rows_list)]
    rr = np.concatenate(r) if r else np.zeros(0, dtype=np.int64)
    cc = np.concatenate(rows_list) if rows_list else np.zeros(0, dtype=np.int64)
    return sp.csr_matrix((np.ones(len(rr)), (rr, cc)), shape=(len(rows_list), n))


def _reserves(
    b: Built,
    cons: list[Any],
    st: StorageTable,
    net_s: Any,
    e: Any,
    prices: MarketPrices,
    rules: MarketRules,
    *,
    lots: bool,
    fixed_fcr: FloatArray | None,
    fixed_afrr: tuple[FloatArray, FloatArray] | None,
    relax: Callable[[str, Any, list[str]], Any],
) -> Any:
    """FCR and (when priced or already sold) aFRR capacity of the storage rows: variables on
    ``b``, headroom, energy holding, lots and the sold positions (``market.sold_<product>``,
    relaxable for the diagnosis) appended to ``cons``; returns their capacity revenue [EUR]."""
    n, blocks, expand = len(st), rules.blocks, rules.expand()
    per_kw_h = rules.block_hours() / 1000.0  # EUR/MW/h -> EUR/kW per block (blocks,)
    r = cp.Variable((n, blocks), nonneg=True, name="fcr_kw")
    b.reserve = r
    rt = r @ expand
    h, inv_eta, eta = rules.fcr_energy_h, 1.0 / st.eta_discharge[:, None], st.eta_charge[:, None]
    head_up = head_down = rt
    # Energy to hold per direction: (stored-energy coefficient per kW, reserve per block).
    hold_up: list[tuple[FloatArray, Any]] = [(h / st.eta_discharge[:, None], r)]
    hold_down: list[tuple[FloatArray, Any]] = [(h * eta, r)]
    totals: list[tuple[str, Any, FloatArray | None]] = [("fcr", r, fixed_fcr)]
    afrr_value: Any = 0
    if prices.offers_afrr or rules.sold_afrr:
        ha = rules.afrr_energy_h
        up = cp.Variable((n, blocks), nonneg=True, name="afrr_up_kw")
        down = cp.Variable((n, blocks), nonneg=True, name="afrr_down_kw")
        b.afrr_up, b.afrr_down = up, down
        for var, price, sold in zip(
            (up, down),
            prices.afrr(rules),
            (rules.sold("afrr_up"), rules.sold("afrr_down")),
            strict=True,
        ):
            idle = np.flatnonzero((price <= 0) & (sold <= 0))
            if len(idle):  # not offered where it earns nothing (and nothing is sold)
                cons.append(var[:, idle] == 0)
            afrr_value += cp.sum(var @ (price * per_kw_h))
        head_up, head_down = rt + up @ expand, rt + down @ expand
        hold_up.append((ha * inv_eta, up))
        hold_down.append((ha * eta, down))
        fixed = (None, None) if fixed_afrr is None else fixed_afrr
        totals += [("afrr_up", up, fixed[0]), ("afrr_down", down, fixed[1])]
    cons += [net_s + head_up <= st.p_discharge_max_kw, head_down - net_s <= st.p_charge_max_kw]
    # Energy for full activation of every offered product, per direction, after every step
    # and at the start of every block (the stock the previous block left behind).
    starts = rules.starts()
    e_all = cp.hstack([st.e_init_kwh[:, None], e])
    e_start = e_all[:, starts]
    for stock, per_step in ((e, True), (e_start, False)):

        def need(terms: list[tuple[FloatArray, Any]], per_step: bool = per_step) -> Any:
            parts = [cp.multiply(c, x @ expand if per_step else x) for c, x in terms]
            return parts[0] if len(parts) == 1 else parts[0] + parts[1]

        cons.append(stock - need(hold_up) >= st.e_min_kwh[:, None])
        cons.append(stock + need(hold_down) <= st.e_max_kwh[:, None])
    value = cp.sum(r @ (prices.fcr(rules) * per_kw_h))
    block_ids = [f"block {k}" for k in range(blocks)]
    for name, var, fixed_total in totals:
        total = cp.sum(var, axis=0)
        sold = rules.sold(name)
        if sold.any():  # a position the market awarded: held, whatever it earns now
            cons.append(relax(f"market.sold_{name}", total - sold, block_ids))
        if fixed_total is not None:
            cons.append(total == fixed_total)
        elif lots:
            k = cp.Variable(blocks, integer=True, name=f"{name}_mw")
            cons += [k >= 0, total == rules.reserve_increment_kw * k]
    return value if isinstance(afrr_value, int) else value + afrr_value


def build(
    tables: Tables,
    prices: MarketPrices,
    rules: MarketRules,
    *,
    elastic: bool = False,
    integral: bool = True,
    fcr: bool = True,
    fixed_lots: tuple[FloatArray | None, FloatArray | None] | None = None,
    energy_offset_kw: FloatArray | None = None,
    exclusive: bool = False,
    fixed_afrr: tuple[FloatArray, FloatArray] | None = None,
) -> Built:
    """Build the cvxpy problem of ``tables`` (see the module docstring for the formulation)."""
    st, dm, pv = tables.storage, tables.demand, tables.pv
    price = prices.energy() / 1000.0  # EUR/kWh
    cons: list[Any] = []
    slacks: dict[str, tuple[Any, list[str]]] = {}

    def relax(name: str, expr: Any, ids: list[str]) -> Any:
        """``expr >= 0`` or, elastic, ``expr + s >= 0`` with a reported slack ``s``."""
        if not elastic:
            return expr >= 0
        s = cp.Variable(expr.shape, nonneg=True, name=f"slack_{name}")
        slacks[name] = (s, ids)
        return expr + s >= 0

    b = Built(problem=cp.Problem(cp.Minimize(0)))
    zero_t: Any = np.zeros(STEPS)
    net_s: Any = None
    value: Any = 0
    if len(st):
        n = len(st)
        ch = cp.Variable((n, STEPS), nonneg=True, name="charge_kw")
        dis = cp.Variable((n, STEPS), nonneg=True, name="discharge_kw")
        b.charge, b.discharge = ch, dis
        cons += [ch <= st.p_charge_max_kw, dis <= st.p_discharge_max_kw]
        if exclusive:  # a binary per row and step: never charge and discharge at once
            z = cp.Variable((n, STEPS), boolean=True, name="charging")
            cons += [ch <= cp.multiply(st.p_charge_max_kw, z)]
            cons += [dis <= cp.multiply(st.p_discharge_max_kw, 1 - z)]
        flow = cp.multiply(st.eta_charge[:, None], ch) - cp.multiply(
            1.0 / st.eta_discharge[:, None], dis
        )
        e = st.e_init_kwh[:, None] + cp.cumsum(flow, axis=1) * DT_H
        cons += [e >= st.e_min_kwh[:, None], e <= st.e_max_kwh[:, None]]
        cons.append(relax("battery.soc_final_min", e[:, -1] - st.e_final_min_kwh, st.ids))
        net_s = dis - ch
        value -= cp.sum(cp.multiply(st.degradation_eur_per_kwh[:, None], ch + dis)) * DT_H
        if fcr:
            value += _reserves(
                b, cons, st, net_s, e, prices, rules,
                lots=rules.reserve_increment_kw > 0 and integral and not elastic,
                fixed_fcr=None if fixed_lots is None else fixed_lots[1],
                fixed_afrr=fixed_afrr, relax=relax,
            )  # fmt: skip
    imp: Any = None
    if len(dm):
        imp = cp.Variable((len(dm), STEPS), nonneg=True, name="import_kw")
        b.imports = imp
        cons.append(imp <= dm.p_import_max_kw)
        mask = (np.arange(STEPS)[None, :] < dm.deadline_step[:, None]).astype(np.float64)
        got = cp.sum(cp.multiply(mask, imp), axis=1) * DT_H
        cons.append(relax("demand.energy_by_deadline", got - dm.e_required_kwh, dm.ids))
        cons.append(cp.sum(imp, axis=1) * DT_H <= dm.e_max_kwh)
    gen: Any = None
    if len(pv):
        gen = cp.Variable((len(pv), STEPS), nonneg=True, name="pv_kw")
        b.generation = gen
        cons.append(gen <= pv.p_avail_kw)
        lost = pv.forecast_kw - gen
        value -= cp.sum(cp.multiply(pv.curtailment_eur_per_kwh, lost)) * DT_H

    def group_net(groups: list[GroupLimit]) -> Any:
        total: Any = 0
        if net_s is not None:
            total = total + _incidence([g.storage_rows for g in groups], len(st)) @ net_s
        if imp is not None:
            total = total - _incidence([g.demand_rows for g in groups], len(dm)) @ imp
        if gen is not None:
            total = total + _incidence([g.pv_rows for g in groups], len(pv)) @ gen
        return total

    grid = [g for g in tables.limits if not g.name.startswith(DR_PREFIX)]
    if grid:
        names = [g.name for g in grid]
        gnet = group_net(grid)
        exp_max = np.stack([g.export_max_kw for g in grid])
        imp_max = np.stack([g.import_max_kw for g in grid])
        if isinstance(gnet, int):
            gnet = np.zeros_like(exp_max)
        cons.append(relax("grid.export_max", exp_max - gnet, names))
        cons.append(relax("grid.import_max", gnet + imp_max, names))
    caps = [g for g in tables.limits if g.name.startswith(DR_PREFIX)]
    cap = np.stack([g.import_max_kw for g in caps]) if caps else np.zeros((0, STEPS))
    r, c = np.nonzero(np.isfinite(cap))  # only the steps an event covers
    if len(r):
        gnet = group_net(caps)
        if isinstance(gnet, int):
            gnet = cp.Constant(np.zeros_like(cap))
        cons.append(
            relax("demand_response.import_max", gnet[r, c] + cap[r, c], [caps[i].name for i in r])
        )
    if tables.sites and rules.self_consumption_eur_per_mwh > 0 and gen is not None:
        sites = tables.sites
        sc = cp.Variable((len(sites), STEPS), nonneg=True, name="self_consumption_kw")
        cons.append(sc <= _incidence([g.pv_rows for g in sites], len(pv)) @ gen)
        use: Any = 0
        if imp is not None:
            use = use + _incidence([g.demand_rows for g in sites], len(dm)) @ imp
        if b.charge is not None:
            use = use + _incidence([g.storage_rows for g in sites], len(st)) @ b.charge
        cons.append(sc <= use)
        value += cp.sum(sc) * DT_H * rules.self_consumption_eur_per_mwh / 1000.0

    portfolio: Any = zero_t
    for part in (net_s, None if imp is None else -imp, gen):
        if part is not None:
            portfolio = portfolio + cp.sum(part, axis=0)
    value += cp.sum(cp.multiply(price, portfolio)) * DT_H
    if fixed_lots is not None and fixed_lots[0] is not None:
        cons.append(portfolio == fixed_lots[0])
    elif (
        rules.energy_increment_kw > 0
        and integral
        and not elastic
        and not isinstance(portfolio, np.ndarray)
    ):
        n_t = cp.Variable(STEPS, integer=True, name="energy_lots")
        offset = 0.0 if energy_offset_kw is None else energy_offset_kw
        cons.append(portfolio + offset == rules.energy_increment_kw * n_t)
    if elastic:
        objective = cp.Minimize(sum((cp.sum(s) for s, _ in slacks.values()), cp.Constant(0)))
    else:
        objective = cp.Maximize(value)
    b.problem = cp.Problem(objective, cons)
    b.slacks = slacks
    return b
