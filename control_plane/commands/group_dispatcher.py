"""Send per-site setpoints as group messages, each signed ONCE, and collect the sites' answers.

``send`` packs the sites' sections into groups (:mod:`control_plane.commands.group_messages`),
gives each group the next group sequence number (strictly increasing for this control
plane's signing key, persisted in the command log), signs its serialized Command once,
audits each chunk of groups (ids, sequence numbers, payload digests), and hands the same
signed message to every site it names, over the same delivery as
single commands (the site's gRPC stream, else a fallback sink such as NATS). A site that
cannot be reached gets nothing (setpoints are time-critical, never queued to arrive late).

Each site answers with one signed CommandResult for its section; the command dispatcher
verifies the edge's signature and routes it here (:meth:`GroupDispatcher.on_result`).
Answers are audited one by one, written to the command log in batches (one transaction
per ``flush_delay_s``), and passed to listeners as :class:`GroupAck` (dispatch tracking).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any

from control_plane.commands.command_log import CommandLog, GroupSiteResult, IssuedGroup
from control_plane.commands.dispatcher import CommandDispatcher
from control_plane.commands.group_messages import (
    DEFAULT_MAX_PAYLOAD_BYTES,
    DEFAULT_MAX_SITES,
    SiteSetpoints,
    group_command,
    pack,
)
from control_plane.ingest.types import Peer
from gridfort.v1 import command_pb2 as cpb
from gridfort.v1 import edge_link_pb2 as lpb
from gridfort.v1 import envelope_pb2 as epb
from security.audit_log import AuditLog
from security.clock import Clock
from security.envelope import EnvelopeSigner
from security.refusals import Reason, Refusal

log = logging.getLogger(__name__)

_STATUS = {
    cpb.COMMAND_STATUS_APPLIED: "applied",
    cpb.COMMAND_STATUS_PARTIAL: "partial",
    cpb.COMMAND_STATUS_REFUSED: "refused",
    cpb.COMMAND_STATUS_FAILED: "failed",
}
PENDING_GRACE_MS = 60_000  # answers are matched until expiry + this
AUDIT_CHUNK = 32  # groups signed, audited (one record) and handed over at a time


@dataclass(frozen=True, slots=True)
class GroupAck:
    """One site's verified answer to a group: the section as sent [kW, commanded] and what
    the edge read back after applying [kW] (NaN where an entry was not applied)."""

    group_id: str
    activation_id: str
    site_id: str
    status: str  # applied | partial | refused | failed
    reason: str
    asset_ids: tuple[str, ...]
    commanded_kw: tuple[float, ...]
    applied_kw: tuple[float, ...]
    decided_ms: int
    received_ms: int
    applied_entries: int


@dataclass
class GroupSend:
    """What one :meth:`GroupDispatcher.send` did."""

    activation_id: str
    issued_ms: int
    expires_ms: int
    group_ids: list[str] = field(default_factory=list)
    sites_sent: int = 0
    entries_sent: int = 0
    undeliverable: list[str] = field(default_factory=list)
    payload_bytes: int = 0  # sum over group messages (each signed once)

    @property
    def signatures(self) -> int:
        return len(self.group_ids)


@dataclass
class _Pending:
    activation_id: str
    group_seq: int
    expires_ms: int
    sections: dict[str, SiteSetpoints]
    answered: set[str] = field(default_factory=set)


AckListener = Callable[[GroupAck], None]


class GroupDispatcher:
    def __init__(
        self,
        *,
        commands: CommandDispatcher,
        signer: EnvelopeSigner,
        log: CommandLog,
        audit: AuditLog,
        clock: Clock,
        max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES,
        max_sites_per_group: int = DEFAULT_MAX_SITES,
        flush_delay_s: float = 0.05,
    ) -> None:
        self._commands = commands
        self._signer = signer
        self._log = log
        self._audit = audit
        self._clock = clock
        self.max_payload_bytes = max_payload_bytes
        self.max_sites_per_group = max_sites_per_group
        self._flush_delay_s = flush_delay_s
        self._next_seq = log.next_group_seq()
        self._pending: dict[str, _Pending] = {}
        self._listeners: list[AckListener] = []
        self._buffer: list[GroupSiteResult] = []
        self._flush_handle: asyncio.TimerHandle | None = None
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="group-log")
        commands.add_result_router(self.on_result)

    def add_listener(self, listener: AckListener) -> None:
        self._listeners.append(listener)

    def send(
        self, sections: Sequence[SiteSetpoints], *, ttl_s: float, activation_id: str
    ) -> GroupSend:
        """Sign and deliver ``sections`` as group messages valid for ``ttl_s`` seconds."""
        report, packed = self._prepare(sections, ttl_s, activation_id)
        for i in range(0, len(packed), AUDIT_CHUNK):
            self._issue(packed[i : i + AUDIT_CHUNK], report)
        self._finish(report)
        return report

    async def send_async(
        self, sections: Sequence[SiteSetpoints], *, ttl_s: float, activation_id: str
    ) -> GroupSend:
        """:meth:`send` for a time-critical fan-out: after every chunk of groups it yields
        to the event loop, so the streams carry the first groups while the next are signed;
        the results of the first sites wait until every group is out
        (:meth:`CommandDispatcher.hold_results`)."""
        report, packed = self._prepare(sections, ttl_s, activation_id)
        with self._commands.hold_results():  # the CPU to the sites still waiting
            for i in range(0, len(packed), AUDIT_CHUNK):
                self._issue(packed[i : i + AUDIT_CHUNK], report)
                await asyncio.sleep(0)
        self._finish(report)
        return report

    def _prepare(
        self, sections: Sequence[SiteSetpoints], ttl_s: float, activation_id: str
    ) -> tuple[GroupSend, list[list[SiteSetpoints]]]:
        if not 0 < ttl_s <= 3600:
            raise ValueError("ttl_s must be in (0, 3600]")
        now_ms = self._clock.now_ms()
        report = GroupSend(activation_id, now_ms, now_ms + int(ttl_s * 1000))
        self._purge(now_ms)
        reachable: list[SiteSetpoints] = []
        for section in sections:
            if self._commands.can_deliver(section.site_id):
                reachable.append(section)
            else:
                report.undeliverable.append(section.site_id)
        packed = pack(
            reachable, max_payload_bytes=self.max_payload_bytes, max_sites=self.max_sites_per_group
        )
        return report, packed

    def _issue(self, chunk: list[list[SiteSetpoints]], report: GroupSend) -> None:
        """Sign each group of ``chunk`` once, audit them (one record), hand them to the
        sites' transports, and queue the command-log write."""
        built = [self._build(members, report) for members in chunk]
        self._audit.append(
            "group_command",
            decision="allow",
            identity=self._signer.signer,
            details={
                "activation": report.activation_id[:64],
                "groups": [
                    {
                        "group_id": issued.group_id,
                        "group_seq": issued.group_seq,
                        "sites": len(issued.sites),
                        "entries": sum(n for _, n in issued.sites),
                        "payload_sha256": issued.payload_sha256,
                        "payload_bytes": payload_bytes,
                    }
                    for issued, _, payload_bytes in built
                ],
            },
        )
        delivered = [self._deliver(issued, message, report) for issued, message, _ in built]
        self._write(self._log.record_groups, delivered)

    def _finish(self, report: GroupSend) -> None:
        if report.undeliverable:
            self._audit.append(
                "group_command",
                decision="deny",
                identity=self._signer.signer,
                reason=Reason.UNAVAILABLE.value,
                details={
                    "activation": report.activation_id[:64],
                    "undeliverable": len(report.undeliverable),
                    "sites": report.undeliverable[:32],
                },
            )

    def _build(
        self, members: list[SiteSetpoints], report: GroupSend
    ) -> tuple[IssuedGroup, lpb.ControlMessage, int]:
        """Sign one group (once) and register it as pending."""
        seq, self._next_seq = self._next_seq, self._next_seq + 1
        group_id = uuid.uuid4().hex
        command = group_command(
            group_id=group_id,
            group_seq=seq,
            issued_ms=report.issued_ms,
            expires_ms=report.expires_ms,
            activation_id=report.activation_id,
            sections=members,
        )
        payload = command.SerializeToString()
        envelope = self._signer.sign(epb.PAYLOAD_TYPE_COMMAND, payload, report.issued_ms)
        issued = IssuedGroup(
            group_seq=seq,
            group_id=group_id,
            activation_id=report.activation_id,
            issued_ms=report.issued_ms,
            expires_ms=report.expires_ms,
            payload_sha256=hashlib.sha256(payload).hexdigest(),
            sites=[(s.site_id, len(s.p_kw)) for s in members],
        )
        self._pending[group_id] = _Pending(
            report.activation_id, seq, report.expires_ms, {s.site_id: s for s in members}
        )
        report.group_ids.append(group_id)
        report.payload_bytes += len(payload)
        return issued, lpb.ControlMessage(command=envelope), len(payload)

    def _deliver(
        self, issued: IssuedGroup, message: lpb.ControlMessage, report: GroupSend
    ) -> IssuedGroup:
        """The same signed message to every site the group names; the group as delivered."""
        lost = []
        for site_id, entries in issued.sites:
            if self._commands.deliver(site_id, message):
                report.sites_sent += 1
                report.entries_sent += entries
            else:
                lost.append(site_id)
        if not lost:
            return issued
        report.undeliverable.extend(lost)
        pending = self._pending.get(issued.group_id)
        if pending is not None:  # a lost site will not answer
            for site_id in lost:
                pending.sections.pop(site_id, None)
        return replace(issued, lost=frozenset(lost))

    def on_result(self, peer: Peer, result: cpb.CommandResult) -> bool:
        """A verified result from ``peer``: claimed (True) if it answers a pending group."""
        pending = self._pending.get(result.command_id)
        if pending is None:
            return False
        site = peer.spiffe_id.name
        section = pending.sections.get(site)
        if section is None:
            self._refuse(peer, result, Refusal(Reason.SITE_MISMATCH, "no section for this site"))
            return True
        refusal: Refusal | None = None
        if site in pending.answered:
            refusal = Refusal(Reason.REPLAYED_SEQUENCE, "this site already answered the group")
        elif result.command_seq != pending.group_seq:
            refusal = Refusal(Reason.MALFORMED_ENVELOPE, "result names another group seq")
        elif result.status not in _STATUS:
            refusal = Refusal(Reason.MALFORMED_ENVELOPE, "result has no known status")
        elif result.status in (cpb.COMMAND_STATUS_APPLIED, cpb.COMMAND_STATUS_PARTIAL) and len(
            result.entry_applied_p_kw
        ) != len(section.p_kw):
            refusal = Refusal(Reason.MALFORMED_ENVELOPE, "result does not cover every entry")
        if refusal is not None:
            self._refuse(peer, result, refusal)
            return True
        pending.answered.add(site)
        self._record(peer, result, pending, section)
        if len(pending.answered) == len(pending.sections):
            del self._pending[result.command_id]
        return True

    def _refuse(self, peer: Peer, result: cpb.CommandResult, refusal: Refusal) -> None:
        self._audit.record_refusal(
            Refusal(refusal.reason, refusal.message, peer.uri, {"group_id": result.command_id}),
            event="group_result",
        )

    def _record(
        self, peer: Peer, result: cpb.CommandResult, pending: _Pending, section: SiteSetpoints
    ) -> None:
        status = _STATUS[result.status]
        applied = tuple(result.entry_applied_p_kw) or (math.nan,) * len(section.p_kw)
        ack = GroupAck(
            applied_entries=len(applied) - sum(map(math.isnan, applied)),
            group_id=result.command_id,
            activation_id=pending.activation_id,
            site_id=section.site_id,
            status=status,
            reason=result.reason,
            asset_ids=section.asset_ids,
            commanded_kw=section.p_kw,
            applied_kw=applied,
            decided_ms=result.decided_ms,
            received_ms=self._clock.now_ms(),
        )
        self._buffer.append(
            (
                status,
                result.reason[:64],
                ack.applied_entries,
                result.decided_ms,
                result.applied_p_kw,
                ack.group_id,
                ack.site_id,
            )
        )
        self._schedule_flush()
        for listener in self._listeners:
            listener(ack)

    def _schedule_flush(self) -> None:
        if self._flush_handle is not None:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self.flush()
            return
        self._flush_handle = loop.call_later(self._flush_delay_s, self._flush_buffer)

    def _flush_buffer(self) -> None:
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        buffer, self._buffer = self._buffer, []
        if buffer:
            self._audit_results(buffer)
            self._write(self._log.record_group_results, buffer)

    def _audit_results(self, rows: list[GroupSiteResult]) -> None:
        """One audit record for the answers that arrived since the last flush (each was
        verified against its edge's enrolled key first); deny if any was not applied."""
        denied = [a for a in rows if a[0] not in ("applied", "partial")]
        self._audit.append(
            "group_result",
            decision="deny" if denied else "allow",
            identity=self._signer.signer,
            reason=denied[0][1] if denied else "",
            details={
                "answers": [
                    {
                        "group_id": a[5],
                        "site": a[6],
                        "status": a[0],
                        "applied": a[2],
                        "reason": a[1],
                    }
                    for a in rows
                ],
            },
        )

    def _write(self, write: Callable[[list[Any]], object], rows: list[Any]) -> None:
        """Command-log writes (each one fsync) run in one worker thread, in order, so the
        event loop that delivers setpoints and reads results never waits for the disk."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            _logged(write, rows)
            return
        self._writer.submit(_logged, write, rows)

    def flush(self) -> None:
        """Write buffered answers and wait until every queued command-log write is done."""
        self._flush_buffer()
        self._writer.submit(lambda: None).result()

    def close(self) -> None:
        self.flush()
        self._writer.shutdown(wait=True)

    def pending_sites(self, group_id: str) -> set[str]:
        """Sites of a pending group that have not answered yet."""
        pending = self._pending.get(group_id)
        return set() if pending is None else set(pending.sections) - pending.answered

    def _purge(self, now_ms: int) -> None:
        expired = [g for g, p in self._pending.items() if p.expires_ms + PENDING_GRACE_MS < now_ms]
        for group_id in expired:
            del self._pending[group_id]


def _logged(write: Callable[[list[Any]], object], rows: list[Any]) -> None:
    try:
        write(rows)
    except Exception:  # the audit log already holds every group and every answer
        log.exception("command log write of %d rows failed", len(rows))
