"""Typed flexibility models of the assets the optimizer schedules, validated on construction.

Units are in the field names: ``p_*_kw`` [kW], ``e_*_kwh`` [kWh], ``*_pct`` [%] of the
asset's energy capacity, ``*_eur_per_kwh`` [EUR/kWh], ``*_step`` an index of a quarter-hour
of the day-ahead horizon (0 = 00:00, 28 = 07:00, 96 = end of day). Sign convention: power is
positive when the asset exports (discharging, generating), negative when it imports.

Every dataclass checks itself in ``__post_init__`` and raises :class:`OptimizerInputError`
with a message that names the asset and the offending field, so an invalid model never
reaches a constraint table or a solver.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from control_plane.assets.model import ID_PATTERN
from security.refusals import GridfortError

STEPS = 96  #: quarter-hours in the day-ahead horizon
DT_H = 0.25  #: length of one step [h]
#: Demand-response event ids: OpenADR event ids are free text; the optimizer takes a safe subset.
EVENT_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")


class OptimizerInputError(GridfortError):
    """An optimizer input is invalid; the message names the asset and the field."""


def _ident(kind: str, value: str, name: str) -> None:
    if not ID_PATTERN.match(value):
        raise OptimizerInputError(f"{kind} {value!r}: {name} must match {ID_PATTERN.pattern}")


def _finite(who: str, name: str, value: float, lo: float, hi: float) -> None:
    if not (math.isfinite(value) and lo <= value <= hi):
        raise OptimizerInputError(f"{who}: {name} = {value!r} must be within [{lo}, {hi}]")


def _step(who: str, name: str, value: int, lo: int = 0, hi: int = STEPS) -> None:
    if not (isinstance(value, int) and lo <= value <= hi):
        raise OptimizerInputError(f"{who}: {name} = {value!r} must be an integer in [{lo}, {hi}]")


def _profile(who: str, name: str, values: Sequence[float], lo: float, hi: float) -> None:
    if len(values) != STEPS:
        raise OptimizerInputError(f"{who}: {name} needs {STEPS} values, got {len(values)}")
    for t, v in enumerate(values):
        if not (math.isfinite(v) and lo <= v <= hi):
            raise OptimizerInputError(f"{who}: {name}[{t}] = {v!r} must be within [{lo}, {hi}]")


@dataclass(frozen=True, slots=True)
class Battery:
    """A stationary battery. ``e_kwh`` capacity [kWh], ``p_max_kw`` both directions [kW].

    ``soc_init_pct`` is the current state of charge [%]; ``soc_final_min_pct`` the least state
    of charge at the end of the day (``None``: the initial one, so the day is energy-neutral).
    ``eta_charge``/``eta_discharge`` are one-way efficiencies [-]; degradation is charged per
    kWh of AC throughput in either direction [EUR/kWh].
    """

    asset_id: str
    site_id: str
    e_kwh: float
    p_max_kw: float
    soc_init_pct: float
    soc_min_pct: float = 10.0
    soc_max_pct: float = 90.0
    soc_final_min_pct: float | None = None
    eta_charge: float = 0.95
    eta_discharge: float = 0.95
    degradation_eur_per_kwh: float = 0.02

    def __post_init__(self) -> None:
        who = f"battery {self.asset_id}"
        _ident("battery", self.asset_id, "asset_id")
        _ident("battery", self.site_id, "site_id")
        _finite(who, "e_kwh", self.e_kwh, 1e-3, 1e6)
        _finite(who, "p_max_kw", self.p_max_kw, 1e-3, 1e5)
        _finite(who, "soc_min_pct", self.soc_min_pct, 0.0, 100.0)
        _finite(who, "soc_max_pct", self.soc_max_pct, self.soc_min_pct, 100.0)
        _finite(who, "soc_init_pct", self.soc_init_pct, self.soc_min_pct, self.soc_max_pct)
        if self.soc_final_min_pct is not None:
            _finite(
                who, "soc_final_min_pct", self.soc_final_min_pct, self.soc_min_pct, self.soc_max_pct
            )
        _finite(who, "eta_charge", self.eta_charge, 0.5, 1.0)
        _finite(who, "eta_discharge", self.eta_discharge, 0.5, 1.0)
        _finite(who, "degradation_eur_per_kwh", self.degradation_eur_per_kwh, 0.0, 10.0)

    @property
    def final_pct(self) -> float:
        """The least state of charge at the end of the horizon [%]."""
        return self.soc_init_pct if self.soc_final_min_pct is None else self.soc_final_min_pct


@dataclass(frozen=True, slots=True)
class EvSession:
    """An EV plugged in from ``arrival_step`` to ``departure_step`` (exclusive) [step].

    The owner asks for ``target_soc_pct`` [%] of ``battery_kwh`` [kWh] by ``deadline_step``
    (e.g. 80 % by 07:00 = step 28), which lies within the session. The charger imports up to
    ``p_max_kw`` [kW] with efficiency ``eta_charge`` [-] (grid -> battery); it never exports.
    """

    asset_id: str
    site_id: str
    battery_kwh: float
    p_max_kw: float
    arrival_step: int
    departure_step: int
    soc_init_pct: float
    target_soc_pct: float
    deadline_step: int
    soc_max_pct: float = 100.0
    eta_charge: float = 0.92

    def __post_init__(self) -> None:
        who = f"ev {self.asset_id}"
        _ident("ev", self.asset_id, "asset_id")
        _ident("ev", self.site_id, "site_id")
        _finite(who, "battery_kwh", self.battery_kwh, 1e-3, 1e4)
        _finite(who, "p_max_kw", self.p_max_kw, 1e-3, 1e4)
        _step(who, "arrival_step", self.arrival_step, 0, STEPS - 1)
        _step(who, "departure_step", self.departure_step, self.arrival_step + 1, STEPS)
        _step(who, "deadline_step", self.deadline_step, self.arrival_step, self.departure_step)
        _finite(who, "soc_max_pct", self.soc_max_pct, 0.0, 100.0)
        _finite(who, "soc_init_pct", self.soc_init_pct, 0.0, self.soc_max_pct)
        _finite(who, "target_soc_pct", self.target_soc_pct, 0.0, self.soc_max_pct)
        _finite(who, "eta_charge", self.eta_charge, 0.5, 1.0)

    @property
    def e_required_kwh(self) -> float:
        """Grid-side energy still needed to reach the target [kWh] (0 when already there)."""
        gap_pct = max(self.target_soc_pct - self.soc_init_pct, 0.0)
        return gap_pct / 100.0 * self.battery_kwh / self.eta_charge

    @property
    def e_room_kwh(self) -> float:
        """Grid-side energy the battery can still take before ``soc_max_pct`` [kWh]."""
        return (self.soc_max_pct - self.soc_init_pct) / 100.0 * self.battery_kwh / self.eta_charge


@dataclass(frozen=True, slots=True)
class Pv:
    """A PV inverter with a generation forecast ``forecast_kw`` per step [kW] (>= 0).

    It may be curtailed below the forecast at ``curtailment_eur_per_kwh`` [EUR/kWh] of energy
    not generated (lost subsidy, owner compensation).
    """

    asset_id: str
    site_id: str
    forecast_kw: tuple[float, ...]
    curtailment_eur_per_kwh: float = 0.0

    def __post_init__(self) -> None:
        who = f"pv {self.asset_id}"
        _ident("pv", self.asset_id, "asset_id")
        _ident("pv", self.site_id, "site_id")
        _profile(who, "forecast_kw", self.forecast_kw, 0.0, 1e5)
        _finite(who, "curtailment_eur_per_kwh", self.curtailment_eur_per_kwh, 0.0, 10.0)


@dataclass(frozen=True, slots=True)
class FlexibleLoad:
    """A load that must consume exactly ``energy_kwh`` [kWh] within ``[window_start_step,
    window_end_step)`` at no more than ``p_max_kw`` [kW] (heat pump, boiler, pool pump)."""

    asset_id: str
    site_id: str
    energy_kwh: float
    p_max_kw: float
    window_start_step: int
    window_end_step: int

    def __post_init__(self) -> None:
        who = f"load {self.asset_id}"
        _ident("load", self.asset_id, "asset_id")
        _ident("load", self.site_id, "site_id")
        _finite(who, "energy_kwh", self.energy_kwh, 0.0, 1e6)
        _finite(who, "p_max_kw", self.p_max_kw, 1e-3, 1e5)
        _step(who, "window_start_step", self.window_start_step, 0, STEPS - 1)
        _step(who, "window_end_step", self.window_end_step, self.window_start_step + 1, STEPS)


def _flat(value: float) -> tuple[float, ...]:
    return (float(value),) * STEPS


@dataclass(frozen=True, slots=True)
class SiteLimits:
    """The grid operator's dynamic operating envelope of one site's connection point.

    Per step [kW], both >= 0: the site's net import may not exceed ``import_max_kw[t]`` and its
    net export may not exceed ``export_max_kw[t]``. Build a static envelope with :meth:`flat`.
    """

    site_id: str
    import_max_kw: tuple[float, ...]
    export_max_kw: tuple[float, ...]

    def __post_init__(self) -> None:
        who = f"site {self.site_id}"
        _ident("site", self.site_id, "site_id")
        _profile(who, "import_max_kw", self.import_max_kw, 0.0, 1e7)
        _profile(who, "export_max_kw", self.export_max_kw, 0.0, 1e7)

    @classmethod
    def flat(cls, site_id: str, import_max_kw: float, export_max_kw: float) -> SiteLimits:
        """A static envelope: the same limits [kW] in every step."""
        return cls(site_id, _flat(import_max_kw), _flat(export_max_kw))


@dataclass(frozen=True, slots=True)
class FeederLimit:
    """A feeder or transformer shared by ``site_ids``: net import/export limits [kW]."""

    feeder_id: str
    site_ids: frozenset[str]
    import_max_kw: float
    export_max_kw: float

    def __post_init__(self) -> None:
        who = f"feeder {self.feeder_id}"
        _ident("feeder", self.feeder_id, "feeder_id")
        if not self.site_ids:
            raise OptimizerInputError(f"{who}: site_ids must not be empty")
        _finite(who, "import_max_kw", self.import_max_kw, 0.0, 1e9)
        _finite(who, "export_max_kw", self.export_max_kw, 0.0, 1e9)


@dataclass(frozen=True, slots=True)
class DemandResponse:
    """A demand-response commitment (an accepted OpenADR event) as a cap on net import.

    In step ``start_step + k`` the net import of the assets at ``site_ids`` (empty: every
    asset of the fleet) may not exceed ``import_max_kw[k]`` [kW]. Net import is minus the
    summed asset power (sign convention: + export), so a negative cap means the group must
    *export* at least that much. Steps outside ``[start_step, end_step)`` are not capped.
    Only the assets the optimizer schedules count (no inflexible site load is modelled).
    """

    event_id: str
    start_step: int
    import_max_kw: tuple[float, ...]
    site_ids: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        if not isinstance(self.event_id, str) or not EVENT_ID_PATTERN.match(self.event_id):
            raise OptimizerInputError(
                f"demand response {str(self.event_id)[:64]!r}: event_id must match "
                f"{EVENT_ID_PATTERN.pattern}"
            )
        who = f"demand response {self.event_id}"
        _step(who, "start_step", self.start_step, 0, STEPS - 1)
        n = len(self.import_max_kw)
        if not 1 <= n <= STEPS - self.start_step:
            raise OptimizerInputError(
                f"{who}: import_max_kw needs 1 to {STEPS - self.start_step} values "
                f"(start_step {self.start_step}), got {n}"
            )
        for k, v in enumerate(self.import_max_kw):
            _finite(who, f"import_max_kw[{k}]", v, -1e7, 1e7)
        for site in self.site_ids:
            if not isinstance(site, str) or not ID_PATTERN.match(site):
                raise OptimizerInputError(f"{who}: site_ids entry {site!r} is not a site id")

    @property
    def end_step(self) -> int:
        """First step after the capped window [step]."""
        return self.start_step + len(self.import_max_kw)


@dataclass(frozen=True, slots=True)
class FleetState:
    """Everything the optimizer knows about the fleet at planning time.

    This is the optimizer's only input seam for asset state: parameters come from the asset
    registry, current states of charge (``soc_init_pct``) from measurements the FDI gate
    accepted. In the running system it is built in one place,
    :func:`control_plane.optimizer.from_state.fleet_from_gated_state`, which leaves out
    suspect, stale and unknown assets; tests and benchmarks build synthetic fleets.
    ``as_of_ts_ms`` is the time [ms since epoch] of the state it was built from.
    ``demand_response`` holds accepted demand-response caps (see :class:`DemandResponse`);
    the OpenADR service supplies them (``OpenAdrService.active_constraints``).
    """

    batteries: tuple[Battery, ...] = ()
    evs: tuple[EvSession, ...] = ()
    pvs: tuple[Pv, ...] = ()
    loads: tuple[FlexibleLoad, ...] = ()
    sites: tuple[SiteLimits, ...] = ()
    feeders: tuple[FeederLimit, ...] = ()
    as_of_ts_ms: int = 0
    demand_response: tuple[DemandResponse, ...] = ()
    _ids: tuple[str, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        ids = tuple(
            [b.asset_id for b in self.batteries]
            + [e.asset_id for e in self.evs]
            + [ld.asset_id for ld in self.loads]
            + [p.asset_id for p in self.pvs]
        )
        if len(set(ids)) != len(ids):
            seen: set[str] = set()
            for i in ids:
                if i in seen:
                    raise OptimizerInputError(f"fleet: asset_id {i!r} appears twice")
                seen.add(i)
        site_ids = [s.site_id for s in self.sites]
        if len(set(site_ids)) != len(site_ids):
            raise OptimizerInputError("fleet: sites lists a site_id twice")
        events = [d.event_id for d in self.demand_response]
        if len(set(events)) != len(events):
            raise OptimizerInputError("fleet: demand_response lists an event_id twice")
        object.__setattr__(self, "_ids", ids)

    @property
    def asset_ids(self) -> tuple[str, ...]:
        """Asset ids in schedule row order: batteries, EVs, loads, PVs."""
        return self._ids

    def __len__(self) -> int:
        return len(self._ids)
