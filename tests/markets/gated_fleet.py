"""Gated fleet state for market tests, written the only way production writes it:
``FleetState.apply`` with a :class:`GatedBatch`, the gate's output type."""

from __future__ import annotations

from collections.abc import Sequence

from control_plane.assets.model import Asset, AssetKind
from control_plane.ingest.types import (
    AuthorizedBatch,
    GatedBatch,
    GateEvidence,
    MeasurementRow,
    Peer,
    QuarantinedMeasurement,
    ValidatedBatch,
    VerifiedBatch,
)
from control_plane.state import FleetState
from gridfort.v1 import envelope_pb2 as epb
from gridfort.v1 import telemetry_pb2 as tpb
from security.identity import SpiffeId
from security.refusals import Reason

SOC = tpb.QUANTITY_STATE_OF_CHARGE
P = tpb.QUANTITY_ACTIVE_POWER
SITE = "site-1"


def battery(asset_id: str, rated_p_kw: float = 2000.0, e_kwh: float = 1000.0) -> Asset:
    return Asset(asset_id, SITE, AssetKind.BATTERY, rated_p_kw=rated_p_kw, e_kwh=e_kwh)


def validated_batch(
    assets: Sequence[Asset], rows: Sequence[MeasurementRow], *, seq: int, now_ms: int
) -> ValidatedBatch:
    """Rows of ``SITE`` that passed authenticate, verify, authorize and validate: the
    gate's input."""
    peer = Peer(SpiffeId.parse(f"spiffe://gridfort.test/edge/{SITE}"), 1, 0, now_ms + 3_600_000)
    batch = tpb.TelemetryBatch(site_id=SITE, seq=seq, sealed_ms=max(r[2] for r in rows))
    verified = VerifiedBatch(peer, epb.SignedEnvelope(), batch, b"\0" * 32, now_ms)
    authorized = AuthorizedBatch(verified, {a.asset_id: a for a in assets})
    return ValidatedBatch(authorized, list(rows), list(range(len(rows))), [])


def battery_samples(
    asset: Asset, t0_ms: int, n: int, p_kw: float, soc0: float, step_s: int = 10
) -> tuple[list[MeasurementRow], float]:
    """Physically consistent samples (export positive, efficiency 0.95, SOC to 0.1 %)."""
    rows: list[MeasurementRow] = []
    soc = soc0
    for k in range(n):
        t = t0_ms + k * step_s * 1000
        if k:
            e = p_kw * step_s / 3600
            soc -= 100 * (e / 0.95 if e > 0 else e * 0.95) / asset.e_kwh
        rows += [(asset.asset_id, P, t, p_kw), (asset.asset_id, SOC, t, round(soc, 1))]
    return rows, soc


def gated_batch(
    assets: Sequence[Asset],
    accepted: Sequence[MeasurementRow],
    gate_quarantined: Sequence[MeasurementRow] = (),
    *,
    now_ms: int,
) -> GatedBatch:
    """A committed batch of ``SITE``: ``accepted`` rows passed the gate; each row of
    ``gate_quarantined`` was judged falsified, with the evidence the gate records."""
    peer = Peer(SpiffeId.parse(f"spiffe://gridfort.test/edge/{SITE}"), 1, 0, now_ms + 3_600_000)
    verified = VerifiedBatch(
        peer, epb.SignedEnvelope(), tpb.TelemetryBatch(site_id=SITE), b"\0" * 32, now_ms
    )
    authorized = AuthorizedBatch(verified, {a.asset_id: a for a in assets})
    quarantined = [
        QuarantinedMeasurement(
            index=len(accepted) + i,
            asset_id=asset_id,
            quantity=quantity,
            ts_ms=ts_ms,
            value=value,
            reason=Reason.FDI_TEMPORAL_INCONSISTENT,
            evidence=GateEvidence(
                detector="temporal:soc_balance",
                model_version="test-rules/1",
                score=9.5,
                threshold=3.0,
                flagged=(f"{asset_id}/{quantity}",),
                detail=f"SOC jumped to {value} % with no charging power",
            ),
        )
        for i, (asset_id, quantity, ts_ms, value) in enumerate(gate_quarantined)
    ]
    validated = ValidatedBatch(
        authorized,
        list(accepted) + list(gate_quarantined),
        list(range(len(accepted) + len(gate_quarantined))),
        [],
    )
    return GatedBatch(validated, list(accepted), quarantined, "test-gate/1")


def fleet_state(
    assets: Sequence[Asset],
    soc_pct: dict[str, float],
    *,
    ts_ms: int,
    suspect_hold_ms: int = 900_000,
) -> FleetState:
    """State with one accepted SOC sample [%] per asset at ``ts_ms``."""
    state = FleetState(suspect_hold_ms=suspect_hold_ms)
    rows = [(a, SOC, ts_ms, v) for a, v in soc_pct.items()]
    state.apply(gated_batch(assets, rows, now_ms=ts_ms))
    return state
