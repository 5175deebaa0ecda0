"""Whole market lots for a continuous plan: a small repair MILP instead of branch-and-bound.

After the continuous LP, FCR and aFRR (each direction) per block are cut to whole reserve
lots (less reserve never breaks a limit), the cut taken first from a few *balancing* devices
(the largest storage rows), which frees their headroom. Those rows and every PV row are then
re-optimized in a small MILP with integer energy lots (portfolio = their power + the fixed
rest of the fleet) and their reserve totals per block and product fixed at the whole-lot
values; every other device keeps its LP schedule. The MILP picks, step by step, the lot each
way that the balancing devices can reach at the best value. Its result is accepted only if
:func:`storage_ok` holds (stored energy recomputed from net power: a time-limited incumbent
may charge and discharge at once); otherwise the repair runs again with a binary per row and
step that forbids the overlap. Before a repair is given up, :func:`reallocate_reserves`
tries to re-split the balancing rows' reserves (block totals kept) so that they are held with
the stored energy recomputed from net power, a small LP with power fixed: an incumbent that
burned energy through simultaneous flows to make room for reserve is then usable after all.
As a last attempt the balancing rows are re-solved as an LP towards the portfolio position
rounded to lots with the error carried forward (:func:`lot_path`). If every attempt fails,
the caller keeps the continuous position and reports it (see
:func:`control_plane.optimizer.schedule.solve_tables`).
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any

import cvxpy as _cvxpy
import numpy as np

from control_plane.optimizer.assets import DT_H
from control_plane.optimizer.constraints import (
    DemandTable,
    FloatArray,
    GroupLimit,
    IntArray,
    PvTable,
    StorageTable,
    Tables,
)
from control_plane.optimizer.market import MarketPrices, MarketRules

if TYPE_CHECKING:
    from control_plane.optimizer.schedule import TableSolution

cp: Any = _cvxpy  # cvxpy ships partial type information; treat it as untyped
BALANCING_STORAGE = 24  #: storage rows re-optimized by the repair
REALLOCATE_TIME_S = 5.0  #: time limit of the reserve re-split LP [s]


def lots(x: FloatArray, inc: float, how: str = "round") -> FloatArray:
    """``x`` [kW] in whole ``inc`` [kW] lots, rounded (``round``) or down (``floor``; a
    total within a millionth of a lot below a whole lot, the solver's tolerance, counts as
    that lot, so a sold position held to the solver's accuracy is not cut by one lot)."""
    if inc <= 0:
        return x
    if how == "round":
        return np.asarray(inc * np.round(x / inc + 1e-9), dtype=np.float64)
    return np.asarray(inc * np.floor(x / inc + 1e-6), dtype=np.float64)


def lot_path(x_kw: FloatArray, inc: float) -> FloatArray:
    """``x_kw`` [kW] per step in whole ``inc`` [kW] lots, each step rounded so that the running
    sum stays within half a lot of the running sum of ``x_kw`` (the rounding error is carried
    forward, so the energy it shifts stays below half a lot-step)."""
    cum = np.cumsum(x_kw)
    return np.diff(lots(cum, inc), prepend=0.0)


def balancing_rows(tables: Tables) -> IntArray:
    """The storage rows the repair re-optimizes: the largest by energy range and power."""
    st = tables.storage
    span = st.e_max_kwh - st.e_min_kwh + st.p_discharge_max_kw.max(axis=1, initial=0.0)
    return np.sort(np.argsort(-span)[:BALANCING_STORAGE]).astype(np.int64)


def _floor_rows(x_kw: FloatArray, inc: float, prefer: IntArray | None) -> FloatArray:
    """Reserve per row and block [kW] with each block's total cut down to whole ``inc`` [kW]
    lots, the cut taken from the ``prefer`` rows first."""
    res = x_kw.copy()
    total = res.sum(axis=0)
    cut = total - lots(total, inc, "floor")
    rows = np.arange(len(res)) if prefer is None else prefer
    for group in (rows, np.arange(len(res))):
        have = res[group].sum(axis=0)
        take = np.minimum(cut, have)
        scale = np.where(have > 0, 1.0 - take / np.maximum(have, 1e-12), 1.0)
        res[group] *= scale[None, :]
        cut = cut - take
    return np.clip(res, 0.0, None)


def floor_reserve(sol: TableSolution, inc: float, prefer: IntArray | None = None) -> TableSolution:
    """FCR and aFRR (each direction) per block cut down to whole ``inc`` [kW] lots, taking the
    cut from the ``prefer`` rows first (the balancing rows, which then get headroom for the
    energy-lot repair)."""
    return replace(
        sol,
        reserve_kw=_floor_rows(sol.reserve_kw, inc, prefer),
        afrr_up_kw=_floor_rows(sol.afrr_up_kw, inc, prefer),
        afrr_down_kw=_floor_rows(sol.afrr_down_kw, inc, prefer),
    )


def _storage_rows(st: StorageTable, rows: IntArray) -> StorageTable:
    return StorageTable(
        [st.ids[i] for i in rows], st.p_discharge_max_kw[rows], st.p_charge_max_kw[rows],
        st.e_init_kwh[rows], st.e_min_kwh[rows], st.e_max_kwh[rows], st.e_final_min_kwh[rows],
        st.eta_charge[rows], st.eta_discharge[rows], st.degradation_eur_per_kwh[rows],
    )  # fmt: skip


def repair_tables(
    tables: Tables, sol: TableSolution, rules: MarketRules
) -> tuple[Tables, IntArray, FloatArray, FloatArray, tuple[FloatArray, FloatArray]]:
    """The repair problem: balancing rows, the fixed rest's net power [kW] per step, the
    balancing rows' FCR total and aFRR (up, down) totals [kW] per block (everything else
    fixed at ``sol``)."""
    st, pv = tables.storage, tables.pv
    s_rows = balancing_rows(tables)
    in_s = np.zeros(len(st), dtype=bool)
    in_s[s_rows] = True
    fixed_total = sol.storage_kw[~in_s].sum(0) + sol.demand_kw.sum(0)
    remap = np.full(len(st), -1, dtype=np.int64)
    remap[s_rows] = np.arange(len(s_rows))
    limits: list[GroupLimit] = []
    for g in tables.limits:
        fixed = sol.storage_kw[g.storage_rows[~in_s[g.storage_rows]]].sum(0)
        fixed = fixed + sol.demand_kw[g.demand_rows].sum(0)
        members = remap[g.storage_rows[in_s[g.storage_rows]]]
        limits.append(
            GroupLimit(
                g.name, members, np.zeros(0, dtype=np.int64), g.pv_rows,
                g.import_max_kw + fixed, g.export_max_kw - fixed,
            )
        )  # fmt: skip
    empty = DemandTable([], [], np.zeros((0, pv.p_avail_kw.shape[1])), np.zeros(0),
                        np.zeros(0, dtype=np.int64), np.zeros(0))  # fmt: skip
    sub = Tables(_storage_rows(st, s_rows), empty, PvTable(pv.ids, pv.p_avail_kw,
                 pv.forecast_kw, pv.curtailment_eur_per_kwh), limits)  # fmt: skip
    reserve = sol.reserve_kw[s_rows].sum(0)
    afrr = (sol.afrr_up_kw[s_rows].sum(0), sol.afrr_down_kw[s_rows].sum(0))
    return sub, s_rows, fixed_total, reserve, afrr


def merge(sol: TableSolution, rows: IntArray, sub: TableSolution) -> TableSolution:
    """``sol`` with the balancing rows replaced by the repair's values."""
    storage, reserve = sol.storage_kw.copy(), sol.reserve_kw.copy()
    up, down = sol.afrr_up_kw.copy(), sol.afrr_down_kw.copy()
    storage[rows], reserve[rows] = sub.storage_kw, sub.reserve_kw
    up[rows], down[rows] = sub.afrr_up_kw, sub.afrr_down_kw
    return replace(
        sol, storage_kw=storage, reserve_kw=reserve, afrr_up_kw=up, afrr_down_kw=down,
        pv_kw=sub.pv_kw,
    )  # fmt: skip


def _stock_kwh(st: StorageTable, net_kw: FloatArray) -> tuple[FloatArray, FloatArray]:
    """Stored energy [kWh] (n, STEPS) before and after each step, from net power alone."""
    flow = np.where(
        net_kw < 0, -net_kw * st.eta_charge[:, None], -net_kw / st.eta_discharge[:, None]
    )
    stock = st.e_init_kwh[:, None] + np.cumsum(flow, axis=1) * DT_H
    return np.hstack([st.e_init_kwh[:, None], stock[:, :-1]]), stock


def reallocate_reserves(
    tables: Tables, sol: TableSolution, rules: MarketRules, time_limit_s: float = REALLOCATE_TIME_S
) -> TableSolution | None:
    """``sol`` with FCR and aFRR re-split among its storage rows, each block's totals kept, so
    that every row holds its reserves (headroom; energy per direction after every step and at
    block starts) with the stored energy recomputed from its net power alone; ``None`` if no
    split does (or the stored energy itself leaves its bounds). An LP in the reserves only:
    the net power per row and step stays as in ``sol``."""
    st = tables.storage
    n, blocks = len(st), rules.blocks
    if not n:
        return None
    net = sol.storage_kw
    before, after = _stock_kwh(st, net)
    lo = np.minimum(before, after) - st.e_min_kwh[:, None]  # energy above the floor [kWh]
    hi = st.e_max_kwh[:, None] - np.maximum(before, after)  # room below the ceiling [kWh]
    if (lo < -1e-9).any() or (hi < -1e-9).any():
        return None
    expand = rules.expand()
    r, up, down = (cp.Variable((n, blocks), nonneg=True) for _ in range(3))
    cons = [
        cp.sum(x, axis=0) == total.sum(axis=0)
        for x, total in ((r, sol.reserve_kw), (up, sol.afrr_up_kw), (down, sol.afrr_down_kw))
    ]
    cons += [(r + up) @ expand <= st.p_discharge_max_kw - net]
    cons += [(r + down) @ expand <= st.p_charge_max_kw + net]
    h_f, h_a = rules.fcr_energy_h, rules.afrr_energy_h
    need_up = cp.multiply(1.0 / st.eta_discharge[:, None], (h_f * r + h_a * up) @ expand)
    need_down = cp.multiply(st.eta_charge[:, None], (h_f * r + h_a * down) @ expand)
    cons += [need_up <= np.clip(lo, 0.0, None), need_down <= np.clip(hi, 0.0, None)]
    problem = cp.Problem(cp.Minimize(0), cons)
    try:
        problem.solve(solver=cp.HIGHS, time_limit=time_limit_s)
    except (cp.SolverError, ValueError):
        return None
    if problem.status not in (cp.OPTIMAL, cp.OPTIMAL_INACCURATE) or r.value is None:
        return None

    def clean(x: Any) -> FloatArray:
        return np.clip(np.asarray(x.value, dtype=np.float64), 0.0, None)

    return replace(sol, reserve_kw=clean(r), afrr_up_kw=clean(up), afrr_down_kw=clean(down))


def storage_ok(
    tables: Tables,
    net_kw: FloatArray,
    reserve_kw: FloatArray,
    rules: MarketRules,
    afrr_up_kw: FloatArray | None = None,
    afrr_down_kw: FloatArray | None = None,
) -> bool:
    """True if every storage row's stored energy, recomputed from its net power alone, stays
    within its bounds with the FCR energy held in both directions and the aFRR energy in its
    own direction, added to FCR's (tolerance 1e-6 relative)."""
    st = tables.storage
    if not len(st):
        return True
    before, stock = _stock_kwh(st, net_kw)

    def held(x: FloatArray | None, h: float) -> FloatArray:
        x = np.zeros_like(reserve_kw) if x is None else x
        return rules.per_block(x) * h

    rt = held(reserve_kw, rules.fcr_energy_h)
    up, down = (
        rt + held(afrr_up_kw, rules.afrr_energy_h),
        rt + held(afrr_down_kw, rules.afrr_energy_h),
    )
    tol = 1e-6 * np.maximum(st.e_max_kwh - st.e_min_kwh, 1.0)[:, None]
    ok = bool((stock[:, -1] >= st.e_final_min_kwh - tol[:, 0]).all())
    for s in (stock, before):
        ok = ok and bool((s - up / st.eta_discharge[:, None] >= st.e_min_kwh[:, None] - tol).all())
        ok = ok and bool((s + down * st.eta_charge[:, None] <= st.e_max_kwh[:, None] + tol).all())
    return ok


__all__ = [
    "MarketPrices",
    "balancing_rows",
    "floor_reserve",
    "lot_path",
    "lots",
    "merge",
    "reallocate_reserves",
    "repair_tables",
    "storage_ok",
]
