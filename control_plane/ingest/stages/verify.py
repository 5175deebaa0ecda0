"""Stage 2, verify: the envelope is signed by the peer's enrolled key and is not a replay."""

from __future__ import annotations

from collections.abc import Mapping

from google.protobuf.message import DecodeError

from control_plane.ingest.types import Duplicate, Peer, VerifiedBatch
from gridfort.v1 import envelope_pb2 as epb
from gridfort.v1 import telemetry_pb2 as tpb
from security.envelope import check_envelope_shape, payload_digest, verify_signature
from security.refusals import Reason, Refusal
from security.replay_guard import Outcome, ReplayGuard
from security.signing_keys import EnrolledKey

#: Sequence numbers are stored as SQLite INTEGER (signed 64 bit): larger uint64 values are refused.
MAX_SEQ = 2**63 - 1


def verify(
    envelope: epb.SignedEnvelope,
    peer: Peer,
    *,
    keys: Mapping[str, EnrolledKey],
    guard: ReplayGuard,
    now_ms: int,
) -> VerifiedBatch | Duplicate | Refusal:
    who = peer.uri
    shaped = check_envelope_shape(envelope)
    if isinstance(shaped, Refusal):
        return Refusal(shaped.reason, shaped.message, who)
    if envelope.payload_type != epb.PAYLOAD_TYPE_TELEMETRY_BATCH:
        return Refusal(Reason.WRONG_PAYLOAD_TYPE, "expected a telemetry batch", who)
    if envelope.signer != who:
        return Refusal(Reason.SIGNER_MISMATCH, "envelope signer is not the connected peer", who)
    key = keys.get(envelope.key_id)
    if key is None:
        return Refusal(Reason.UNKNOWN_SIGNING_KEY, f"no enrolled key {envelope.key_id}", who)
    if key.spiffe_id != peer.spiffe_id:
        return Refusal(Reason.SIGNER_MISMATCH, "the signing key belongs to another identity", who)
    if not verify_signature(envelope, key.public_key):
        return Refusal(Reason.BAD_SIGNATURE, "envelope signature does not verify", who)
    batch = tpb.TelemetryBatch()
    try:
        batch.ParseFromString(envelope.payload)
    except DecodeError:
        return Refusal(Reason.MALFORMED_BATCH, "payload is not a valid TelemetryBatch", who)
    if batch.site_id != peer.spiffe_id.name:
        # Before the replay guard: another site's sequence state is none of this peer's business.
        return Refusal(
            Reason.SITE_MISMATCH,
            f"edge {peer.spiffe_id.name} may not report for site {batch.site_id[:64]!r}",
            who,
        )
    if batch.seq > MAX_SEQ:
        return Refusal(Reason.MALFORMED_BATCH, f"seq must be at most {MAX_SEQ}", who)
    digest = payload_digest(envelope.payload)
    decision = guard.check(batch.site_id, batch.seq, envelope.signed_ms, digest, now_ms)
    if isinstance(decision, Refusal):
        return Refusal(decision.reason, decision.message, who, {"seq": batch.seq})
    if decision.outcome is not Outcome.FRESH:
        return Duplicate(
            peer, batch.site_id, batch.seq, digest, pending=decision.outcome is Outcome.PENDING
        )
    return VerifiedBatch(peer, envelope, batch, digest, now_ms)
