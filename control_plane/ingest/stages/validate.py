"""Stage 4, validate: schema, units and physical bounds of every measurement.

A batch-level problem (empty, too large) refuses the batch. A bad measurement
is quarantined with its reason, never dropped: the rest of the batch commits.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from control_plane.assets.model import CANONICAL_UNIT, Bounds, channel_bounds
from control_plane.ingest.types import (
    AuthorizedBatch,
    MeasurementRow,
    QuarantinedMeasurement,
    ValidatedBatch,
)
from security.refusals import Reason, Refusal


@dataclass(frozen=True, slots=True)
class ValidationPolicy:
    """Limits of one batch. Sample times may lag the seal by ``max_sample_age_ms`` [ms]."""

    max_measurements: int = 10_000
    max_sample_age_ms: int = 15 * 60_000
    max_sample_lead_ms: int = 5_000

    def __post_init__(self) -> None:
        if self.max_measurements <= 0 or self.max_sample_age_ms <= 0:
            raise ValueError("validation limits must be positive")


def validate(authorized: AuthorizedBatch, policy: ValidationPolicy) -> ValidatedBatch | Refusal:
    batch = authorized.verified.batch
    who = authorized.verified.peer.uri
    n = len(batch.measurements)
    if n == 0:
        return Refusal(Reason.EMPTY_BATCH, "a batch must carry at least one measurement", who)
    if n > policy.max_measurements:
        return Refusal(
            Reason.TOO_MANY_MEASUREMENTS,
            f"{n} measurements; the limit is {policy.max_measurements}",
            who,
        )
    sealed = batch.sealed_ms
    earliest = sealed - policy.max_sample_age_ms
    latest = sealed + policy.max_sample_lead_ms
    accepted: list[MeasurementRow] = []
    accepted_index: list[int] = []
    quarantined: list[QuarantinedMeasurement] = []
    channels = {aid: channel_bounds(asset) for aid, asset in authorized.assets.items()}
    for i, m in enumerate(batch.measurements):
        reason = _judge(
            m.quantity, m.unit, m.value, m.ts_ms, channels[m.asset_id], earliest, latest
        )
        if reason is None:
            accepted.append((m.asset_id, m.quantity, m.ts_ms, m.value))
            accepted_index.append(i)
        else:
            quarantined.append(
                QuarantinedMeasurement(i, m.asset_id, m.quantity, m.ts_ms, m.value, reason)
            )
    return ValidatedBatch(authorized, accepted, accepted_index, quarantined)


def _judge(
    quantity: int,
    unit: int,
    value: float,
    ts_ms: int,
    channels: dict[int, Bounds],
    earliest_ms: int,
    latest_ms: int,
) -> Reason | None:
    canonical = CANONICAL_UNIT.get(quantity)
    if canonical is None:
        return Reason.UNKNOWN_QUANTITY
    if unit != canonical:
        return Reason.UNIT_MISMATCH
    bounds = channels.get(quantity)
    if bounds is None:
        return Reason.QUANTITY_NOT_FOR_ASSET
    if not math.isfinite(value):
        return Reason.VALUE_NOT_FINITE
    if not bounds[0] <= value <= bounds[1]:
        return Reason.OUT_OF_PHYSICAL_BOUNDS
    if not earliest_ms <= ts_ms <= latest_ms:
        return Reason.SAMPLE_TIME_INVALID
    return None
