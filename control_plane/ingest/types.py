"""Values that flow between the ingest stages. Each stage makes the next type; nothing else does."""

from __future__ import annotations

from dataclasses import dataclass

from control_plane.assets.model import Asset
from gridfort.v1 import envelope_pb2 as epb
from gridfort.v1 import telemetry_pb2 as tpb
from security.identity import SpiffeId
from security.refusals import Reason


@dataclass(frozen=True, slots=True)
class Peer:
    """An authenticated peer: the SPIFFE ID of its client certificate and the cert's validity."""

    spiffe_id: SpiffeId
    cert_serial: int
    not_before_ms: int
    not_after_ms: int

    @property
    def uri(self) -> str:
        return str(self.spiffe_id)


@dataclass(frozen=True, slots=True)
class VerifiedBatch:
    """Signature valid for the peer's enrolled key; sequence and time pass the replay guard."""

    peer: Peer
    envelope: epb.SignedEnvelope
    batch: tpb.TelemetryBatch
    digest: bytes  # SHA-256 of the payload bytes
    received_ms: int


@dataclass(frozen=True, slots=True)
class Duplicate:
    """An exact re-send of a batch already committed (or being committed)."""

    peer: Peer
    site_id: str
    seq: int
    digest: bytes
    pending: bool


@dataclass(frozen=True, slots=True)
class AuthorizedBatch:
    """The peer may report for every asset named in the batch."""

    verified: VerifiedBatch
    assets: dict[str, Asset]


#: One committed measurement row: (asset_id, quantity, ts_ms, value).
MeasurementRow = tuple[str, int, int, float]


@dataclass(frozen=True, slots=True)
class QuarantinedMeasurement:
    index: int
    asset_id: str
    quantity: int
    ts_ms: int
    value: float
    reason: Reason


@dataclass(frozen=True, slots=True)
class ValidatedBatch:
    """Every measurement judged against schema, units and physical bounds.

    ``accepted`` rows keep their index in the batch (``accepted_index``).
    """

    authorized: AuthorizedBatch
    accepted: list[MeasurementRow]
    accepted_index: list[int]
    quarantined: list[QuarantinedMeasurement]

    @property
    def verified(self) -> VerifiedBatch:
        return self.authorized.verified
