"""Validate stage: units, physical bounds, sample times; quarantine instead of loss."""

from __future__ import annotations

import math

import pytest

from control_plane.assets.model import Asset, AssetKind
from control_plane.ingest.stages.validate import ValidationPolicy, validate
from control_plane.ingest.types import AuthorizedBatch, Peer, VerifiedBatch
from gridfort.v1 import envelope_pb2 as epb
from gridfort.v1 import telemetry_pb2 as tpb
from security.identity import Role, SpiffeId
from security.refusals import Reason, Refusal

Q, U = tpb.Quantity, tpb.Unit
NOW = 1_800_000_000_000
PV = Asset("s1-pv", "s1", AssetKind.PV_INVERTER, rated_p_kw=10.0)
BAT = Asset("s1-bat", "s1", AssetKind.BATTERY, rated_p_kw=5.0, e_kwh=10.0)


def authorized(rows: list[tuple[str, int, int, float, int]]) -> AuthorizedBatch:
    batch = tpb.TelemetryBatch(
        site_id="s1",
        seq=1,
        sealed_ms=NOW,
        measurements=[
            tpb.Measurement(asset_id=a, quantity=q, unit=u, value=v, ts_ms=t)  # type: ignore[arg-type]
            for a, q, u, v, t in rows
        ],
    )
    peer = Peer(SpiffeId("gridfort.test", Role.EDGE, "s1"), 1, 0, 2**62)
    verified = VerifiedBatch(peer, epb.SignedEnvelope(), batch, b"d" * 32, NOW)
    return AuthorizedBatch(verified, {"s1-pv": PV, "s1-bat": BAT})


def reasons(rows: list[tuple[str, int, int, float, int]]) -> list[Reason | None]:
    result = validate(authorized(rows), ValidationPolicy())
    assert not isinstance(result, Refusal)
    by_index: dict[int, Reason | None] = dict.fromkeys(result.accepted_index)
    by_index.update({q.index: q.reason for q in result.quarantined})
    return [by_index[i] for i in range(len(rows))]


def test_plausible_measurements_are_accepted() -> None:
    assert reasons(
        [
            ("s1-pv", Q.QUANTITY_ACTIVE_POWER, U.UNIT_KW, 7.5, NOW),
            ("s1-bat", Q.QUANTITY_ACTIVE_POWER, U.UNIT_KW, -4.0, NOW),  # charging
            ("s1-bat", Q.QUANTITY_STATE_OF_CHARGE, U.UNIT_PCT, 55.0, NOW - 1000),
            ("s1-pv", Q.QUANTITY_FREQUENCY, U.UNIT_HZ, 50.02, NOW),
        ]
    ) == [None, None, None, None]


@pytest.mark.parametrize(
    ("row", "reason"),
    [
        (("s1-pv", Q.QUANTITY_ACTIVE_POWER, U.UNIT_KW, 50.0, NOW), Reason.OUT_OF_PHYSICAL_BOUNDS),
        (("s1-pv", Q.QUANTITY_ACTIVE_POWER, U.UNIT_KW, -3.0, NOW), Reason.OUT_OF_PHYSICAL_BOUNDS),
        (("s1-pv", Q.QUANTITY_ACTIVE_POWER, U.UNIT_KVAR, 5.0, NOW), Reason.UNIT_MISMATCH),
        (("s1-pv", Q.QUANTITY_ACTIVE_POWER, U.UNIT_KW, math.nan, NOW), Reason.VALUE_NOT_FINITE),
        (("s1-pv", Q.QUANTITY_ACTIVE_POWER, U.UNIT_KW, math.inf, NOW), Reason.VALUE_NOT_FINITE),
        (("s1-pv", 999, U.UNIT_KW, 1.0, NOW), Reason.UNKNOWN_QUANTITY),
        (
            ("s1-pv", Q.QUANTITY_STATE_OF_CHARGE, U.UNIT_PCT, 50.0, NOW),
            Reason.QUANTITY_NOT_FOR_ASSET,
        ),
        (
            ("s1-bat", Q.QUANTITY_STATE_OF_CHARGE, U.UNIT_PCT, 101.0, NOW),
            Reason.OUT_OF_PHYSICAL_BOUNDS,
        ),
        (
            ("s1-pv", Q.QUANTITY_ACTIVE_POWER, U.UNIT_KW, 1.0, NOW + 60_000),
            Reason.SAMPLE_TIME_INVALID,
        ),
        (
            ("s1-pv", Q.QUANTITY_ACTIVE_POWER, U.UNIT_KW, 1.0, NOW - 3_600_000),
            Reason.SAMPLE_TIME_INVALID,
        ),
    ],
)
def test_bad_measurement_is_quarantined_and_the_rest_accepted(
    row: tuple[str, int, int, float, int], reason: Reason
) -> None:
    good = ("s1-pv", Q.QUANTITY_ACTIVE_POWER, U.UNIT_KW, 1.0, NOW)
    assert reasons([good, row, good]) == [None, reason, None]


def test_empty_and_too_large_batches_are_refused() -> None:
    empty = validate(authorized([]), ValidationPolicy())
    assert isinstance(empty, Refusal) and empty.reason is Reason.EMPTY_BATCH
    row = ("s1-pv", Q.QUANTITY_ACTIVE_POWER, U.UNIT_KW, 1.0, NOW)
    big = validate(authorized([row] * 11), ValidationPolicy(max_measurements=10))
    assert isinstance(big, Refusal) and big.reason is Reason.TOO_MANY_MEASUREMENTS
