"""Issue signed commands to connected edges and record their signed results.

Every command is signed by the control plane's Ed25519 key (the edge learned
its public key at enrollment), carries a per-site strictly increasing sequence
number and an expiry, and is audited. A site that is not connected gets no
command (status ``undeliverable``): setpoints are time-critical and are never
queued to arrive late.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Callable, Mapping

from google.protobuf.message import DecodeError

from control_plane.commands.command_log import CommandLog
from control_plane.ingest.types import Peer
from control_plane.transports.streams import StreamRegistry
from gridfort.v1 import command_pb2 as cpb
from gridfort.v1 import edge_link_pb2 as lpb
from gridfort.v1 import envelope_pb2 as epb
from security.audit_log import AuditLog
from security.clock import Clock
from security.envelope import EnvelopeSigner, check_envelope_shape, verify_signature
from security.identity import Role, SpiffeId
from security.refusals import Reason, Refusal
from security.signing_keys import EnrolledKey

CommandSink = Callable[[str, lpb.ControlMessage], bool]

_STATUS_NAMES = {
    cpb.COMMAND_STATUS_APPLIED: "applied",
    cpb.COMMAND_STATUS_REFUSED: "refused",
    cpb.COMMAND_STATUS_FAILED: "failed",
}


class CommandDispatcher:
    def __init__(
        self,
        *,
        signer: EnvelopeSigner,
        trust_domain: str,
        log: CommandLog,
        streams: StreamRegistry,
        audit: AuditLog,
        clock: Clock,
    ) -> None:
        self._signer = signer
        self._domain = trust_domain
        self._log = log
        self._streams = streams
        self._audit = audit
        self._clock = clock
        self._fallback_sinks: list[CommandSink] = []

    def send_active_power(
        self, site_id: str, asset_id: str, p_kw: float, *, ttl_s: float = 30.0
    ) -> cpb.Command | Refusal:
        """Sign and send an active-power setpoint [kW] valid for ``ttl_s`` seconds."""
        if not math.isfinite(p_kw) or not 0 < ttl_s <= 3600:
            raise ValueError("p_kw must be finite and ttl_s in (0, 3600]")
        now_ms = self._clock.now_ms()
        edge = str(SpiffeId(self._domain, Role.EDGE, site_id))
        stream = self._streams.newest_for(edge)
        sinks = [] if stream is not None else self._fallback_sinks
        command = cpb.Command(
            command_id=uuid.uuid4().hex,
            site_id=site_id,
            asset_id=asset_id,
            seq=self._log.next_seq(site_id),
            issued_ms=now_ms,
            expires_ms=now_ms + int(ttl_s * 1000),
            set_active_power=cpb.SetActivePower(p_kw=p_kw),
        )
        status = "sent" if stream is not None or sinks else "undeliverable"
        self._log.record_issued(
            site_id=site_id,
            seq=command.seq,
            command_id=command.command_id,
            asset_id=asset_id,
            p_kw=p_kw,
            issued_ms=now_ms,
            expires_ms=command.expires_ms,
            status=status,
        )
        self._audit.append(
            "command",
            decision="allow" if status == "sent" else "deny",
            identity=self._signer.signer,
            reason="" if status == "sent" else Reason.UNAVAILABLE.value,
            details={
                "site": site_id,
                "asset": asset_id,
                "seq": command.seq,
                "p_kw": p_kw,
                "command_id": command.command_id,
                "status": status,
            },
        )
        if status == "undeliverable":
            return Refusal(Reason.UNAVAILABLE, f"site {site_id} is not connected", edge)
        envelope = self._signer.sign(epb.PAYLOAD_TYPE_COMMAND, command.SerializeToString(), now_ms)
        message = lpb.ControlMessage(command=envelope)
        if stream is not None:
            stream.send(message)
        else:
            for sink in sinks:  # e.g. the site's NATS command subject
                if sink(site_id, message):
                    break
        return command

    def add_fallback_sink(self, sink: CommandSink) -> None:
        """Where commands go for a site without an open gRPC stream (e.g. NATS)."""
        self._fallback_sinks.append(sink)

    def on_result(
        self, peer: Peer, envelope: epb.SignedEnvelope, keys: Mapping[str, EnrolledKey]
    ) -> Refusal | None:
        """Verify and record an edge's signed CommandResult. Returns a refusal if it is bad."""
        refusal = self._check_result(peer, envelope, keys)
        if refusal is not None:
            self._audit.record_refusal(refusal, event="command_result")
            return refusal
        result = cpb.CommandResult.FromString(envelope.payload)
        status = _STATUS_NAMES.get(result.status, "unknown")
        known = self._log.record_result(
            site_id=peer.spiffe_id.name,
            command_id=result.command_id,
            status=status,
            reason=result.reason,
            decided_ms=result.decided_ms,
            applied_p_kw=result.applied_p_kw,
        )
        self._audit.append(
            "command_result",
            decision="allow" if status == "applied" else "deny",
            identity=peer.uri,
            reason=result.reason,
            details={"command_id": result.command_id[:64], "status": status, "known": known},
        )
        return None

    def _check_result(
        self, peer: Peer, envelope: epb.SignedEnvelope, keys: Mapping[str, EnrolledKey]
    ) -> Refusal | None:
        who = peer.uri
        shaped = check_envelope_shape(envelope)
        if isinstance(shaped, Refusal):
            return Refusal(shaped.reason, shaped.message, who)
        if envelope.payload_type != epb.PAYLOAD_TYPE_COMMAND_RESULT:
            return Refusal(Reason.WRONG_PAYLOAD_TYPE, "expected a command result", who)
        key = keys.get(envelope.key_id)
        if envelope.signer != who or key is None or key.spiffe_id != peer.spiffe_id:
            return Refusal(Reason.SIGNER_MISMATCH, "result not signed by the connected edge", who)
        if not verify_signature(envelope, key.public_key):
            return Refusal(Reason.BAD_SIGNATURE, "command result signature does not verify", who)
        try:
            result = cpb.CommandResult.FromString(envelope.payload)
        except DecodeError:
            return Refusal(Reason.MALFORMED_ENVELOPE, "payload is not a CommandResult", who)
        if result.site_id != peer.spiffe_id.name:
            return Refusal(Reason.SITE_MISMATCH, "result for another site", who)
        return None

    def status_counts(self, site_ids: list[str] | None = None) -> Mapping[str, int]:
        return self._log.status_counts(site_ids)
