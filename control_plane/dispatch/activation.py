"""Operator-signalled activations (aFRR-like): event at the control plane -> signed group
setpoints -> applied at the sites. Unlike FCR/FFR (local, at the edge), these need the
control-plane round trip, so this path is built for fan-out: the participants are arrays,
the allocation is one vectorised step, and each group message is signed once.

Allocation: a requested portfolio change ``delta_kw`` (+ more export) is shared among the
participants pro rata to their headroom in that direction; beyond the total headroom the
activation saturates and the shortfall is reported, never forced onto an asset.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from control_plane.assets.model import ID_PATTERN
from control_plane.commands.group_dispatcher import GroupDispatcher, GroupSend
from control_plane.commands.group_messages import SiteSetpoints
from security.audit_log import AuditLog
from security.clock import Clock

FloatArray = npt.NDArray[np.float64]
MAX_DURATION_S = 3600.0


@dataclass(frozen=True)
class Participants:
    """Assets taking part, contiguous per site: site ``k`` owns rows
    ``site_bounds[k]:site_bounds[k+1]``. Per row: the current setpoint ``base_kw`` and the
    headroom for more export ``up_kw`` and for less export ``down_kw`` [kW, >= 0]."""

    site_ids: tuple[str, ...]
    site_bounds: npt.NDArray[np.int64]
    asset_ids: tuple[str, ...]
    base_kw: FloatArray
    up_kw: FloatArray
    down_kw: FloatArray

    def __post_init__(self) -> None:
        n = len(self.asset_ids)
        if not all(a.shape == (n,) for a in (self.base_kw, self.up_kw, self.down_kw)):
            raise ValueError("base_kw, up_kw and down_kw need one value per asset")
        b = self.site_bounds
        if (
            b.shape != (len(self.site_ids) + 1,)
            or b[0] != 0
            or b[-1] != n
            or np.any(b[1:] <= b[:-1])
        ):
            raise ValueError("site_bounds must run from 0 to n_assets, strictly increasing")
        arrays = np.concatenate([self.base_kw, self.up_kw, self.down_kw])
        if not np.all(np.isfinite(arrays)) or np.any(self.up_kw < 0) or np.any(self.down_kw < 0):
            raise ValueError("powers must be finite and headrooms >= 0")

    def site_of_row(self) -> list[str]:
        """The site of each row (asset), in row order."""
        counts = np.diff(self.site_bounds).tolist()
        return [site for site, n in zip(self.site_ids, counts, strict=True) for _ in range(n)]

    @classmethod
    def from_rows(cls, rows: Iterable[tuple[str, str, float, float, float]]) -> Participants:
        """From (site_id, asset_id, base_kw, up_kw, down_kw) rows, in any order."""
        ordered = sorted(rows, key=lambda r: r[0])
        sites: list[str] = []
        bounds = [0]
        for i, row in enumerate(ordered):
            if not sites or row[0] != sites[-1]:
                if sites:
                    bounds.append(i)
                sites.append(row[0])
        bounds.append(len(ordered))
        return cls(
            tuple(sites),
            np.asarray(bounds if sites else [0], dtype=np.int64),
            tuple(r[1] for r in ordered),
            np.asarray([r[2] for r in ordered], dtype=np.float64),
            np.asarray([r[3] for r in ordered], dtype=np.float64),
            np.asarray([r[4] for r in ordered], dtype=np.float64),
        )


@dataclass(frozen=True, slots=True)
class ActivationEvent:
    """The operator asks for ``delta_kw`` more export (< 0: less) for ``duration_s``."""

    activation_id: str
    delta_kw: float
    duration_s: float

    def __post_init__(self) -> None:
        if not ID_PATTERN.match(self.activation_id):
            raise ValueError(f"activation id must match {ID_PATTERN.pattern}")
        if not math.isfinite(self.delta_kw):
            raise ValueError("delta_kw must be finite")
        if not 0 < self.duration_s <= MAX_DURATION_S:
            raise ValueError(f"duration_s must be in (0, {MAX_DURATION_S:.0f}] s")


def allocate(participants: Participants, delta_kw: float) -> tuple[FloatArray, float]:
    """Per-asset setpoints [kW] for a portfolio change ``delta_kw`` and the change they
    deliver [kW] (smaller in magnitude when headroom runs out)."""
    room = participants.up_kw if delta_kw >= 0 else participants.down_kw
    total = float(room.sum())
    if total <= 0 or delta_kw == 0:
        return participants.base_kw.copy(), 0.0
    share = min(1.0, abs(delta_kw) / total)
    sign = 1.0 if delta_kw > 0 else -1.0
    return participants.base_kw + sign * share * room, sign * share * total


def sections(participants: Participants, setpoints_kw: FloatArray) -> list[SiteSetpoints]:
    """One section per site, in the participants' order."""
    values = setpoints_kw.tolist()
    bounds = participants.site_bounds.tolist()
    ids = participants.asset_ids
    return [
        SiteSetpoints(
            site, ids[bounds[k] : bounds[k + 1]], tuple(values[bounds[k] : bounds[k + 1]])
        )
        for k, site in enumerate(participants.site_ids)
    ]


@dataclass(frozen=True, slots=True)
class ActivationReport:
    event: ActivationEvent
    delivered_kw: float
    shortfall_kw: float
    send: GroupSend


class ActivationDispatcher:
    """Turns an activation event into signed group setpoints for every participant."""

    def __init__(
        self,
        *,
        groups: GroupDispatcher,
        participants: Participants,
        audit: AuditLog,
        clock: Clock,
        identity: str,
    ) -> None:
        self._groups = groups
        self.participants = participants
        self._audit = audit
        self._clock = clock
        self._identity = identity

    async def activate(self, event: ActivationEvent) -> ActivationReport:
        """Allocate ``event`` and send it; the first sites receive their group while the
        rest are still being signed (:meth:`GroupDispatcher.send_async`)."""
        setpoints, delivered = allocate(self.participants, event.delta_kw)
        report = await self._groups.send_async(
            sections(self.participants, setpoints),
            ttl_s=event.duration_s,
            activation_id=event.activation_id,
        )
        shortfall = event.delta_kw - delivered
        self._audit.append(
            "activation",
            decision="info",
            identity=self._identity,
            details={
                "activation": event.activation_id,
                "delta_kw": event.delta_kw,
                "delivered_kw": round(delivered, 3),
                "shortfall_kw": round(shortfall, 3),
                "sites": report.sites_sent,
                "undeliverable": len(report.undeliverable),
                "groups": report.signatures,
            },
        )
        return ActivationReport(event, delivered, shortfall, report)

    def release(self, event: ActivationEvent) -> GroupSend:
        """Back to the base setpoints (the end of the activation), as new group messages."""
        return self._groups.send(
            sections(self.participants, self.participants.base_kw),
            ttl_s=event.duration_s,
            activation_id=f"{event.activation_id}.end"[:64],
        )
