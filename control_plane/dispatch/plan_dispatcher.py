"""Plan -> dispatch: send the plan's current quarter-hour as signed group setpoints, then
track each site's acknowledgement and plan-vs-actual and flag the sites that do not follow.

Inputs are the edges' signed results (routed by the group dispatcher as
:class:`~control_plane.commands.group_dispatcher.GroupAck`) and gated telemetry, read only
through :class:`~control_plane.state.GatedStateView`. The judgement itself is pure
(:mod:`control_plane.dispatch.follow`); this module keeps the per-site state, and audits
every change into or out of *not following* / *not acknowledged*.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from control_plane.commands.group_dispatcher import GroupAck, GroupDispatcher, GroupSend
from control_plane.commands.group_messages import SiteSetpoints
from control_plane.dispatch.follow import (
    FollowPolicy,
    Reading,
    SiteFollow,
    Verdict,
    asset_deviation_kw,
    judge,
    observe,
)
from control_plane.dispatch.plan_setpoints import (
    QUARTER_HOUR_MS,
    Expected,
    StepSetpoints,
    plan_step,
    step_at,
)
from control_plane.optimizer.assets import FleetState
from control_plane.optimizer.plan import Plan
from control_plane.state import GatedStateView
from gridfort.v1 import telemetry_pb2 as tpb
from security.audit_log import AuditLog
from security.clock import Clock
from security.refusals import Reason

_FLAGGED = {
    Verdict.NOT_FOLLOWING: Reason.DISPATCH_NOT_FOLLOWED,
    Verdict.NO_ACK: Reason.DISPATCH_NOT_ACKNOWLEDGED,
}
MIN_TTL_S = 1.0


@dataclass
class _Track:
    activation_id: str
    sent_ms: int
    expected: dict[str, Expected]
    acked: bool = False
    refused: dict[str, str] = field(default_factory=dict)  # asset_id -> reason code
    result_deviation_kw: float = 0.0
    follow: SiteFollow = field(default_factory=SiteFollow)


@dataclass(frozen=True, slots=True)
class SiteStatus:
    """One site's plan-vs-actual: verdict, telemetry deviation and its tolerance [kW], the
    deviation of the read-back values in the edge's result [kW], refused entries."""

    site_id: str
    verdict: Verdict
    deviation_kw: float
    tolerance_kw: float
    result_deviation_kw: float
    refused: Mapping[str, str]
    note: str = ""


class PlanDispatcher:
    def __init__(
        self,
        *,
        groups: GroupDispatcher,
        state: GatedStateView,
        audit: AuditLog,
        clock: Clock,
        identity: str,
        policy: FollowPolicy | None = None,
    ) -> None:
        self._groups = groups
        self._state = state
        self._audit = audit
        self._clock = clock
        self._identity = identity
        self.policy = policy or FollowPolicy()
        self._sites: dict[str, _Track] = {}
        groups.add_listener(self.on_ack)

    async def dispatch_async(
        self,
        plan: Plan,
        fleet: FleetState,
        *,
        day_start_ms: int,
        rated_kw: Mapping[str, float],
        offsets_kw: Mapping[str, float] | None = None,
    ) -> tuple[StepSetpoints, GroupSend] | None:
        """Send the quarter-hour that holds now (valid until it ends); None outside the
        day. ``offsets_kw``: an aFRR activation under way, added to its batteries [kW].
        The setpoints are computed in a worker thread (:func:`plan_step`, about 5 us per
        asset: half a second for 100,000, which the event loop must not wait for)."""
        now_ms = self._clock.now_ms()
        step = step_at(day_start_ms, now_ms)
        if step is None:
            return None
        setpoints = await asyncio.to_thread(
            plan_step,
            plan,
            fleet,
            step,
            day_start_ms=day_start_ms,
            rated_kw=rated_kw,
            offsets_kw=offsets_kw,
        )
        return self._send(setpoints, self._clock.now_ms(), None)

    async def send_overrides(
        self, sections: Sequence[SiteSetpoints], *, until_ms: int, activation_id: str
    ) -> GroupSend:
        """Send new setpoints for some assets only (an aFRR activation or its end), valid
        until ``until_ms`` (the end of the quarter-hour), as the time-critical fan-out
        (:meth:`GroupDispatcher.send_async`). Afterwards (the sites first) each site's
        tracked expectations take the new values; its other assets keep theirs."""
        now_ms = self._clock.now_ms()
        ttl_s = max(MIN_TTL_S, (until_ms - now_ms) / 1000)
        report = await self._groups.send_async(sections, ttl_s=ttl_s, activation_id=activation_id)
        for section in sections:
            site = section.site_id
            before = self._sites.get(site)
            expected = dict(before.expected) if before is not None else {}
            for asset_id, p_kw in zip(section.asset_ids, section.p_kw, strict=True):
                expected[asset_id] = Expected(asset_id, site, "setpoint", p_kw)
            self._sites[site] = _Track(activation_id, now_ms, expected)
        return report

    def _send(
        self, setpoints: StepSetpoints, now_ms: int, activation_id: str | None
    ) -> tuple[StepSetpoints, GroupSend]:
        day_start_ms = setpoints.start_ms - setpoints.step * QUARTER_HOUR_MS
        group_id = activation_id or f"plan:{day_start_ms}:{setpoints.step}"
        ttl_s = max(MIN_TTL_S, (setpoints.end_ms - now_ms) / 1000)
        report = self._groups.send(setpoints.sections, ttl_s=ttl_s, activation_id=group_id)
        self._track(setpoints, group_id)
        return setpoints, report

    def _track(self, setpoints: StepSetpoints, activation_id: str) -> None:
        now_ms = self._clock.now_ms()
        for section in setpoints.sections:
            expected = {a: setpoints.expected[a] for a in section.asset_ids}
            self._sites[section.site_id] = _Track(activation_id, now_ms, expected)

    def on_ack(self, ack: GroupAck) -> None:
        """A site's verified answer: refused entries and the read-back deviation [kW]."""
        track = self._sites.get(ack.site_id)
        if track is None or track.activation_id != ack.activation_id:
            return
        track.acked = True
        deviation = 0.0
        for asset_id, applied in zip(ack.asset_ids, ack.applied_kw, strict=True):
            expected = track.expected.get(asset_id)
            if expected is None:
                continue
            if math.isnan(applied):
                track.refused[asset_id] = ack.reason or "not applied"
            else:
                deviation += asset_deviation_kw(expected, applied)
        track.result_deviation_kw = deviation

    def evaluate(self) -> dict[str, SiteStatus]:
        """Judge every tracked site now; audit each site entering or leaving a flag."""
        now_ms = self._clock.now_ms()
        statuses: dict[str, SiteStatus] = {}
        for site_id, track in self._sites.items():
            judged = [e for a, e in track.expected.items() if a not in track.refused]
            observation = None
            if track.acked:
                readings = {e.asset_id: self._reading(e.asset_id, now_ms) for e in judged}
                observation = observe(
                    self.policy, judged, readings, since_ms=track.sent_ms, now_ms=now_ms
                )
            before = track.follow.verdict
            track.follow = judge(
                self.policy,
                track.follow,
                observation,
                acked=track.acked,
                sent_ms=track.sent_ms,
                now_ms=now_ms,
            )
            status = SiteStatus(
                site_id,
                track.follow.verdict,
                observation.deviation_kw if observation else 0.0,
                observation.tolerance_kw if observation else 0.0,
                track.result_deviation_kw,
                dict(track.refused),
                observation.unobservable if observation else "",
            )
            self._audit_change(before, status, track)
            statuses[site_id] = status
        return statuses

    def flagged(self) -> dict[str, Verdict]:
        """Sites now judged not following or not acknowledging."""
        return {s: t.follow.verdict for s, t in self._sites.items() if t.follow.verdict in _FLAGGED}

    def _reading(self, asset_id: str, now_ms: int) -> Reading | None:
        value = self._state.get(asset_id, tpb.QUANTITY_ACTIVE_POWER)
        if value is None:
            return None
        return Reading(value.value, value.ts_ms, self._state.is_suspect(asset_id, now_ms))

    def _audit_change(self, before: Verdict, status: SiteStatus, track: _Track) -> None:
        after = status.verdict
        if (before in _FLAGGED) == (after in _FLAGGED) and not (
            before in _FLAGGED and after in _FLAGGED and before != after
        ):
            return
        details = {
            "site": status.site_id,
            "activation": track.activation_id[:64],
            "verdict": after.value,
            "deviation_kw": round(status.deviation_kw, 3),
            "tolerance_kw": round(status.tolerance_kw, 3),
            "result_deviation_kw": round(status.result_deviation_kw, 3),
            "refused_entries": len(status.refused),
        }
        if after in _FLAGGED:
            self._audit.append(
                "dispatch_site_flagged",
                decision="deny",
                identity=self._identity,
                reason=_FLAGGED[after].value,
                details=details,
            )
        else:
            self._audit.append(
                "dispatch_site_cleared", decision="info", identity=self._identity, details=details
            )
