"""The ingest pipeline: authenticate -> verify -> authorize -> validate -> gate -> commit.

One pipeline for every transport (gRPC now, NATS next). Each stage is a pure
function in ``stages/``; this module wires them to the live state (registry,
keys, revocations, replay guard, store) and sends every refusal through the
audit log. CPU work runs inline and briefly; the commit is awaited without
blocking other streams (group commit in the store's writer thread).
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from control_plane.assets.registry import AssetRegistry, RegistrySnapshot
from control_plane.gate.gate import FdiGate
from control_plane.ingest.gate import Gate
from control_plane.ingest.receipts import IngestResult
from control_plane.ingest.stages.authenticate import authenticate, authenticate_broker_subject
from control_plane.ingest.stages.authorize import authorize
from control_plane.ingest.stages.validate import ValidationPolicy, validate
from control_plane.ingest.stages.verify import verify
from control_plane.ingest.types import Duplicate, GatedBatch, Peer
from control_plane.state import FleetState
from control_plane.store.commit_ledger import CommitLedger
from control_plane.store.telemetry_store import CommitOutcome, CommitRequest, TelemetryStore
from gridfort.v1 import edge_link_pb2 as lpb
from gridfort.v1 import envelope_pb2 as epb
from security.audit_log import AuditLog
from security.audit_throttle import ThrottledAudit
from security.clock import Clock
from security.envelope import payload_digest
from security.identity import Role, SpiffeId
from security.refusals import Reason, Refusal
from security.replay_guard import ReplayGuard, ReplayPolicy
from security.revocation import RevocationList, RevocationSnapshot
from security.signing_keys import EnrolledKey, SigningKeyRegistry

log = logging.getLogger(__name__)

COMMITTED = lpb.RECEIPT_STATUS_COMMITTED
DUPLICATE = lpb.RECEIPT_STATUS_DUPLICATE
REFUSED = lpb.RECEIPT_STATUS_REFUSED


@dataclass
class IngestStats:
    batches_committed: int = 0
    batches_duplicate: int = 0
    batches_refused: int = 0
    measurements_committed: int = 0
    measurements_quarantined: int = 0
    refusals: Counter[str] = field(default_factory=Counter)


class IngestPipeline:
    def __init__(
        self,
        *,
        trust_domain: str,
        registry: AssetRegistry,
        keys: SigningKeyRegistry,
        revocations: RevocationList,
        store: TelemetryStore,
        audit: AuditLog,
        clock: Clock,
        replay_policy: ReplayPolicy | None = None,
        validation_policy: ValidationPolicy | None = None,
        gate: Gate | None = None,
        on_gate_quarantine: Callable[[GatedBatch], object] | None = None,
    ) -> None:
        self.trust_domain = trust_domain
        self._registry = registry
        self._keys_registry = keys
        self._revocations = revocations
        self._store = store
        self._audit = audit
        self._clock = clock
        self._validation = validation_policy or ValidationPolicy()
        self.gate: Gate = gate if gate is not None else FdiGate()
        self._gate_listeners: list[Callable[[GatedBatch], object]] = (
            [on_gate_quarantine] if on_gate_quarantine else []
        )
        self._commit_observers: list[Callable[[GatedBatch], object]] = []
        self.guard = ReplayGuard(
            replay_policy or ReplayPolicy(), store.high_water_marks(), store.batch_digest
        )
        self._in_flight: dict[tuple[str, int], asyncio.Future[CommitOutcome]] = {}
        self.stats = IngestStats()
        self._refusal_audit = ThrottledAudit(audit, clock)
        self.state = FleetState()
        # set by the composition root when a store follower also applies the store's rows
        # to ``state``: the batches committed here, which the follower must not apply again
        self.commit_ledger: CommitLedger | None = None
        self.registry_snapshot: RegistrySnapshot = registry.snapshot()
        self.revocation_snapshot: RevocationSnapshot = revocations.snapshot()
        self._enrolled_index: dict[str, int] = {}
        self._enrolled_index_of: object = None
        self._keys_version = keys.current_version()
        self._keys: dict[str, EnrolledKey] = {k.key_id: k for k in keys.all_keys()}

    # -- live state ----------------------------------------------------------
    def refresh(self) -> bool:
        """Reload registry, keys and revocations if they changed. True if revocations changed.

        Also writes the summaries of refusal floods (see ``security.audit_throttle``).
        """
        self._refusal_audit.flush()
        if self._registry.version() != self.registry_snapshot.version:
            self.registry_snapshot = self._registry.snapshot()
        keys_version = self._keys_registry.current_version()
        if keys_version != self._keys_version:
            self._keys = {k.key_id: k for k in self._keys_registry.all_keys()}
            self._keys_version = keys_version
        if self._revocations.current_version() != self.revocation_snapshot.version:
            self.revocation_snapshot = self._revocations.snapshot()
            return True
        return False

    def _enrolled_ms_by_edge(self) -> dict[str, int]:
        """Latest key enrollment time per edge site, cached per key set [ms]."""
        if self._enrolled_index_of is not self._keys:
            index: dict[str, int] = {}
            for key in self._keys.values():
                if key.spiffe_id.role is Role.EDGE:
                    name = key.spiffe_id.name
                    index[name] = max(index.get(name, 0), key.enrolled_ms)
            self._enrolled_index, self._enrolled_index_of = index, self._keys
        return self._enrolled_index

    @property
    def keys(self) -> dict[str, EnrolledKey]:
        """Enrolled envelope-signing keys by key id (reloaded by ``refresh``)."""
        return self._keys

    def add_key(self, key: EnrolledKey) -> None:
        self._keys[key.key_id] = key
        self._enrolled_index_of = None

    def refuse(self, refusal: Refusal, *, event: str = "ingest") -> Refusal:
        """Count and audit a refusal (the one path every refusal takes)."""
        self.stats.refusals[refusal.reason.value] += 1
        self._refusal_audit.record_refusal(refusal, event=event)
        return refusal

    # -- stage 1 -------------------------------------------------------------
    def authenticate(self, cert_pem: bytes | None, allowed: frozenset[Role]) -> Peer | Refusal:
        # A new connection never waits for the watcher's next tick to see a revocation:
        # one indexed read per connection (the TLS handshake costs far more).
        if self._revocations.current_version() != self.revocation_snapshot.version:
            self.revocation_snapshot = self._revocations.snapshot()
        result = authenticate(
            cert_pem,
            trust_domain=self.trust_domain,
            allowed_roles=allowed,
            revocations=self.revocation_snapshot,
            now_ms=self._clock.now_ms(),
        )
        if isinstance(result, Refusal):
            return self.refuse(result, event="authenticate")
        return result

    def authenticate_subject(self, site_token: str) -> Peer | Refusal:
        """Stage 1 for the NATS transport (see ``authenticate_broker_subject``)."""
        enrolled_ms = self._enrolled_ms_by_edge().get(site_token.replace("~", "."))
        result = authenticate_broker_subject(
            site_token,
            trust_domain=self.trust_domain,
            revocations=self.revocation_snapshot,
            enrolled_ms=enrolled_ms,
        )
        if isinstance(result, Refusal):
            return self.refuse(result, event="authenticate")
        return result

    def edge_allowed(self, site_id: str) -> bool:
        """False once the site's edge identity was revoked after its last enrollment."""
        enrolled_ms = self._enrolled_ms_by_edge().get(site_id)
        if enrolled_ms is None:
            return True  # not enrolled yet: it may still enroll and connect
        spiffe_id = SpiffeId(self.trust_domain, Role.EDGE, site_id)
        return not self.revocation_snapshot.is_revoked(spiffe_id, enrolled_ms)

    def still_valid(self, peer: Peer) -> Refusal | None:
        """Re-check an open stream's peer: revoked or expired since it connected?"""
        if self.revocation_snapshot.is_revoked(peer.spiffe_id, peer.not_before_ms):
            return Refusal(Reason.IDENTITY_REVOKED, "this identity has been revoked", peer.uri)
        if self._clock.now_ms() > peer.not_after_ms:
            return Refusal(Reason.CERT_NOT_VALID_NOW, "the client certificate expired", peer.uri)
        return None

    # -- stages 2..6 ---------------------------------------------------------
    async def ingest(self, peer: Peer, envelope: epb.SignedEnvelope) -> IngestResult:
        now_ms = self._clock.now_ms()
        verified = verify(envelope, peer, keys=self._keys, guard=self.guard, now_ms=now_ms)
        if isinstance(verified, Refusal):
            return self._refused(verified, envelope)
        if isinstance(verified, Duplicate):
            return await self._duplicate(verified)
        authorized = authorize(verified, self.registry_snapshot)
        if isinstance(authorized, Refusal):
            return self._refused(authorized, envelope, verified.batch.site_id, verified.batch.seq)
        validated = validate(authorized, self._validation)
        if isinstance(validated, Refusal):
            return self._refused(validated, envelope, verified.batch.site_id, verified.batch.seq)
        gated = self.gate.judge(validated)
        return await self._commit(gated)

    async def _commit(self, v: GatedBatch) -> IngestResult:
        b, env = v.verified.batch, v.verified.envelope
        site, seq, digest = b.site_id, b.seq, v.verified.digest
        request = CommitRequest(
            site_id=site,
            seq=seq,
            digest=digest,
            key_id=env.key_id,
            sealed_ms=b.sealed_ms,
            signed_ms=env.signed_ms,
            received_ms=v.verified.received_ms,
            rows=v.accepted,
            quarantined=v.quarantined,
        )
        self.guard.reserve(site, seq, digest)
        ledger = self.commit_ledger
        if ledger is not None:
            ledger.begin(site, seq)
        task = asyncio.ensure_future(self._store.commit(request))
        self._in_flight[(site, seq)] = task
        outcome: CommitOutcome | None = None
        try:
            outcome = await task
        except Exception as e:  # the store failed: the edge must retry, nothing is acked
            self.guard.release(site, seq)
            log.error("commit of %s/%s failed: %s", site, seq, e)
            refusal = Refusal(
                Reason.UNAVAILABLE, "the store could not commit the batch", v.verified.peer.uri
            )
            return self._refused(refusal, env, site, seq)
        finally:
            self._in_flight.pop((site, seq), None)
            if ledger is not None:  # applied below, or another process's rows (duplicate)
                ledger.settle(site, seq, committed=outcome is CommitOutcome.COMMITTED)
        self.guard.commit(site, seq)
        if outcome is CommitOutcome.COMMITTED:
            self.state.apply(v)
            for observe in self._commit_observers:
                observe(v)
        if outcome is CommitOutcome.DUPLICATE:
            self.stats.batches_duplicate += 1
            return IngestResult(site, seq, DUPLICATE, digest)
        self.stats.batches_committed += 1
        self.stats.measurements_committed += len(v.accepted)
        self.stats.measurements_quarantined += len(v.quarantined)
        for q in v.quarantined:
            self.stats.refusals[q.reason.value] += 1
        if v.quarantined:
            self._audit.append(
                "quarantine",
                decision="deny",
                identity=v.verified.peer.uri,
                reason=v.quarantined[0].reason.value,
                details={"site": site, "seq": seq, "count": len(v.quarantined)},
            )
        if outcome is CommitOutcome.COMMITTED and v.gate_quarantined:
            self._on_gate_quarantine(v)
        return IngestResult(
            site,
            seq,
            COMMITTED,
            digest,
            committed=len(v.accepted),
            quarantined=len(v.quarantined),
            quarantined_detail=[(q.index, q.reason) for q in v.quarantined],
        )

    def add_commit_observer(self, observer: Callable[[GatedBatch], object]) -> None:
        """Call ``observer`` with every committed batch, right after fleet state applied it
        (on the event loop, for every batch: it must be cheap and must not raise), e.g.
        :meth:`control_plane.forecast.history.GatedHistory.observe`."""
        self._commit_observers.append(observer)

    def add_gate_listener(self, listener: Callable[[GatedBatch], object]) -> None:
        """Call ``listener`` with every committed batch in which the gate quarantined something."""
        self._gate_listeners.append(listener)

    def _on_gate_quarantine(self, v: GatedBatch) -> None:
        b = v.verified.batch
        first = v.gate_quarantined[0]
        assert first.evidence is not None
        self._audit.append(
            "gate_verdict",
            decision="deny",
            identity=v.verified.peer.uri,
            reason=first.reason.value,
            details={
                "site": b.site_id,
                "seq": b.seq,
                "count": len(v.gate_quarantined),
                "gate_version": v.gate_version,
                "evidence": [
                    {"asset_id": q.asset_id, "quantity": q.quantity, "value": q.value}
                    | (q.evidence.to_json() if q.evidence else {})
                    for q in v.gate_quarantined[:16]
                ],
            },
        )
        for listener in self._gate_listeners:
            try:
                listener(v)
            except Exception:  # an alert sink must never fail ingest
                log.exception("gate listener failed for %s/%s", b.site_id, b.seq)

    async def _duplicate(self, d: Duplicate) -> IngestResult:
        if d.pending:
            # Acknowledge only what is durable: wait for the original commit to finish.
            task = self._in_flight.get((d.site_id, d.seq))
            try:
                if task is None:
                    raise LookupError("reserved sequence without a commit in flight")
                await asyncio.shield(task)
            except Exception:
                return IngestResult(
                    d.site_id,
                    d.seq,
                    REFUSED,
                    d.digest,
                    reason=Reason.UNAVAILABLE,
                    message="the original commit of this batch did not complete; resend",
                )
        self.stats.batches_duplicate += 1
        return IngestResult(d.site_id, d.seq, DUPLICATE, d.digest)

    def internal_error(self, peer: Peer, envelope: epb.SignedEnvelope) -> IngestResult:
        """The result for a batch whose processing failed unexpectedly: retryable, audited."""
        refusal = Refusal(
            Reason.INTERNAL, "the control plane could not process the batch", peer.uri
        )
        return self._refused(refusal, envelope)

    def _refused(
        self, refusal: Refusal, envelope: epb.SignedEnvelope, site: str = "", seq: int = 0
    ) -> IngestResult:
        self.stats.batches_refused += 1
        digest = payload_digest(envelope.payload)
        details = dict(refusal.details)
        if site:
            details.setdefault("site", site)
            details.setdefault("seq", seq)
        details.setdefault("key_id", envelope.key_id[:64])
        self.refuse(Refusal(refusal.reason, refusal.message, refusal.identity, details))
        return IngestResult(
            site, seq, REFUSED, digest, reason=refusal.reason, message=refusal.message
        )
