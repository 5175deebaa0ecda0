"""The one place where the optimizer's :class:`FleetState` is built: from gated state only.

Parameters come from the asset registry; the *current* state (a battery's state of
charge, whether a vehicle is plugged in, its state of charge and its owner's target)
comes from :class:`control_plane.state.GatedStateView`, i.e. only from measurements
the false-data-injection gate accepted. An asset is left out of the plan, with the
reason, when its gated state is missing, older than ``max_age_ms``, or when the gate
recently quarantined one of its measurements (``is_suspect``): the optimizer never
schedules, and the market gateway never sells, flexibility resting on a lie.

Owners' constraints that telemetry does not carry (an EV's deadline and departure,
PV forecasts, site envelopes) are passed in explicitly.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from control_plane.assets.model import AssetKind
from control_plane.assets.registry import RegistrySnapshot
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
from control_plane.state import GatedStateView, GatedValue
from gridfort.v1 import telemetry_pb2 as tpb

Q = tpb.Quantity

SUSPECT = "suspect: the FDI gate recently quarantined one of its measurements"

#: Gated state older than this is not planned on [ms].
DEFAULT_MAX_AGE_MS = 15 * 60_000


@dataclass(frozen=True, slots=True)
class EvOwnerConstraint:
    """An EV owner's wish: ``deadline_step`` (e.g. 28 = 07:00) and ``departure_step`` [step]."""

    deadline_step: int = 28
    departure_step: int = 32


@dataclass(frozen=True, slots=True)
class LoadWindow:
    """A flexible load owner's window: its daily energy is drawn within steps
    ``[start_step, end_step)`` of the horizon."""

    start_step: int
    end_step: int
    share: float = 1.0  # of the daily energy still to draw (a window already under way)

    @property
    def hours(self) -> float:
        return (self.end_step - self.start_step) * DT_H


@dataclass(frozen=True, slots=True)
class Exclusion:
    asset_id: str
    reason: str


@dataclass(frozen=True, slots=True)
class GatedFleet:
    """The optimizer's input and the assets left out of it, with reasons."""

    fleet: FleetState
    excluded: tuple[Exclusion, ...] = field(default=())


def fleet_from_gated_state(
    registry: RegistrySnapshot,
    state: GatedStateView,
    *,
    now_ms: int,
    max_age_ms: int = DEFAULT_MAX_AGE_MS,
    ev_owner: Mapping[str, EvOwnerConstraint] | None = None,
    pv_forecast_kw: Mapping[str, tuple[float, ...]] | None = None,
    load_window: Mapping[str, LoadWindow] | None = None,
    sites: tuple[SiteLimits, ...] = (),
    feeders: tuple[FeederLimit, ...] = (),
) -> GatedFleet:
    """Build the optimizer's fleet from the registry and gated state (see the module docstring)."""
    ev_owner = ev_owner or {}
    pv_forecast_kw = pv_forecast_kw or {}
    load_window = load_window or {}
    batteries: list[Battery] = []
    evs: list[EvSession] = []
    pvs: list[Pv] = []
    loads: list[FlexibleLoad] = []
    excluded: list[Exclusion] = []

    def fresh(asset_id: str, quantity: int) -> GatedValue | str:
        if state.is_suspect(asset_id, now_ms):
            return SUSPECT
        v = state.get(asset_id, quantity)
        if v is None:
            return f"no gated {_name(quantity)} yet"
        if now_ms - v.ts_ms > max_age_ms:
            return f"gated {_name(quantity)} is {(now_ms - v.ts_ms) / 60_000:.0f} min old"
        return v

    for asset in sorted(registry.assets.values(), key=lambda a: a.asset_id):
        aid = asset.asset_id
        if asset.kind is AssetKind.BATTERY:
            soc = fresh(aid, Q.QUANTITY_STATE_OF_CHARGE)
            if isinstance(soc, str):
                excluded.append(Exclusion(aid, soc))
                continue
            b = Battery(aid, asset.site_id, asset.e_kwh, asset.rated_p_kw, 10.0)
            batteries.append(
                Battery(
                    aid,
                    asset.site_id,
                    asset.e_kwh,
                    asset.rated_p_kw,
                    min(max(soc.value, b.soc_min_pct), b.soc_max_pct),
                )
            )
        elif asset.kind is AssetKind.EV_CHARGER:
            values = [
                fresh(aid, q)
                for q in (
                    Q.QUANTITY_EV_CONNECTED,
                    Q.QUANTITY_STATE_OF_CHARGE,
                    Q.QUANTITY_EV_TARGET_SOC,
                )
            ]
            problem = next((v for v in values if isinstance(v, str)), None)
            if problem is not None:
                excluded.append(Exclusion(aid, problem))
                continue
            connected, soc, target = (v for v in values if isinstance(v, GatedValue))
            if connected.value < 0.5:
                excluded.append(Exclusion(aid, "no vehicle plugged in"))
                continue
            owner = ev_owner.get(aid, EvOwnerConstraint())
            evs.append(
                EvSession(
                    aid,
                    asset.site_id,
                    battery_kwh=asset.e_kwh,
                    p_max_kw=asset.rated_p_kw,
                    arrival_step=0,
                    departure_step=min(owner.departure_step, STEPS),
                    soc_init_pct=soc.value,
                    target_soc_pct=max(min(target.value, 100.0), 0.0),
                    deadline_step=owner.deadline_step,
                )
            )
        elif asset.kind is AssetKind.PV_INVERTER:
            forecast = pv_forecast_kw.get(aid)
            if forecast is None:
                excluded.append(Exclusion(aid, "no PV forecast"))
                continue
            if state.is_suspect(aid, now_ms):
                excluded.append(
                    Exclusion(
                        aid, "suspect: the FDI gate recently quarantined one of its measurements"
                    )
                )
                continue
            pvs.append(Pv(aid, asset.site_id, tuple(forecast)))
        elif asset.kind is AssetKind.FLEXIBLE_LOAD:
            window = load_window.get(aid)
            if window is None:
                excluded.append(Exclusion(aid, "no owner's window for its energy"))
                continue
            power = fresh(aid, Q.QUANTITY_ACTIVE_POWER)  # online and metered, not suspect
            if isinstance(power, str):
                excluded.append(Exclusion(aid, power))
                continue
            loads.append(
                FlexibleLoad(
                    aid,
                    asset.site_id,
                    energy_kwh=min(asset.e_kwh * window.share, asset.rated_p_kw * window.hours),
                    p_max_kw=asset.rated_p_kw,
                    window_start_step=window.start_step,
                    window_end_step=window.end_step,
                )
            )
    fleet = FleetState(
        batteries=tuple(batteries),
        evs=tuple(evs),
        pvs=tuple(pvs),
        loads=tuple(loads),
        sites=sites,
        feeders=feeders,
        as_of_ts_ms=now_ms,
    )
    return GatedFleet(fleet, tuple(excluded))


def _name(quantity: int) -> str:
    return tpb.Quantity.Name(tpb.Quantity.ValueType(quantity)).removeprefix("QUANTITY_").lower()
