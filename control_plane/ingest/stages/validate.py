"""Stage 4, validate: schema, units and physical bounds of every measurement.

A batch-level problem (empty, too large) refuses the batch. A bad measurement
is quarantined with its reason, never dropped: the rest of the batch commits.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
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
    canonical_unit = CANONICAL_UNIT
    isfinite = math.isfinite
    # The hot path (250 measurements a batch, every batch): the checks of _judge inlined,
    # in its order; a measurement that fails any goes to _judge for its reason.
    for i, m in enumerate(batch.measurements):
        asset_id, quantity, value, ts_ms = m.asset_id, m.quantity, m.value, m.ts_ms
        bounds = channels[asset_id].get(quantity)
        if (
            bounds is not None
            and m.unit == canonical_unit.get(quantity)
            and isfinite(value)
            and bounds[0] <= value <= bounds[1]
            and earliest <= ts_ms <= latest
        ):
            accepted.append((asset_id, quantity, ts_ms, value))
            accepted_index.append(i)
            continue
        reason = _judge(quantity, m.unit, value, ts_ms, channels[asset_id], earliest, latest)
        assert reason is not None  # the fast test and _judge agree (tests check both)
        quarantined.append(QuarantinedMeasurement(i, asset_id, quantity, ts_ms, value, reason))
    return ValidatedBatch(authorized, accepted, accepted_index, quarantined)


def _judge(
    quantity: int,
    unit: int,
    value: float,
    ts_ms: int,
    channels: Mapping[int, Bounds],
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
