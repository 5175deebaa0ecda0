"""Whole market lots for a continuous plan: a small repair MILP instead of branch-and-bound.

After the continuous LP, FCR per block is cut to whole reserve lots (less reserve never breaks
a limit), the cut taken first from a few *balancing* devices (the largest storage rows), which
frees their headroom. Those rows and every PV row are then re-optimized in a small MILP with
integer energy lots (portfolio = their power + the fixed rest of the fleet); every other
device keeps its LP schedule. The MILP picks, step by step, the lot each way that the
balancing devices can reach at the best value. Its result is accepted only if
:func:`storage_ok` holds (stored energy recomputed from net power: a time-limited incumbent
may charge and discharge at once); otherwise the repair runs again with a binary per row and
step that forbids the overlap. If both fail, the caller keeps the continuous position and
reports it (see :func:`control_plane.optimizer.schedule.solve_tables`).
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

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

BALANCING_STORAGE = 24  #: storage rows re-optimized by the repair


def lots(x: FloatArray, inc: float, how: str = "round") -> FloatArray:
    """``x`` [kW] in whole ``inc`` [kW] lots, rounded (``round``) or down (``floor``)."""
    if inc <= 0:
        return x
    f = np.round if how == "round" else np.floor
    return np.asarray(inc * f(x / inc + 1e-9), dtype=np.float64)


def balancing_rows(tables: Tables) -> IntArray:
    """The storage rows the repair re-optimizes: the largest by energy range and power."""
    st = tables.storage
    span = st.e_max_kwh - st.e_min_kwh + st.p_discharge_max_kw.max(axis=1, initial=0.0)
    return np.sort(np.argsort(-span)[:BALANCING_STORAGE]).astype(np.int64)


def floor_reserve(sol: TableSolution, inc: float, prefer: IntArray | None = None) -> TableSolution:
    """FCR per block cut down to whole ``inc`` [kW] lots, taking the cut from the ``prefer``
    rows first (the balancing rows, which then get headroom for the energy-lot repair)."""
    res = sol.reserve_kw.copy()
    total = res.sum(axis=0)
    cut = total - lots(total, inc, "floor")
    rows = np.arange(len(res)) if prefer is None else prefer
    for group in (rows, np.arange(len(res))):
        have = res[group].sum(axis=0)
        take = np.minimum(cut, have)
        scale = np.where(have > 0, 1.0 - take / np.maximum(have, 1e-12), 1.0)
        res[group] *= scale[None, :]
        cut = cut - take
    return replace(sol, reserve_kw=np.clip(res, 0.0, None))


def _storage_rows(st: StorageTable, rows: IntArray) -> StorageTable:
    return StorageTable(
        [st.ids[i] for i in rows], st.p_discharge_max_kw[rows], st.p_charge_max_kw[rows],
        st.e_init_kwh[rows], st.e_min_kwh[rows], st.e_max_kwh[rows], st.e_final_min_kwh[rows],
        st.eta_charge[rows], st.eta_discharge[rows], st.degradation_eur_per_kwh[rows],
    )  # fmt: skip


def repair_tables(
    tables: Tables, sol: TableSolution, rules: MarketRules
) -> tuple[Tables, IntArray, FloatArray, FloatArray]:
    """The repair problem: balancing rows, the fixed rest's net power [kW] per step and the
    balancing rows' FCR total [kW] per block (everything else fixed at ``sol``)."""
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
    return sub, s_rows, fixed_total, reserve


def merge(sol: TableSolution, rows: IntArray, sub: TableSolution) -> TableSolution:
    """``sol`` with the balancing rows replaced by the repair's values."""
    storage, reserve = sol.storage_kw.copy(), sol.reserve_kw.copy()
    storage[rows], reserve[rows] = sub.storage_kw, sub.reserve_kw
    return replace(sol, storage_kw=storage, reserve_kw=reserve, pv_kw=sub.pv_kw)


def storage_ok(
    tables: Tables, net_kw: FloatArray, reserve_kw: FloatArray, rules: MarketRules
) -> bool:
    """True if every storage row's stored energy, recomputed from its net power alone, stays
    within its bounds with the FCR energy held in both directions (tolerance 1e-6 relative)."""
    st = tables.storage
    if not len(st):
        return True
    flow = np.where(
        net_kw < 0, -net_kw * st.eta_charge[:, None], -net_kw / st.eta_discharge[:, None]
    )
    stock = st.e_init_kwh[:, None] + np.cumsum(flow, axis=1) * DT_H
    rt = np.repeat(reserve_kw, rules.fcr_block_steps, axis=1) * rules.fcr_energy_h
    tol = 1e-6 * np.maximum(st.e_max_kwh - st.e_min_kwh, 1.0)[:, None]
    before = np.hstack([st.e_init_kwh[:, None], stock[:, :-1]])
    ok = bool((stock[:, -1] >= st.e_final_min_kwh - tol[:, 0]).all())
    for s in (stock, before):
        ok = ok and bool((s - rt / st.eta_discharge[:, None] >= st.e_min_kwh[:, None] - tol).all())
        ok = ok and bool((s + rt * st.eta_charge[:, None] <= st.e_max_kwh[:, None] + tol).all())
    return ok


__all__ = [
    "MarketPrices",
    "balancing_rows",
    "floor_reserve",
    "lots",
    "merge",
    "repair_tables",
    "storage_ok",
]
