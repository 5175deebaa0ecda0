"""Day-ahead scheduling of a fleet: constraint tables -> model -> solve -> check.

:func:`schedule` solves the exact per-asset problem (one row per asset) with HiGHS, always
under a time limit. When the owner constraints are impossible (found by
:func:`~control_plane.optimizer.constraints.validate` before any solver runs), when the
solver proves infeasibility, or when it stops at its time limit without a solution, the
result is the safe :func:`~control_plane.optimizer.fallback.fallback_plan` carrying a
:class:`~control_plane.optimizer.plan.Diagnosis` of the constraint that binds. For large
fleets use :func:`control_plane.optimizer.aggregation.schedule_aggregated`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import Any

import cvxpy as _cvxpy
import numpy as np

from control_plane.optimizer.assets import STEPS, FleetState
from control_plane.optimizer.constraints import FloatArray, Tables, build_tables, validate
from control_plane.optimizer.fallback import fallback_plan
from control_plane.optimizer.lots import (
    balancing_rows,
    floor_reserve,
    lot_path,
    lots,
    merge,
    reallocate_reserves,
    repair_tables,
    storage_ok,
)
from control_plane.optimizer.market import MarketPrices, MarketRules
from control_plane.optimizer.model import Built, build
from control_plane.optimizer.plan import Diagnosis, Plan

cp: Any = _cvxpy  # cvxpy ships partial type information; treat it as untyped
SOLVED = {cp.OPTIMAL, cp.OPTIMAL_INACCURATE}
REPAIR_TIME_S = 12.0  #: cap on the lot-repair MILP [s]; its incumbent is used at the limit
REPAIR_SHARE = 0.3  #: ... and at most this share of the whole time limit per attempt
REPAIR_GAP = 1e-3  #: relative MILP gap of the lot repair [-]


@dataclass(frozen=True, slots=True)
class TableSolution:
    """Solved values per table, in the sign convention (+ export) [kW]; reserves per storage
    row and block [kW] (FCR, aFRR up, aFRR down); ``status`` is ``optimal``, ``feasible``,
    ``infeasible`` or ``no_solution``."""

    status: str
    storage_kw: FloatArray
    reserve_kw: FloatArray
    afrr_up_kw: FloatArray
    afrr_down_kw: FloatArray
    demand_kw: FloatArray
    pv_kw: FloatArray
    objective_eur: float
    solve_s: float


def _value(var: Any, shape: tuple[int, int]) -> FloatArray:
    if var is None or var.value is None:
        return np.zeros(shape)
    return np.asarray(var.value, dtype=np.float64).reshape(shape)


def _run(b: Built, time_limit_s: float, mip_rel_gap: float) -> tuple[str, float]:
    t0 = time.perf_counter()
    mixed = b.problem.is_mixed_integer()
    opts: dict[str, Any] = {"time_limit": max(float(time_limit_s), 1e-3)}
    if mixed:
        opts["mip_rel_gap"] = mip_rel_gap
    try:
        b.problem.solve(solver=cp.HIGHS, **opts)
    except (cp.SolverError, ValueError):  # ValueError: cvxpy cannot unpack an UNKNOWN status
        return "no_solution", time.perf_counter() - t0
    solve_s = time.perf_counter() - t0
    status = b.problem.status
    if status in SOLVED:
        return "optimal", solve_s
    if status in (cp.INFEASIBLE, cp.INFEASIBLE_INACCURATE):
        return "infeasible", solve_s
    # At a time limit only a MILP incumbent is a usable (feasible) point; an LP iterate is not,
    # and without an incumbent the values cvxpy reports must not be trusted: check them.
    has_values = mixed and all(v.value is not None for v in b.problem.variables())
    if has_values and all(c.value(tolerance=1e-4) for c in b.problem.constraints):
        return "feasible", solve_s
    return "no_solution", solve_s


def _extract(b: Built, tables: Tables, rules: MarketRules, status: str, s: float) -> TableSolution:
    st, dm, pv = tables.storage, tables.demand, tables.pv
    if status not in ("optimal", "feasible"):
        z, nb = np.zeros, (len(st), rules.blocks)
        return TableSolution(
            status, z((len(st), STEPS)), z(nb), z(nb), z(nb), z((len(dm), STEPS)),
            z((len(pv), STEPS)), float("nan"), s,
        )  # fmt: skip
    ch = np.clip(_value(b.charge, (len(st), STEPS)), 0.0, st.p_charge_max_kw)
    dis = np.clip(_value(b.discharge, (len(st), STEPS)), 0.0, st.p_discharge_max_kw)
    nb = (len(st), rules.blocks)
    res = np.clip(_value(b.reserve, nb), 0.0, None)
    up = np.clip(_value(b.afrr_up, nb), 0.0, None)
    down = np.clip(_value(b.afrr_down, nb), 0.0, None)
    imp = np.clip(_value(b.imports, (len(dm), STEPS)), 0.0, dm.p_import_max_kw)
    gen = np.clip(_value(b.generation, (len(pv), STEPS)), 0.0, pv.p_avail_kw)
    objective = float(b.problem.value) if b.problem.value is not None else float("nan")
    return TableSolution(status, dis - ch, res, up, down, -imp, gen, objective, s)


def solve_tables(
    tables: Tables,
    prices: MarketPrices,
    rules: MarketRules,
    *,
    time_limit_s: float = 30.0,
    mip_rel_gap: float = 1e-4,
    integral: bool = True,
    milp_max_devices: int = 20,
) -> TableSolution:
    """Build and solve the model of ``tables`` under ``time_limit_s`` [s] of solver time.

    Integral market rules: up to ``milp_max_devices`` rows, HiGHS branch-and-bound on the MILP
    (``optimal``, or ``feasible`` with an incumbent at the time limit; a solution whose batteries
    do not hold their reserves on net power is re-solved by :func:`_polish`). Larger problems: the
    continuous LP, then whole lots by the repair of :mod:`control_plane.optimizer.lots`
    (``rounded``). If the repair is infeasible or out of time, the LP solution with whole FCR
    and aFRR lots is returned as ``unrounded`` (its energy position is then not in whole lots, which
    :func:`~control_plane.optimizer.check.check_plan` reports).
    """
    t0 = time.perf_counter()
    n_rows = len(tables.storage) + len(tables.demand) + len(tables.pv)
    needs_lots = rules.energy_increment_kw > 0 or rules.reserve_increment_kw > 0
    if integral and needs_lots and n_rows <= milp_max_devices:
        b = build(tables, prices, rules, integral=True)
        status, _ = _run(b, time_limit_s, mip_rel_gap)
        sol = _extract(b, tables, rules, status, 0.0)
        if status in ("optimal", "feasible") and not _held(tables, sol, rules):
            sol = _polish(tables, sol, prices, rules, REPAIR_SHARE * time_limit_s) or sol
        return replace(sol, solve_s=time.perf_counter() - t0)
    b = build(tables, prices, rules, integral=False)
    status, _ = _run(b, time_limit_s, mip_rel_gap)
    lp = _extract(b, tables, rules, status, time.perf_counter() - t0)
    if not integral or not needs_lots or status not in ("optimal", "feasible"):
        return lp
    lp = floor_reserve(lp, rules.reserve_increment_kw, balancing_rows(tables))
    if rules.energy_increment_kw <= 0:
        return replace(lp, status="rounded")
    fixed = _repair(tables, lp, prices, rules, time_limit_s - (time.perf_counter() - t0),
                    time_limit_s, mip_rel_gap)  # fmt: skip
    if fixed is not None:
        return replace(fixed, status="rounded", solve_s=time.perf_counter() - t0)
    return replace(lp, status="unrounded", solve_s=time.perf_counter() - t0)


def _repair(
    tables: Tables,
    lp: TableSolution,
    prices: MarketPrices,
    rules: MarketRules,
    left_s: float,
    time_limit_s: float,
    mip_rel_gap: float,
) -> TableSolution | None:
    """``lp`` in whole energy lots by the repair of :mod:`.lots`, or None. Attempts, each
    accepted only if its storage rows hold their reserves on net power (if need be after
    :func:`reallocate_reserves`): the repair MILP with exclusive charge/discharge, without,
    and last a continuous re-solve of the balancing rows towards the LP position rounded to
    lots with the rounding error carried forward (:func:`lot_path`)."""
    t0 = time.perf_counter()
    sub, rows, fixed_kw, reserve, afrr = repair_tables(tables, lp, rules)
    path = lot_path(lp.storage_kw.sum(0) + lp.demand_kw.sum(0) + lp.pv_kw.sum(0),
                    rules.energy_increment_kw)  # fmt: skip
    for attempt in ("exclusive", "overlap", "path"):
        left = left_s - (time.perf_counter() - t0)
        if left <= 0:
            break
        if attempt == "path":
            b = build(sub, prices, rules, integral=False, fixed_lots=(path - fixed_kw, reserve),
                      fixed_afrr=afrr)  # fmt: skip
        else:
            b = build(sub, prices, rules, fixed_lots=(None, reserve), energy_offset_kw=fixed_kw,
                      exclusive=attempt == "exclusive", fixed_afrr=afrr)  # fmt: skip
        cap = min(left, REPAIR_TIME_S, REPAIR_SHARE * time_limit_s)
        status, _ = _run(b, cap, max(mip_rel_gap, REPAIR_GAP))
        if status not in ("optimal", "feasible"):
            continue
        fix: TableSolution | None = _extract(b, sub, rules, status, 0.0)
        if fix is not None and not _held(sub, fix, rules):
            fix = reallocate_reserves(sub, fix, rules)
        if fix is not None and _held(sub, fix, rules):
            return merge(lp, rows, fix)
    return None


def _polish(
    tables: Tables,
    sol: TableSolution,
    prices: MarketPrices,
    rules: MarketRules,
    time_limit_s: float,
) -> TableSolution | None:
    """A MILP solution whose batteries do not hold their reserves on net power (it burned
    energy through simultaneous charge and discharge) re-solved with its lots fixed: first as
    an LP (an optimal vertex burns energy only where nothing else is feasible), then with a
    binary per storage row and step that forbids the overlap; last the whole MILP again with
    those binaries (other lots). Each attempt under ``time_limit_s``; None if none holds."""
    net = sol.storage_kw.sum(0) + sol.demand_kw.sum(0) + sol.pv_kw.sum(0)
    energy = lots(net, rules.energy_increment_kw) if rules.energy_increment_kw > 0 else None
    totals = (sol.afrr_up_kw.sum(0), sol.afrr_down_kw.sum(0))
    fixed = (energy, sol.reserve_kw.sum(0))
    for exclusive in (False, True):
        b = build(tables, prices, rules, integral=exclusive, fixed_lots=fixed,
                  fixed_afrr=totals, exclusive=exclusive)  # fmt: skip
        status, _ = _run(b, time_limit_s, REPAIR_GAP)
        if status in ("optimal", "feasible"):
            fix = replace(_extract(b, tables, rules, status, 0.0), status=sol.status)
            if _held(tables, fix, rules):
                return fix
    # Those lots need the burned energy: choose the lots again, without overlap.
    b = build(tables, prices, rules, integral=True, exclusive=True)
    status, _ = _run(b, time_limit_s, REPAIR_GAP)
    if status in ("optimal", "feasible"):
        fix = _extract(b, tables, rules, status, 0.0)
        if _held(tables, fix, rules):
            return fix
    return None


def _held(tables: Tables, sol: TableSolution, rules: MarketRules) -> bool:
    return storage_ok(
        tables, sol.storage_kw, sol.reserve_kw, rules, sol.afrr_up_kw, sol.afrr_down_kw
    )


def diagnose(
    tables: Tables, prices: MarketPrices, rules: MarketRules, *, time_limit_s: float = 10.0
) -> tuple[Diagnosis, ...]:
    """Which constraint groups make ``tables`` infeasible.

    First the continuous relaxation: feasible means only the integral market rules bind.
    Otherwise every relaxable group (final state of charge, demand energy by deadline, site and
    feeder import/export limits, demand-response caps: ``demand_response.import_max`` with the
    subject ``demand_response <event_id>``) gets a nonnegative slack and the total slack is
    minimized; the
    groups, assets and sites that need slack are reported with the largest amount needed.
    """
    relaxed = solve_tables(tables, prices, rules, time_limit_s=time_limit_s, integral=False)
    if relaxed.status in ("optimal", "feasible", "rounded"):
        return (
            Diagnosis(
                "market.integral_rules",
                ("portfolio",),
                f"feasible only without whole lots: energy in {rules.energy_increment_kw:g} kW "
                f"and FCR/aFRR in {rules.reserve_increment_kw:g} kW increments cannot be met",
            ),
        )
    b = build(tables, prices, rules, elastic=True)
    status, _ = _run(b, time_limit_s, 1e-4)
    if status not in ("optimal", "feasible"):
        return (Diagnosis("solver.no_answer", (), f"elastic diagnosis ended with {status}"),)
    out: list[Diagnosis] = []
    for name, (slack, ids) in b.slacks.items():
        val = np.asarray(slack.value, dtype=np.float64)
        per_row = val.reshape(len(ids), -1).max(axis=1) if val.size else val
        rows = np.flatnonzero(per_row > 1e-5)
        if not len(rows):
            continue
        label = name
        if name == "demand.energy_by_deadline":
            kinds = {tables.demand.kinds[i] for i in rows}
            label = "ev.target_by_deadline" if kinds == {"ev"} else name
        subjects = tuple(dict.fromkeys(ids[i] for i in rows))  # a cap's id repeats per step
        out.append(
            Diagnosis(
                label,
                subjects,
                f"{label} cannot hold for {', '.join(subjects[:5])}"
                f"{' ...' if len(subjects) > 5 else ''}: needs up to {per_row.max():.3f} of slack",
                float(per_row.max()),
            )
        )
    return tuple(out) or (Diagnosis("unknown", (), "infeasible, no group needed slack"),)


def to_plan(fleet: FleetState, sol: TableSolution, wall_s: float) -> Plan:
    """Rows of ``sol`` in fleet order (batteries, EVs, loads, PVs) as a :class:`Plan`."""
    p = np.vstack([sol.storage_kw, sol.demand_kw, sol.pv_kw]).reshape(len(fleet), STEPS)
    return Plan(
        asset_ids=fleet.asset_ids,
        p_kw=p,
        reserve_kw=sol.reserve_kw,
        afrr_up_kw=sol.afrr_up_kw,
        afrr_down_kw=sol.afrr_down_kw,
        status=sol.status,
        bids=True,
        objective_eur=sol.objective_eur,
        solve_s=sol.solve_s,
        wall_s=wall_s,
    )


def schedule(
    fleet: FleetState,
    prices: MarketPrices,
    rules: MarketRules | None = None,
    *,
    time_limit_s: float = 30.0,
    mip_rel_gap: float = 1e-4,
) -> Plan:
    """The exact per-asset day-ahead plan of ``fleet``, or the diagnosed fallback plan."""
    t0 = time.perf_counter()
    rules = rules or MarketRules()
    tables = build_tables(fleet)
    findings = validate(tables)
    if findings:
        diag = tuple(Diagnosis(f.constraint, (f.asset_id,), f.message) for f in findings)
        return _fallback(fleet, rules, diag, t0)
    sol = solve_tables(tables, prices, rules, time_limit_s=time_limit_s, mip_rel_gap=mip_rel_gap)
    if sol.status == "infeasible":
        return _fallback(fleet, rules, diagnose(tables, prices, rules), t0)
    if sol.status == "no_solution":
        why = Diagnosis(
            "solver.time_limit",
            (),
            f"no solution within the time limit of {time_limit_s:g} s",
        )
        return _fallback(fleet, rules, (why,), t0)
    return to_plan(fleet, sol, time.perf_counter() - t0)


def _fallback(
    fleet: FleetState, rules: MarketRules, diag: tuple[Diagnosis, ...], t0: float
) -> Plan:
    plan = fallback_plan(fleet, rules.blocks, diag)
    return Plan(
        plan.asset_ids,
        plan.p_kw,
        plan.reserve_kw,
        plan.status,
        plan.bids,
        diagnosis=diag,
        wall_s=time.perf_counter() - t0,
    )
