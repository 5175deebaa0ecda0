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
class GateEvidence:
    """Why the gate judged a measurement falsified: what a SOC analyst needs to review it.

    ``detector``: which judge decided (e.g. ``"grid:cigre_mv"``, ``"temporal:soc_balance"``);
    ``model_version``: the signed model's version or the rule set's version; ``score`` and
    ``threshold`` in that detector's units (higher = more suspicious; flagged when
    ``score > threshold``); ``flagged``: every measurement of the same snapshot the judge
    flagged together with this one (names like ``bus12.p_mw`` or ``asset/quantity``);
    ``detail``: one human sentence with the numbers.
    """

    detector: str
    model_version: str
    score: float
    threshold: float
    flagged: tuple[str, ...] = ()
    detail: str = ""

    def to_json(self) -> dict[str, object]:
        return {
            "detector": self.detector,
            "model_version": self.model_version,
            "score": self.score,
            "threshold": self.threshold,
            "flagged": list(self.flagged),
            "detail": self.detail,
        }


@dataclass(frozen=True, slots=True)
class QuarantinedMeasurement:
    """A measurement kept out of state, with its reason (and the gate's evidence, if it judged)."""

    index: int
    asset_id: str
    quantity: int
    ts_ms: int
    value: float
    reason: Reason
    evidence: GateEvidence | None = None


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


@dataclass(frozen=True, slots=True)
class GatedBatch:
    """Every validated measurement has the gate's verdict (stage 5; only the gate makes these).

    ``accepted``: rows the gate let through; the only rows that may reach state, the
    optimizer or a market action. ``quarantined``: validation's quarantine plus the
    gate's, each gate verdict with its :class:`GateEvidence`. ``gate_version`` names
    the judges and model versions that decided.
    """

    validated: ValidatedBatch
    accepted: list[MeasurementRow]
    quarantined: list[QuarantinedMeasurement]
    gate_version: str

    @property
    def verified(self) -> VerifiedBatch:
        return self.validated.authorized.verified

    @property
    def gate_quarantined(self) -> list[QuarantinedMeasurement]:
        """Only the measurements the gate (not validation) rejected."""
        return [q for q in self.quarantined if q.evidence is not None]


@dataclass(frozen=True, slots=True)
class StoredGatedRows:
    """Gated rows read back from the telemetry store, committed there by another process.

    The sibling of :class:`GatedBatch` for a process that did not run the gate itself (the
    planning control plane next to NATS ingest workers): the same ``accepted`` and
    ``quarantined`` lists, without the envelope they came in. Only
    :meth:`from_store` makes one, and only :mod:`control_plane.store.follower` calls it,
    with rows it read (read-only) from the store's ``measurements`` and ``quarantine``
    tables. That is legitimate because the store holds nothing else: the pipeline writes
    a batch only after authentication, verification, authorization, validation and the
    gate, ``measurements`` gets exactly a :class:`GatedBatch`'s ``accepted`` rows and
    ``quarantine`` its ``quarantined`` ones (the gate's with their evidence). The rows may
    come from several batches of several sites.
    """

    accepted: list[MeasurementRow]
    quarantined: list[QuarantinedMeasurement]

    @classmethod
    def from_store(
        cls, accepted: list[MeasurementRow], quarantined: list[QuarantinedMeasurement]
    ) -> StoredGatedRows:
        """Rows the gate and validation already judged, as committed in the store (see above)."""
        return cls(accepted, quarantined)

    @property
    def gate_quarantined(self) -> list[QuarantinedMeasurement]:
        """Only the measurements the gate (not validation) rejected: those with evidence."""
        return [q for q in self.quarantined if q.evidence is not None]


#: What fleet state and commit observers accept: the gate's output, or the same rows read
#: back from the store (both only ever hold gated rows).
GatedRows = GatedBatch | StoredGatedRows
