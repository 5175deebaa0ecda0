"""Issue signed commands to connected edges and record their signed results.

Every command is signed by the control plane's Ed25519 key (the edge learned
its public key at enrollment), carries a per-site strictly increasing sequence
number and an expiry, and is audited. A site that is not connected gets no
command (status ``undeliverable``): setpoints are time-critical and are never
queued to arrive late.

Single-site commands are a setpoint (``send_active_power``) or the arming of local
frequency response (``send_frequency_arming``). Group messages are sent by
:class:`~control_plane.commands.group_dispatcher.GroupDispatcher`, which shares this
dispatcher's delivery (streams, fallback sinks) and receives its sites' results
through :meth:`CommandDispatcher.add_result_router`.
"""

from __future__ import annotations

import asyncio
import math
import uuid
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager

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

#: Results queued behind a fan-out at most (:meth:`CommandDispatcher.hold_results`).
MAX_HELD_RESULTS = 100_000
#: Held results handled per event-loop turn once the fan-out is done.
DRAIN_CHUNK = 64

CommandSink = Callable[[str, lpb.ControlMessage], bool]
#: Claims a verified result (returns True) that is not for a single-site command.
ResultRouter = Callable[[Peer, cpb.CommandResult], bool]

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
        self._routers: list[ResultRouter] = []
        self._edge_uris: dict[str, str] = {}
        # Results that arrived during a time-critical fan-out (see hold_results).
        self._held: deque[tuple[Peer, epb.SignedEnvelope, Mapping[str, EnrolledKey]]] = deque()
        self._holds = 0
        self._drain_scheduled = False
        self.max_held_results = MAX_HELD_RESULTS

    def send_active_power(
        self, site_id: str, asset_id: str, p_kw: float, *, ttl_s: float = 30.0
    ) -> cpb.Command | Refusal:
        """Sign and send an active-power setpoint [kW] valid for ``ttl_s`` seconds."""
        if not math.isfinite(p_kw):
            raise ValueError("p_kw must be finite")
        command = cpb.Command(asset_id=asset_id, set_active_power=cpb.SetActivePower(p_kw=p_kw))
        return self._send_single(site_id, command, ttl_s, {"asset": asset_id, "p_kw": p_kw})

    def send_frequency_arming(
        self, site_id: str, arming: cpb.ArmFrequencyResponse, *, ttl_s: float = 30.0
    ) -> cpb.Command | Refusal:
        """Sign and send the site's frequency-response arming (droop/trigger parameters);
        the command must reach the edge within ``ttl_s`` seconds, the arming itself holds
        from ``arming.active_from_ms`` to ``arming.active_until_ms``."""
        command = cpb.Command(arm_frequency_response=arming)
        details: dict[str, object] = {
            "assets": [a.asset_id for a in arming.assets][:64],
            "active_from_ms": arming.active_from_ms,
            "active_until_ms": arming.active_until_ms,
        }
        return self._send_single(site_id, command, ttl_s, details)

    def _send_single(
        self, site_id: str, command: cpb.Command, ttl_s: float, details: dict[str, object]
    ) -> cpb.Command | Refusal:
        if not 0 < ttl_s <= 3600:
            raise ValueError("ttl_s must be in (0, 3600]")
        now_ms = self._clock.now_ms()
        edge = str(SpiffeId(self._domain, Role.EDGE, site_id))
        stream = self._streams.newest_for(edge)
        sinks = [] if stream is not None else self._fallback_sinks
        command.command_id = uuid.uuid4().hex
        command.site_id = site_id
        command.seq = self._log.next_seq(site_id)
        command.issued_ms = now_ms
        command.expires_ms = now_ms + int(ttl_s * 1000)
        action = command.WhichOneof("action") or ""
        p_kw = command.set_active_power.p_kw
        status = "sent" if stream is not None or sinks else "undeliverable"
        self._log.record_issued(
            site_id=site_id,
            seq=command.seq,
            command_id=command.command_id,
            asset_id=command.asset_id,
            p_kw=p_kw,
            issued_ms=now_ms,
            expires_ms=command.expires_ms,
            status=status,
            action=action,
        )
        self._audit.append(
            "command",
            decision="allow" if status == "sent" else "deny",
            identity=self._signer.signer,
            reason="" if status == "sent" else Reason.UNAVAILABLE.value,
            details={
                "site": site_id,
                "action": action,
                "seq": command.seq,
                "command_id": command.command_id,
                "status": status,
                **details,
            },
        )
        if status == "undeliverable":
            return Refusal(Reason.UNAVAILABLE, f"site {site_id} is not connected", edge)
        envelope = self._signer.sign(epb.PAYLOAD_TYPE_COMMAND, command.SerializeToString(), now_ms)
        if self.deliver(site_id, lpb.ControlMessage(command=envelope)):
            return command
        refusal = Refusal(Reason.UNAVAILABLE, f"no transport took the command for {site_id}", edge)
        self._log.record_result(
            site_id=site_id,
            command_id=command.command_id,
            status="undeliverable",
            reason=refusal.reason.value,
            decided_ms=now_ms,
            applied_p_kw=0.0,
        )
        self._audit.record_refusal(refusal, event="command")
        return refusal

    def deliver(self, site_id: str, message: lpb.ControlMessage) -> bool:
        """Hand a signed message to the site's newest gRPC stream, else to the first
        fallback sink that takes it (e.g. the site's NATS command subject)."""
        stream = self._streams.newest_for(self._edge_uri(site_id))
        if stream is not None:
            stream.send(message)
            return True
        return any(sink(site_id, message) for sink in self._fallback_sinks)

    def can_deliver(self, site_id: str) -> bool:
        """True if the site has an open stream or a fallback sink exists."""
        return self._streams.newest_for(self._edge_uri(site_id)) is not None or bool(
            self._fallback_sinks
        )

    def _edge_uri(self, site_id: str) -> str:
        """The site's edge SPIFFE ID (validated once per site, then cached)."""
        uri = self._edge_uris.get(site_id)
        if uri is None:
            uri = self._edge_uris[site_id] = str(SpiffeId(self._domain, Role.EDGE, site_id))
        return uri

    def add_fallback_sink(self, sink: CommandSink) -> None:
        """Where commands go for a site without an open gRPC stream (e.g. NATS)."""
        self._fallback_sinks.append(sink)

    def add_result_router(self, router: ResultRouter) -> None:
        """Verified results that are not for a single-site command go to the first router
        that claims them (group messages)."""
        self._routers.append(router)

    @contextmanager
    def hold_results(self) -> Iterator[None]:
        """While a fan-out signs and hands out commands, the results of the first sites
        (a signature check each, ~0.1 ms) wait, so the CPU goes to the sites still waiting
        for their setpoints. When the last hold ends they are verified and recorded in
        arrival order, ``DRAIN_CHUNK`` at a time between other work on the event loop
        (results arriving meanwhile queue behind them). At most ``max_held_results``
        wait; beyond that they are handled at once. Holds nest."""
        self._holds += 1
        try:
            yield
        finally:
            self._holds -= 1
            if self._holds == 0 and self._held:
                self._schedule_drain()

    def _schedule_drain(self) -> None:
        if self._drain_scheduled:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no event loop: a synchronous caller, handle them now
            self.release_held_results()
            return
        self._drain_scheduled = True
        loop.call_soon(self._drain_chunk)

    def _drain_chunk(self) -> None:
        self._drain_scheduled = False
        if self._holds:
            return  # a new fan-out began: its end schedules the rest
        for _ in range(min(DRAIN_CHUNK, len(self._held))):
            self._handle_result(*self._held.popleft())
        if self._held:
            self._schedule_drain()

    def release_held_results(self) -> int:
        """Handle every held result now; returns how many there were."""
        n = 0
        while self._held:
            self._handle_result(*self._held.popleft())
            n += 1
        return n

    @property
    def held_results(self) -> int:
        return len(self._held)

    def on_result(
        self, peer: Peer, envelope: epb.SignedEnvelope, keys: Mapping[str, EnrolledKey]
    ) -> Refusal | None:
        """Verify and record an edge's signed CommandResult. Returns a refusal if it is bad,
        None if it was accepted or queued behind a fan-out (:meth:`hold_results`)."""
        if (self._holds or self._held) and len(self._held) < self.max_held_results:
            self._held.append((peer, envelope, keys))
            if not self._holds:
                self._schedule_drain()
            return None
        return self._handle_result(peer, envelope, keys)

    def _handle_result(
        self, peer: Peer, envelope: epb.SignedEnvelope, keys: Mapping[str, EnrolledKey]
    ) -> Refusal | None:
        result = self._check_result(peer, envelope, keys)
        if isinstance(result, Refusal):
            self._audit.record_refusal(result, event="command_result")
            return result
        if any(router(peer, result) for router in self._routers):
            return None
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
    ) -> cpb.CommandResult | Refusal:
        """The verified, parsed result, or why it is refused."""
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
        return result

    def status_counts(self, site_ids: list[str] | None = None) -> Mapping[str, int]:
        return self._log.status_counts(site_ids)
