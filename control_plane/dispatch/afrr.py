"""aFRR: the capacity the plan reserved, activated on the operator's signal.

FCR and FFR are answered at the edge from the frequency it measures (armed per block,
:mod:`control_plane.dispatch.arming`). aFRR is the other path: the transmission system
operator's load-frequency controller asks the pool for more or less power, and the
control plane passes that request on to the batteries as signed setpoints, the round
trip :mod:`control_plane.dispatch.activation` is built (and benchmarked) for.

What may be activated is what the plan reserved: in the current reserve block each
battery holds ``afrr_up_kw`` (more export on call) and ``afrr_down_kw`` (less export)
with the headroom and stored energy the optimizer's checker verified for every step of
the block. A request for ``delta_kw`` (+ more export) is shared pro rata to those
reservations (:func:`~control_plane.dispatch.activation.allocate`), never beyond them: a
request larger than the reservation saturates and the shortfall is reported, never forced
onto an asset. An activation replaces the one before it (the request is the pool's
setpoint, not an increment), ``delta_kw = 0`` ends it, and it ends by itself after
``duration_s`` or with its reserve block, whichever comes first, since the next block's
reservation may differ.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from control_plane.commands.group_messages import SiteSetpoints
from control_plane.dispatch.activation import ActivationEvent, Participants, allocate, sections
from control_plane.optimizer.assets import FleetState
from control_plane.optimizer.plan import Plan

#: Offsets below this are not sent as a change [kW].
MIN_OFFSET_KW = 1e-6


@dataclass(frozen=True)
class BatteryIndex:
    """A fleet's batteries grouped by site, built once per plan: ``order`` the battery
    rows sorted by site (stable), ``site_code`` each sorted row's site as an index into
    ``sites``, ``asset_ids`` the sorted rows' ids (object array, for fancy indexing)."""

    order: npt.NDArray[np.int64]
    site_code: npt.NDArray[np.int64]
    sites: tuple[str, ...]
    asset_ids: npt.NDArray[np.object_]

    @classmethod
    def of(cls, fleet: FleetState) -> BatteryIndex:
        site_of = [b.site_id for b in fleet.batteries]
        sites = tuple(sorted(set(site_of)))
        code_of = {site: k for k, site in enumerate(sites)}
        codes = np.fromiter((code_of[x] for x in site_of), dtype=np.int64, count=len(site_of))
        order = np.argsort(codes, kind="stable").astype(np.int64)
        ids = np.empty(len(site_of), dtype=object)
        ids[:] = [b.asset_id for b in fleet.batteries]
        return cls(order, codes[order], sites, ids[order])


def reserved_participants(
    plan: Plan,
    fleet: FleetState,
    step: int,
    block: int,
    also: Collection[str] = (),
    index: BatteryIndex | None = None,
) -> Participants:
    """The batteries with aFRR reserved in ``block`` (and those in ``also``: the ones an
    earlier activation moved, to be set back), with their planned power at ``step``
    [kW, + export] as the base and their reservation per direction as the headroom [kW].
    Plan rows are in fleet order (the batteries first); with the fleet's
    :class:`BatteryIndex` (build it once per plan) this is array operations only: 100,000
    batteries in milliseconds."""
    bats = fleet.batteries
    nb = len(bats)
    if plan.afrr_up_kw.shape != plan.reserve_kw.shape or plan.afrr_down_kw.shape != (
        plan.reserve_kw.shape
    ):
        return Participants.from_rows(())
    index = index or BatteryIndex.of(fleet)
    zero = np.zeros(nb)
    up = np.clip(plan.afrr_up_kw[:, block], 0.0, None) if plan.afrr_up_kw.size else zero
    down = np.clip(plan.afrr_down_kw[:, block], 0.0, None) if plan.afrr_down_kw.size else zero
    held = (up > MIN_OFFSET_KW) | (down > MIN_OFFSET_KW)
    if also:
        held |= np.fromiter((b.asset_id in also for b in bats), dtype=bool, count=nb)
    pick = np.flatnonzero(held[index.order])  # positions in site order
    if not len(pick):
        return Participants.from_rows(())
    rows = index.order[pick]
    codes = index.site_code[pick]
    starts = np.flatnonzero(np.diff(codes, prepend=-1))
    return Participants(
        tuple(index.sites[c] for c in codes[starts].tolist()),
        np.append(starts, len(pick)).astype(np.int64),
        tuple(index.asset_ids[pick].tolist()),
        np.asarray(plan.p_kw[rows, step], dtype=np.float64),
        np.asarray(up[rows], dtype=np.float64),
        np.asarray(down[rows], dtype=np.float64),
    )


@dataclass(frozen=True, slots=True)
class AfrrActivation:
    """One activation under way: who asked, when it ends [ms], the offset per battery
    [kW, + export], what the reservation delivers of the request [kW], and the
    reservation in the requested direction [kW]."""

    event: ActivationEvent
    requested_by: str
    started_ms: int
    until_ms: int
    block_end_ms: int
    offsets_kw: Mapping[str, float]
    sites: frozenset[str]
    delivered_kw: float
    reserved_kw: float

    @property
    def shortfall_kw(self) -> float:
        return self.event.delta_kw - self.delivered_kw

    def summary(self) -> dict[str, Any]:
        return {
            "activation_id": self.event.activation_id,
            "requested_by": self.requested_by,
            "delta_kw": self.event.delta_kw,
            "delivered_kw": round(self.delivered_kw, 3),
            "shortfall_kw": round(self.shortfall_kw, 3),
            "reserved_kw": round(self.reserved_kw, 3),
            "started_ms": self.started_ms,
            "until_ms": self.until_ms,
            "ends_with_block": self.until_ms == self.block_end_ms,
            "sites": len(self.sites),
            "assets": len(self.offsets_kw),
        }


def activation_sections(
    participants: Participants, delta_kw: float
) -> tuple[list[SiteSetpoints], dict[str, float], float]:
    """What an activation (or its end, ``delta_kw = 0``) sends: each participant's planned
    power plus its share [kW], one section per site of the participants only (the rest of
    each site keeps the quarter-hour's setpoints it has); the offsets that are not zero
    [kW] and what they deliver [kW]."""
    setpoints, delivered = allocate(participants, delta_kw)
    moved = setpoints - participants.base_kw
    shift = {
        participants.asset_ids[i]: float(moved[i])
        for i in np.flatnonzero(np.abs(moved) > MIN_OFFSET_KW).tolist()
    }
    return sections(participants, setpoints), shift, delivered


def offsets(participants: Participants, delta_kw: float) -> tuple[dict[str, float], float]:
    """Per-battery offsets [kW] for the pool setpoint ``delta_kw`` and what they deliver."""
    setpoints, delivered = allocate(participants, delta_kw)
    moved = setpoints - participants.base_kw
    out = {
        participants.asset_ids[i]: float(moved[i])
        for i in np.flatnonzero(np.abs(moved) > MIN_OFFSET_KW)
    }
    return out, delivered


def reserved(participants: Participants, delta_kw: float) -> float:
    """The reservation in the direction of ``delta_kw`` [kW]."""
    return float((participants.up_kw if delta_kw >= 0 else participants.down_kw).sum())


def sites_of(participants: Participants, asset_ids: set[str]) -> frozenset[str]:
    """The sites that own any of ``asset_ids``."""
    bounds = participants.site_bounds.tolist()
    out = set()
    for k, site in enumerate(participants.site_ids):
        if asset_ids.intersection(participants.asset_ids[bounds[k] : bounds[k + 1]]):
            out.add(site)
    return frozenset(out)
