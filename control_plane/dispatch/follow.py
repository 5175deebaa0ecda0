"""Does a site follow its setpoints? The pure judgement, a function of ``now_ms``.

Plan-vs-actual per site from two sources:

* the edge's signed result: what each device read back right after the write
  (``result_deviation_kw``), and which entries the edge refused (honestly, with a
  reason: those entries are excluded from the judgement and reported instead);
* gated telemetry: the latest active power [kW] of each asset, accepted by the
  ingest pipeline and the false-data-injection gate, sampled after the setpoint had
  ``settle_ms`` to take effect and not older than ``max_age_ms``.

A site whose deviation exceeds ``max(tolerance_kw, tolerance_pct of what it was asked
to move)`` continuously for longer than ``grace_ms`` is *not following*; so is a site
that did not acknowledge within ``ack_timeout_ms``. A site with a suspect asset (a
recent gate quarantine) or without fresh gated values is *unobservable*: not judged,
never counted as following.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum

from control_plane.dispatch.plan_setpoints import Expected


class Verdict(StrEnum):
    FOLLOWING = "following"
    DEVIATING = "deviating"  # beyond tolerance, still within the grace period
    NOT_FOLLOWING = "not_following"
    NO_ACK = "no_ack"
    UNOBSERVABLE = "unobservable"
    AWAITING = "awaiting"  # sent, acknowledgement or settled telemetry still to come


@dataclass(frozen=True, slots=True)
class FollowPolicy:
    """Tolerances: [kW], [% of the site's requested magnitude]; times [ms]."""

    tolerance_kw: float = 0.5
    tolerance_pct: float = 10.0
    grace_ms: int = 60_000
    settle_ms: int = 5_000
    max_age_ms: int = 30_000
    ack_timeout_ms: int = 10_000

    def __post_init__(self) -> None:
        if not (self.tolerance_kw >= 0 and self.tolerance_pct >= 0):
            raise ValueError("tolerances must be >= 0")
        if min(self.grace_ms, self.settle_ms, self.max_age_ms, self.ack_timeout_ms) < 0:
            raise ValueError("times must be >= 0 ms")


@dataclass(frozen=True, slots=True)
class Reading:
    """A gated active-power value [kW] sampled at ``ts_ms``; ``suspect`` if the gate
    recently quarantined one of the asset's measurements."""

    p_kw: float
    ts_ms: int
    suspect: bool = False


def asset_deviation_kw(expected: Expected, actual_kw: float) -> float:
    """How far ``actual_kw`` is from what ``expected`` asks [kW]: a PV cap counts only
    export above it, a load's draw limit only import beyond it (export positive)."""
    if expected.mode == "cap":
        return max(0.0, actual_kw - expected.p_kw)
    if expected.mode == "draw_limit":
        return max(0.0, expected.p_kw - actual_kw)
    return abs(actual_kw - expected.p_kw)


def tolerance_kw(policy: FollowPolicy, expected: Iterable[Expected]) -> float:
    requested = math.fsum(abs(e.p_kw) for e in expected if e.mode == "setpoint")
    return max(policy.tolerance_kw, policy.tolerance_pct / 100 * requested)


@dataclass(frozen=True, slots=True)
class Observation:
    """A site's plan-vs-actual at one instant: deviation [kW] over its judged assets, or
    why it cannot be judged (``unobservable``: a non-empty reason)."""

    deviation_kw: float
    tolerance_kw: float
    unobservable: str = ""


def observe(
    policy: FollowPolicy,
    expected: Iterable[Expected],
    readings: dict[str, Reading | None],
    *,
    since_ms: int,
    now_ms: int,
) -> Observation:
    """Telemetry deviation of a site from ``expected`` (assets the edge did not refuse)."""
    judged = list(expected)
    total = 0.0
    for e in judged:
        reading = readings.get(e.asset_id)
        if reading is None:
            return Observation(0.0, 0.0, f"no gated active power for {e.asset_id}")
        if reading.suspect:
            return Observation(0.0, 0.0, f"{e.asset_id} is suspect (gate quarantine)")
        if (
            reading.ts_ms < since_ms + policy.settle_ms
            or now_ms - reading.ts_ms > policy.max_age_ms
        ):
            return Observation(0.0, 0.0, f"no settled, fresh value for {e.asset_id} yet")
        total += asset_deviation_kw(e, reading.p_kw)
    return Observation(total, tolerance_kw(policy, judged))


@dataclass(frozen=True, slots=True)
class SiteFollow:
    """The running judgement of one site: when its deviation began (None: within
    tolerance) and the last verdict."""

    deviating_since_ms: int | None = None
    verdict: Verdict = Verdict.AWAITING


def judge(
    policy: FollowPolicy,
    state: SiteFollow,
    observation: Observation | None,
    *,
    acked: bool,
    sent_ms: int,
    now_ms: int,
) -> SiteFollow:
    """The next judgement of a site (``observation`` None: not yet observable)."""
    if not acked:
        late = now_ms - sent_ms > policy.ack_timeout_ms
        return SiteFollow(state.deviating_since_ms, Verdict.NO_ACK if late else Verdict.AWAITING)
    if observation is None:
        return SiteFollow(state.deviating_since_ms, Verdict.AWAITING)
    if observation.unobservable:
        return SiteFollow(state.deviating_since_ms, Verdict.UNOBSERVABLE)
    if observation.deviation_kw <= observation.tolerance_kw:
        return SiteFollow(None, Verdict.FOLLOWING)
    since = state.deviating_since_ms if state.deviating_since_ms is not None else now_ms
    late = now_ms - since > policy.grace_ms
    return SiteFollow(since, Verdict.NOT_FOLLOWING if late else Verdict.DEVIATING)
