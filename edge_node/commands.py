"""Command execution at the edge: verify, check freshness and replay, check local safety
limits, apply to the device, and answer with a signed result. Every decision is audited.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from google.protobuf.message import DecodeError

from edge_node.devices.base import DeviceAdapter, DeviceError, DeviceLimits, EvSession
from edge_node.safety_limits import SiteLimits, check_active_power
from gridfort.v1 import command_pb2 as cpb
from gridfort.v1 import envelope_pb2 as epb
from security import sqlite_db
from security.audit_log import AuditLog
from security.clock import Clock
from security.envelope import EnvelopeSigner, check_envelope_shape, verify_signature
from security.refusals import Reason, Refusal

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class TrustedController:
    """The control plane whose commands this edge obeys (learned at enrollment)."""

    spiffe_id: str
    key_id: str
    public_key: Ed25519PublicKey


class CommandSeqStore:
    """Highest command sequence number applied or refused, persisted (replay protection)."""

    def __init__(self, path: Path) -> None:
        self._lock = threading.Lock()
        self._conn = sqlite_db.open_persistent(path)
        self._conn.execute(
            "CREATE TABLE IF NOT EXISTS command_hwm (id INTEGER PRIMARY KEY, seq INTEGER)"
        )
        self._conn.execute("INSERT OR IGNORE INTO command_hwm VALUES (1, 0)")

    def get(self) -> int:
        with self._lock:
            return int(self._conn.execute("SELECT seq FROM command_hwm").fetchone()[0])

    def advance(self, seq: int) -> None:
        with self._lock:
            self._conn.execute("UPDATE command_hwm SET seq = MAX(seq, ?)", (seq,))

    def close(self) -> None:
        with self._lock:
            self._conn.close()


@dataclass
class DeviceState:
    """What the executor knows of one device: adapter, ratings and latest SOC."""

    adapter: DeviceAdapter
    limits: DeviceLimits
    soc_pct: float | None = None


class CommandExecutor:
    def __init__(
        self,
        *,
        site_id: str,
        controller: TrustedController,
        devices: Mapping[str, DeviceState],
        signer: EnvelopeSigner,
        seq_store: CommandSeqStore,
        audit: AuditLog,
        clock: Clock,
        site_limits: SiteLimits | None = None,
        max_skew_ms: int = 5_000,
    ) -> None:
        self._site = site_id
        self._controller = controller
        self._devices = devices
        self._signer = signer
        self._seq = seq_store
        self._audit = audit
        self._clock = clock
        self._limits = site_limits or SiteLimits()
        self._skew = max_skew_ms
        self.applied = 0
        self.refused = 0

    async def handle(self, envelope: epb.SignedEnvelope) -> epb.SignedEnvelope:
        """Decide on one command envelope and return the signed CommandResult."""
        now_ms = self._clock.now_ms()
        command = cpb.Command()
        checked = self._verify(envelope, command, now_ms)
        if isinstance(checked, Refusal):
            return self._answer(command, cpb.COMMAND_STATUS_REFUSED, checked, 0.0)
        state = checked
        self._seq.advance(command.seq)  # before any await: a seq is used exactly once
        p_kw = command.set_active_power.p_kw
        ev = await self._ev_session(state)
        problem = check_active_power(
            state.adapter.kind,
            p_kw,
            state.limits,
            soc_pct=state.soc_pct,
            ev=ev,
            site=self._limits,
            now_ms=now_ms,
        )
        if problem is not None:
            return self._answer(
                command, cpb.COMMAND_STATUS_REFUSED, Refusal(Reason.COMMAND_UNSAFE, problem), 0.0
            )
        try:
            applied = await state.adapter.apply_active_power(p_kw, now_ms)
        except DeviceError as e:
            refusal = Refusal(Reason.DEVICE_WRITE_FAILED, str(e))
            return self._answer(command, cpb.COMMAND_STATUS_FAILED, refusal, 0.0)
        return self._answer(command, cpb.COMMAND_STATUS_APPLIED, None, applied.p_kw)

    def _verify(
        self, envelope: epb.SignedEnvelope, command: cpb.Command, now_ms: int
    ) -> DeviceState | Refusal:
        ctl = self._controller
        shaped = check_envelope_shape(envelope)
        if isinstance(shaped, Refusal) or envelope.payload_type != epb.PAYLOAD_TYPE_COMMAND:
            return Refusal(Reason.COMMAND_MALFORMED, "not a well-formed command envelope")
        if envelope.signer != ctl.spiffe_id or envelope.key_id != ctl.key_id:
            return Refusal(Reason.COMMAND_BAD_SIGNATURE, "command not signed by our control plane")
        if not verify_signature(envelope, ctl.public_key):
            return Refusal(Reason.COMMAND_BAD_SIGNATURE, "command signature does not verify")
        try:
            command.ParseFromString(envelope.payload)
        except DecodeError:
            return Refusal(Reason.COMMAND_MALFORMED, "payload is not a Command")
        if command.site_id != self._site:
            return Refusal(Reason.COMMAND_WRONG_SITE, f"command is for site {command.site_id[:64]}")
        if command.WhichOneof("action") != "set_active_power":
            return Refusal(Reason.COMMAND_MALFORMED, "command carries no known action")
        if now_ms > command.expires_ms or command.issued_ms > now_ms + self._skew:
            return Refusal(Reason.COMMAND_EXPIRED, "command is expired or issued in the future")
        if command.seq <= self._seq.get():
            return Refusal(Reason.COMMAND_REPLAYED, f"command seq {command.seq} was already used")
        state = self._devices.get(command.asset_id)
        if state is None:
            return Refusal(Reason.COMMAND_UNKNOWN_ASSET, f"no asset {command.asset_id[:64]!r} here")
        return state

    async def _ev_session(self, state: DeviceState) -> EvSession | None:
        session = getattr(state.adapter, "session", None)
        if session is None:
            return None
        try:
            result: EvSession = await session()
        except DeviceError:
            return None
        return result

    def _answer(
        self, command: cpb.Command, status: int, refusal: Refusal | None, applied_p_kw: float
    ) -> epb.SignedEnvelope:
        now_ms = self._clock.now_ms()
        if status == cpb.COMMAND_STATUS_APPLIED:
            self.applied += 1
            self._audit.append(
                "command_applied",
                decision="allow",
                identity=self._controller.spiffe_id,
                details={
                    "command_id": command.command_id,
                    "asset": command.asset_id,
                    "p_kw": applied_p_kw,
                    "seq": command.seq,
                },
            )
        else:
            self.refused += 1
            assert refusal is not None
            self._audit.record_refusal(
                Refusal(
                    refusal.reason,
                    refusal.message,
                    self._controller.spiffe_id,
                    {"command_id": command.command_id[:64], "seq": command.seq},
                ),
                event="command",
            )
            log.warning("command %s refused: %s", command.command_id[:16], refusal.message)
        result = cpb.CommandResult(
            command_id=command.command_id,
            site_id=self._site,
            command_seq=command.seq,
            status=status,  # type: ignore[arg-type]
            reason=refusal.reason.value if refusal else "",
            message=refusal.message if refusal else "",
            decided_ms=now_ms,
            applied_p_kw=applied_p_kw,
        )
        return self._signer.sign(
            epb.PAYLOAD_TYPE_COMMAND_RESULT, result.SerializeToString(), now_ms
        )
