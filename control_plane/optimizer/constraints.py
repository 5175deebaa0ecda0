"""Named constraint tables, built once from the typed assets and validated before any solver.

Like FlexMeasures' device constraints: every device becomes rows of numbers per step, in
the sign convention and units of the model (power [kW], energy [kWh], grid side for demand),
so the model builder (:mod:`control_plane.optimizer.model`) only reads arrays. Three kinds:

* :class:`StorageTable` — batteries: charge/discharge bounds, stored-energy bounds, efficiencies.
* :class:`DemandTable` — EV sessions and flexible loads: import bounds per step (0 when unplugged
  or outside the window), cumulative grid-side energy required by a deadline and a cap.
* :class:`PvTable` — PV: available power per step, curtailment cost per step.

Coupling limits (sites, feeders) are :class:`GroupLimit` rows over devices; so is each
demand-response cap (named ``demand_response <event_id>``, an import limit only in the steps
the event covers, ``inf`` elsewhere and for export). :func:`validate`
diagnoses owner constraints that no schedule can meet (an EV target beyond what the charger
can deliver before the deadline, a final state of charge out of reach) with a precise message.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from numpy.typing import NDArray

from control_plane.optimizer.assets import DT_H, STEPS, FleetState

FloatArray = NDArray[np.float64]
IntArray = NDArray[np.int64]
TOL = 1e-6
#: Name prefix of the :class:`GroupLimit` of a demand-response cap.
DR_PREFIX = "demand_response "


@dataclass(slots=True)
class StorageTable:
    """n storage devices. Arrays (n,) or (n, STEPS); energies [kWh], powers [kW] (>= 0)."""

    ids: list[str]
    p_discharge_max_kw: FloatArray
    p_charge_max_kw: FloatArray
    e_init_kwh: FloatArray
    e_min_kwh: FloatArray
    e_max_kwh: FloatArray
    e_final_min_kwh: FloatArray
    eta_charge: FloatArray
    eta_discharge: FloatArray
    degradation_eur_per_kwh: FloatArray

    def __len__(self) -> int:
        return len(self.ids)


@dataclass(slots=True)
class DemandTable:
    """n shiftable demands, grid side: import bound ``p_import_max_kw`` (n, STEPS) [kW], at least
    ``e_required_kwh`` imported in steps ``[0, deadline_step)``, at most ``e_max_kwh`` in total."""

    ids: list[str]
    kinds: list[str]
    p_import_max_kw: FloatArray
    e_required_kwh: FloatArray
    deadline_step: IntArray
    e_max_kwh: FloatArray

    def __len__(self) -> int:
        return len(self.ids)


@dataclass(slots=True)
class PvTable:
    """n PV devices: available power ``p_avail_kw`` (n, STEPS) [kW], curtailment cost of energy
    below ``forecast_kw`` [EUR/kWh] per step."""

    ids: list[str]
    p_avail_kw: FloatArray
    forecast_kw: FloatArray
    curtailment_eur_per_kwh: FloatArray

    def __len__(self) -> int:
        return len(self.ids)


@dataclass(slots=True)
class GroupLimit:
    """A net-power limit on a group of devices (row indices into each table) [kW] per step;
    ``inf`` means no limit (only demand-response caps, see :data:`DR_PREFIX`, use it)."""

    name: str
    storage_rows: IntArray
    demand_rows: IntArray
    pv_rows: IntArray
    import_max_kw: FloatArray
    export_max_kw: FloatArray


@dataclass(slots=True)
class Tables:
    """All constraint tables of one scheduling problem; ``sites`` group devices per site for
    self-consumption (empty for aggregated problems)."""

    storage: StorageTable
    demand: DemandTable
    pv: PvTable
    limits: list[GroupLimit] = field(default_factory=list)
    sites: list[GroupLimit] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Finding:
    """A constraint no schedule can satisfy: which asset, which named constraint, and why."""

    asset_id: str
    constraint: str
    message: str


def _rows(n: int) -> FloatArray:
    return np.zeros((n, STEPS))


def build_tables(fleet: FleetState) -> Tables:
    """Constraint tables of every asset of ``fleet`` plus one limit per site and feeder."""
    b = fleet.batteries
    e = np.array([x.e_kwh for x in b], dtype=np.float64)
    pmax = np.array([x.p_max_kw for x in b], dtype=np.float64)
    storage = StorageTable(
        ids=[x.asset_id for x in b],
        p_discharge_max_kw=np.repeat(pmax[:, None], STEPS, axis=1),
        p_charge_max_kw=np.repeat(pmax[:, None], STEPS, axis=1),
        e_init_kwh=e * np.array([x.soc_init_pct for x in b]) / 100.0,
        e_min_kwh=e * np.array([x.soc_min_pct for x in b]) / 100.0,
        e_max_kwh=e * np.array([x.soc_max_pct for x in b]) / 100.0,
        e_final_min_kwh=e * np.array([x.final_pct for x in b]) / 100.0,
        eta_charge=np.array([x.eta_charge for x in b], dtype=np.float64),
        eta_discharge=np.array([x.eta_discharge for x in b], dtype=np.float64),
        degradation_eur_per_kwh=np.array([x.degradation_eur_per_kwh for x in b], np.float64),
    )
    n_d = len(fleet.evs) + len(fleet.loads)
    p_imp = _rows(n_d)
    req = np.zeros(n_d)
    cap = np.zeros(n_d)
    deadline = np.zeros(n_d, dtype=np.int64)
    for i, ev in enumerate(fleet.evs):
        p_imp[i, ev.arrival_step : ev.departure_step] = ev.p_max_kw
        req[i], cap[i], deadline[i] = ev.e_required_kwh, ev.e_room_kwh, ev.deadline_step
    for j, ld in enumerate(fleet.loads, start=len(fleet.evs)):
        p_imp[j, ld.window_start_step : ld.window_end_step] = ld.p_max_kw
        req[j], cap[j], deadline[j] = ld.energy_kwh, ld.energy_kwh, ld.window_end_step
    demand = DemandTable(
        ids=[x.asset_id for x in fleet.evs] + [x.asset_id for x in fleet.loads],
        kinds=["ev"] * len(fleet.evs) + ["load"] * len(fleet.loads),
        p_import_max_kw=p_imp,
        e_required_kwh=req,
        deadline_step=deadline,
        e_max_kwh=cap,
    )
    fc = np.array([x.forecast_kw for x in fleet.pvs], dtype=np.float64).reshape(-1, STEPS)
    curt = np.array([x.curtailment_eur_per_kwh for x in fleet.pvs], dtype=np.float64)
    pv = PvTable(
        ids=[x.asset_id for x in fleet.pvs],
        p_avail_kw=fc.copy(),
        forecast_kw=fc,
        curtailment_eur_per_kwh=np.repeat(curt[:, None], STEPS, axis=1),
    )
    tables = Tables(storage, demand, pv)
    members = _site_members(fleet)
    empty = np.zeros(0, dtype=np.int64)
    for site_id, (s, d, p) in members.items():
        tables.sites.append(GroupLimit(f"site {site_id}", s, d, p, _rows(1)[0], _rows(1)[0]))
    for lim in fleet.sites:
        s, d, p = members.get(lim.site_id, (empty, empty, empty))
        tables.limits.append(
            GroupLimit(
                f"site {lim.site_id}",
                s,
                d,
                p,
                np.asarray(lim.import_max_kw, dtype=np.float64),
                np.asarray(lim.export_max_kw, dtype=np.float64),
            )
        )
    for fd in fleet.feeders:
        parts = [members[s] for s in sorted(fd.site_ids) if s in members]
        rows = [np.concatenate([x[k] for x in parts]) if parts else empty for k in range(3)]
        tables.limits.append(
            GroupLimit(
                f"feeder {fd.feeder_id}",
                rows[0],
                rows[1],
                rows[2],
                np.full(STEPS, fd.import_max_kw),
                np.full(STEPS, fd.export_max_kw),
            )
        )
    for dr in fleet.demand_response:
        parts = [m for s, m in sorted(members.items()) if not dr.site_ids or s in dr.site_ids]
        rows = [np.concatenate([x[k] for x in parts]) if parts else empty for k in range(3)]
        cap = np.full(STEPS, np.inf)
        cap[dr.start_step : dr.end_step] = dr.import_max_kw
        tables.limits.append(
            GroupLimit(
                DR_PREFIX + dr.event_id, rows[0], rows[1], rows[2], cap, np.full(STEPS, np.inf)
            )
        )
    return tables


def _site_members(fleet: FleetState) -> dict[str, tuple[IntArray, IntArray, IntArray]]:
    acc: dict[str, tuple[list[int], list[int], list[int]]] = {}
    for i, bat in enumerate(fleet.batteries):
        acc.setdefault(bat.site_id, ([], [], []))[0].append(i)
    demand_sites = [x.site_id for x in fleet.evs] + [x.site_id for x in fleet.loads]
    for i, site in enumerate(demand_sites):
        acc.setdefault(site, ([], [], []))[1].append(i)
    for i, pv in enumerate(fleet.pvs):
        acc.setdefault(pv.site_id, ([], [], []))[2].append(i)
    return {k: tuple(np.asarray(x, dtype=np.int64) for x in v) for k, v in acc.items()}  # type: ignore[misc]


def validate(tables: Tables) -> list[Finding]:
    """Owner and grid constraints that no schedule can satisfy, each named and explained."""
    out: list[Finding] = []
    st = tables.storage
    reach = st.e_init_kwh + (st.p_charge_max_kw * DT_H).sum(axis=1) * st.eta_charge
    reach = np.minimum(reach, st.e_max_kwh)
    for i in np.flatnonzero(reach + TOL < st.e_final_min_kwh):
        out.append(
            Finding(
                st.ids[i],
                "battery.soc_final_min",
                f"needs {st.e_final_min_kwh[i]:.3f} kWh stored at the end of the day but can "
                f"reach at most {reach[i]:.3f} kWh",
            )
        )
    dm = tables.demand
    if len(dm):
        mask = np.arange(STEPS)[None, :] < dm.deadline_step[:, None]
        deliverable = (dm.p_import_max_kw * mask).sum(axis=1) * DT_H
        for i in np.flatnonzero(deliverable + TOL < dm.e_required_kwh):
            what = "ev.target_by_deadline" if dm.kinds[i] == "ev" else "load.energy_in_window"
            out.append(
                Finding(
                    dm.ids[i],
                    what,
                    f"needs {dm.e_required_kwh[i]:.3f} kWh from the grid before step "
                    f"{dm.deadline_step[i]} ({_clock(int(dm.deadline_step[i]))}) but the "
                    f"charger can deliver at most {deliverable[i]:.3f} kWh while connected",
                )
            )
        for i in np.flatnonzero(dm.e_max_kwh + TOL < dm.e_required_kwh):
            out.append(
                Finding(
                    dm.ids[i],
                    f"{dm.kinds[i]}.capacity",
                    f"required {dm.e_required_kwh[i]:.3f} kWh exceeds the room of "
                    f"{dm.e_max_kwh[i]:.3f} kWh",
                )
            )
    out += _demand_response_findings(tables)
    return out


def _demand_response_findings(tables: Tables) -> list[Finding]:
    """Demand-response caps below the least net import the group could reach in a step
    (every battery discharging and every PV generating at full power, no demand)."""
    out: list[Finding] = []
    st, pv = tables.storage, tables.pv
    for g in tables.limits:
        if not g.name.startswith(DR_PREFIX):
            continue
        least = -(st.p_discharge_max_kw[g.storage_rows].sum(0) + pv.p_avail_kw[g.pv_rows].sum(0))
        short = np.flatnonzero(g.import_max_kw + TOL < least)
        if len(short):
            t = int(short[0])
            out.append(
                Finding(
                    g.name,
                    "demand_response.import_max",
                    f"caps net import at {g.import_max_kw[t]:.3f} kW in step {t} ({_clock(t)}) "
                    f"but the group's assets can bring it down to {least[t]:.3f} kW at best "
                    f"({len(short)} step(s) out of reach)",
                )
            )
    return out


def _clock(step: int) -> str:
    minutes = int(step * DT_H * 60)
    return f"{minutes // 60:02d}:{minutes % 60:02d}"


def device_frame(tables: Tables, asset_id: str) -> pd.DataFrame:
    """One device's constraint table per step, FlexMeasures style: power bounds [kW] (sign
    convention: + export) and stored/cumulative energy bounds after each step [kWh]."""
    idx = pd.RangeIndex(STEPS, name="step")
    st, dm, pv = tables.storage, tables.demand, tables.pv
    if asset_id in st.ids:
        i = st.ids.index(asset_id)
        e_min = np.full(STEPS, st.e_min_kwh[i])
        e_min[-1] = max(e_min[-1], st.e_final_min_kwh[i])
        return pd.DataFrame(
            {
                "p_min_kw": -st.p_charge_max_kw[i],
                "p_max_kw": st.p_discharge_max_kw[i],
                "e_min_kwh": e_min,
                "e_max_kwh": np.full(STEPS, st.e_max_kwh[i]),
            },
            index=idx,
        )
    if asset_id in dm.ids:
        i = dm.ids.index(asset_id)
        e_min = np.where(np.arange(STEPS) >= dm.deadline_step[i] - 1, dm.e_required_kwh[i], 0.0)
        return pd.DataFrame(
            {
                "p_min_kw": -dm.p_import_max_kw[i],
                "p_max_kw": np.zeros(STEPS),
                "e_min_kwh": e_min,
                "e_max_kwh": np.full(STEPS, dm.e_max_kwh[i]),
            },
            index=idx,
        )
    i = pv.ids.index(asset_id)
    return pd.DataFrame(
        {
            "p_min_kw": np.zeros(STEPS),
            "p_max_kw": pv.p_avail_kw[i],
            "e_min_kwh": np.full(STEPS, -np.inf),
            "e_max_kwh": np.full(STEPS, np.inf),
        },
        index=idx,
    )
