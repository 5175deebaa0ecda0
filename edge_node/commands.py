"""Command execution at the edge: verify, check freshness and replay, check local safety
limits, apply to the device, and answer with a signed result. Every decision is audited.

Three actions arrive in a signed ``Command``:

* ``set_active_power``: one asset, per-site strictly increasing ``seq``;
* ``group_setpoints``: a message signed once for many sites; this edge takes its own
  section (:mod:`edge_node.group_sections`), replay-protected by ``group_seq`` (strictly
  increasing per control-plane key, high-water mark on disk) and by refusing groups
  issued before this edge's replay state began; one signed result per section;
* ``arm_frequency_response``: signed droop/trigger parameters, per-site ``seq``, handed
  to the local frequency responder (:mod:`edge_node.frequency_response`).
"""

from __future__ import annotations

import asyncio
import logging
import math
import sqlite3
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple, Protocol

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from google.protobuf.message import DecodeError

from edge_node.devices.base import DeviceAdapter, DeviceError, DeviceLimits, EvSession
from edge_node.group_sections import check_group_header, own_section, section_status
from edge_node.safety_limits import SiteLimits, check_active_power
from gridfort.v1 import command_pb2 as cpb
from gridfort.v1 import envelope_pb2 as epb
from security import sqlite_db
from security.audit_log import AuditLog
from security.clock import Clock
from security.envelope import EnvelopeSigner, check_envelope_shape, verify_signature
from security.refusals import Reason, Refusal

log = logging.getLogger(__name__)

MAX_COMMAND_PAYLOAD_BYTES = 256 * 1024  # checked before the signature: a cheap refusal
MAX_VALIDITY_MS = 3_600_000  # expires_ms - issued_ms of any command
_ACTIONS = frozenset({"set_active_power", "group_setpoints", "arm_frequency_response"})
_REFUSALS_AUDITED = 16  # per group section; the count is always audited


@dataclass(frozen=True, slots=True)
class TrustedController:
    """The control plane whose commands this edge obeys (learned at enrollment)."""

    spiffe_id: str
    key_id: str
    public_key: Ed25519PublicKey


class CommandSeqStore:
    """Replay state, persisted: the highest per-site command sequence number applied or
    refused, and per control-plane key the highest group sequence number and the instant
    this edge's group replay state began (groups issued before it are refused)."""

    def __init__(self, path: Path) -> None:
        self._lock = threading.Lock()
        self._conn = sqlite_db.open_persistent(path)
        self._conn.execute(
            "CREATE TABLE IF NOT EXISTS command_hwm (id INTEGER PRIMARY KEY, seq INTEGER)"
        )
        self._conn.execute("INSERT OR IGNORE INTO command_hwm VALUES (1, 0)")
        self._conn.execute(
            "CREATE TABLE IF NOT EXISTS group_hwm (key_id TEXT PRIMARY KEY,"
            " seq INTEGER NOT NULL, floor_ms INTEGER NOT NULL)"
        )
        self._groups: dict[str, tuple[int, int]] = {}

    def get(self) -> int:
        with self._lock:
            return int(self._conn.execute("SELECT seq FROM command_hwm").fetchone()[0])

    def advance(self, seq: int) -> None:
        with self._lock:
            self._conn.execute("UPDATE command_hwm SET seq = MAX(seq, ?)", (seq,))

    def group_state(self, key_id: str, now_ms: int) -> tuple[int, int]:
        """(group high-water mark, floor [Unix ms]) for ``key_id``; the first call for a key
        starts its replay state at ``now_ms``. Cached: this store has a single owner, and
        the cache changes only after the write to disk succeeded."""
        with self._lock:
            cached = self._groups.get(key_id)
            if cached is not None:
                return cached
            row = self._conn.execute(
                "SELECT seq, floor_ms FROM group_hwm WHERE key_id = ?", (key_id,)
            ).fetchone()
            if row is None:
                self._conn.execute("INSERT INTO group_hwm VALUES (?, 0, ?)", (key_id, int(now_ms)))
                row = (0, int(now_ms))
            state = self._groups[key_id] = (int(row[0]), int(row[1]))
            return state

    def reserve_group(self, key_id: str, seq: int) -> None:
        """Mark ``seq`` used in memory (no I/O): from now on it is refused in this process.
        Call :meth:`persist_group` before acting on it."""
        with self._lock:
            cached = self._groups.get(key_id)
            if cached is None:
                raise RuntimeError("reserve_group before group_state")
            self._groups[key_id] = (max(cached[0], seq), cached[1])

    def persist_group(self, key_id: str, seq: int) -> None:
        """Write ``seq`` as used to disk (one fsync); safe to call from a worker thread."""
        with self._lock:
            self._conn.execute(
                "UPDATE group_hwm SET seq = MAX(seq, ?) WHERE key_id = ?", (seq, key_id)
            )

    def close(self) -> None:
        with self._lock:
            self._conn.close()


@dataclass
class DeviceState:
    """What the executor knows of one device: adapter, ratings and latest SOC. Writes to
    the device (commands, frequency response) hold ``write_lock``."""

    adapter: DeviceAdapter
    limits: DeviceLimits
    soc_pct: float | None = None
    write_lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class FrequencyArming(Protocol):
    """The local frequency responder, as the executor sees it."""

    def check(self, arming: cpb.ArmFrequencyResponse, now_ms: int) -> Refusal | None: ...

    async def arm(self, arming: cpb.ArmFrequencyResponse, now_ms: int) -> Refusal | None: ...

    def set_base(self, asset_id: str, p_kw: float) -> None: ...


class _Outcome(NamedTuple):
    """One setpoint's fate: a CommandStatus, the read-back value [kW], why not applied (a
    tuple: one is built per asset of a section, on the hot path)."""

    status: int
    applied_p_kw: float
    refusal: Refusal | None = None


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
        frequency: FrequencyArming | None = None,
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
        self._frequency = frequency
        self._seq.group_state(controller.key_id, clock.now_ms())  # replay state begins now
        self.applied = 0
        self.refused = 0

    async def handle(self, envelope: epb.SignedEnvelope) -> epb.SignedEnvelope:
        """Decide on one command envelope and return the signed CommandResult."""
        now_ms = self._clock.now_ms()
        command = cpb.Command()
        refusal = self._open(envelope, command, now_ms)
        if refusal is not None:
            return self._refuse(command, refusal)
        action = command.WhichOneof("action")
        if action == "group_setpoints":
            return await self._group(command, now_ms)
        checked = self._check_single(command)
        if isinstance(checked, Refusal):
            return self._refuse(command, checked)
        if action == "arm_frequency_response":
            return await self._arm(command, now_ms)
        self._seq.advance(command.seq)  # before any await: a seq is used exactly once
        outcome = await self._apply(
            checked, command.asset_id, command.set_active_power.p_kw, now_ms
        )
        return self._answer(command, outcome.status, outcome.refusal, outcome.applied_p_kw)

    # -- checks shared by every action ---------------------------------------------------

    def _open(
        self, envelope: epb.SignedEnvelope, command: cpb.Command, now_ms: int
    ) -> Refusal | None:
        ctl = self._controller
        shaped = check_envelope_shape(envelope)
        if isinstance(shaped, Refusal) or envelope.payload_type != epb.PAYLOAD_TYPE_COMMAND:
            return Refusal(Reason.COMMAND_MALFORMED, "not a well-formed command envelope")
        if len(envelope.payload) > MAX_COMMAND_PAYLOAD_BYTES:
            return Refusal(
                Reason.OVERSIZED,
                f"command is {len(envelope.payload)} bytes; limit {MAX_COMMAND_PAYLOAD_BYTES}",
            )
        if envelope.signer != ctl.spiffe_id or envelope.key_id != ctl.key_id:
            return Refusal(Reason.COMMAND_BAD_SIGNATURE, "command not signed by our control plane")
        if not verify_signature(envelope, ctl.public_key):
            return Refusal(Reason.COMMAND_BAD_SIGNATURE, "command signature does not verify")
        try:
            command.ParseFromString(envelope.payload)
        except DecodeError:
            command.Clear()
            return Refusal(Reason.COMMAND_MALFORMED, "payload is not a Command")
        if command.WhichOneof("action") not in _ACTIONS:
            return Refusal(Reason.COMMAND_MALFORMED, "command carries no known action")
        if command.expires_ms - command.issued_ms > MAX_VALIDITY_MS:
            return Refusal(Reason.COMMAND_EXPIRED, "command validity is longer than one hour")
        if now_ms > command.expires_ms or command.issued_ms > now_ms + self._skew:
            return Refusal(Reason.COMMAND_EXPIRED, "command is expired or issued in the future")
        return None

    def _check_single(self, command: cpb.Command) -> DeviceState | Refusal | None:
        """Site and per-site seq of a single-site action; its device (None for arming)."""
        if command.site_id != self._site:
            return Refusal(Reason.COMMAND_WRONG_SITE, f"command is for site {command.site_id[:64]}")
        if command.seq <= self._seq.get():
            return Refusal(Reason.COMMAND_REPLAYED, f"command seq {command.seq} was already used")
        if command.WhichOneof("action") != "set_active_power":
            return None
        state = self._devices.get(command.asset_id)
        if state is None:
            return Refusal(Reason.COMMAND_UNKNOWN_ASSET, f"no asset {command.asset_id[:64]!r} here")
        return state

    # -- applying setpoints --------------------------------------------------------------

    async def _apply(
        self, state: DeviceState | None, asset_id: str, p_kw: float, now_ms: int
    ) -> _Outcome:
        """Check one setpoint [kW] against local limits and write it; never raises."""
        return (await self._apply_all([state], [asset_id], [p_kw], now_ms))[0]

    async def _apply_all(
        self,
        states: Sequence[DeviceState | None],
        asset_ids: Sequence[str],
        values: Sequence[float],
        now_ms: int,
    ) -> list[_Outcome]:
        """Check each setpoint [kW] against local limits and write it, in order; never
        raises. One loop for a whole section: with 100 assets a site, it is the hot path."""
        site, frequency = self._limits, self._frequency
        outcomes: list[_Outcome] = []
        for state, asset_id, p_kw in zip(states, asset_ids, values, strict=True):
            if state is None:
                refusal = Refusal(Reason.COMMAND_UNKNOWN_ASSET, f"no asset {asset_id[:64]!r} here")
                outcomes.append(_Outcome(cpb.COMMAND_STATUS_REFUSED, 0.0, refusal))
                continue
            adapter = state.adapter
            ev = await self._ev_session(state) if hasattr(adapter, "session") else None
            problem = check_active_power(
                adapter.kind,
                p_kw,
                state.limits,
                soc_pct=state.soc_pct,
                ev=ev,
                site=site,
                now_ms=now_ms,
            )
            if problem is not None:
                refusal = Refusal(Reason.COMMAND_UNSAFE, problem)
                outcomes.append(_Outcome(cpb.COMMAND_STATUS_REFUSED, 0.0, refusal))
                continue
            lock = state.write_lock  # acquire/release, not ``async with``: cheaper
            await lock.acquire()
            try:
                applied = await adapter.apply_active_power(p_kw, now_ms)
            except DeviceError as e:
                refusal = Refusal(Reason.DEVICE_WRITE_FAILED, str(e))
                outcomes.append(_Outcome(cpb.COMMAND_STATUS_FAILED, 0.0, refusal))
                continue
            finally:
                lock.release()
            if frequency is not None:
                frequency.set_base(asset_id, p_kw)
            outcomes.append(_Outcome(cpb.COMMAND_STATUS_APPLIED, applied.p_kw))
        return outcomes

    async def _ev_session(self, state: DeviceState) -> EvSession | None:
        session = getattr(state.adapter, "session", None)
        if session is None:
            return None
        try:
            result: EvSession = await session()
        except DeviceError:
            return None
        return result

    # -- group setpoints -----------------------------------------------------------------

    async def _group(self, command: cpb.Command, now_ms: int) -> epb.SignedEnvelope:
        group = command.group_setpoints
        header = check_group_header(command)
        section = own_section(group, self._site) if header is None else header
        if not isinstance(section, Refusal):
            replayed = self._group_replayed(command, now_ms)
            section = section if replayed is None else replayed
        if isinstance(section, Refusal):
            return self._refuse(command, section)
        key_id, seq = self._controller.key_id, group.group_seq
        self._seq.reserve_group(key_id, seq)  # before any await: a group seq is used once
        try:  # on disk before any device moves; the fsync runs off the event loop
            await asyncio.to_thread(self._seq.persist_group, key_id, seq)
        except sqlite3.Error:
            log.exception("group replay state could not be written")
            unavailable = Refusal(Reason.UNAVAILABLE, "replay state could not be persisted")
            return self._refuse(command, unavailable)
        devices = self._devices
        states = [devices.get(aid) for aid in section.asset_ids]
        outcomes = await self._apply_all(states, section.asset_ids, section.p_kw, now_ms)
        return self._answer_section(command, section.asset_ids, outcomes)

    def _group_replayed(self, command: cpb.Command, now_ms: int) -> Refusal | None:
        hwm, floor_ms = self._seq.group_state(self._controller.key_id, now_ms)
        seq = command.group_setpoints.group_seq
        if command.issued_ms < floor_ms:
            return Refusal(
                Reason.COMMAND_REPLAYED, "group issued before this edge's replay state began"
            )
        if seq <= hwm:
            return Refusal(Reason.COMMAND_REPLAYED, f"group seq {seq} was already used")
        return None

    def _answer_section(
        self, command: cpb.Command, asset_ids: tuple[str, ...], outcomes: list[_Outcome]
    ) -> epb.SignedEnvelope:
        now_ms = self._clock.now_ms()
        group = command.group_setpoints
        applied = [o.applied_p_kw if o.refusal is None else math.nan for o in outcomes]
        not_applied = [
            (i, o) for i, o in enumerate(outcomes) if o.status != cpb.COMMAND_STATUS_APPLIED
        ]
        failed = sum(o.status == cpb.COMMAND_STATUS_FAILED for _, o in not_applied)
        status = section_status(len(outcomes) - len(not_applied), failed, len(outcomes))
        first = not_applied[0][1].refusal if not_applied else None
        n_applied = len(outcomes) - len(not_applied)
        self.applied += n_applied
        self.refused += len(not_applied)
        self._audit.append(
            "group_section",
            decision="allow" if n_applied else "deny",
            identity=self._controller.spiffe_id,
            reason=first.reason.value if first else "",
            details={
                "command_id": command.command_id,
                "group_seq": group.group_seq,
                "activation": group.activation_id[:64],
                "entries": len(outcomes),
                "applied": n_applied,
                "failed": failed,
                "not_applied": [
                    {"asset": asset_ids[i][:64], "reason": o.refusal.reason.value}
                    for i, o in not_applied[:_REFUSALS_AUDITED]
                    if o.refusal is not None
                ],
            },
        )
        if first is not None:
            log.warning(
                "group %s: %d of %d entries not applied (%s)",
                command.command_id[:16],
                len(not_applied),
                len(outcomes),
                first.message,
            )
        result = cpb.CommandResult(
            command_id=command.command_id,
            site_id=self._site,
            command_seq=group.group_seq,
            status=status,  # type: ignore[arg-type]
            reason=first.reason.value if first else "",
            message=f"{len(not_applied)} of {len(outcomes)} entries not applied: {first.message}"
            if first
            else "",
            decided_ms=now_ms,
            applied_p_kw=math.fsum(v for v in applied if not math.isnan(v)),
            entry_applied_p_kw=applied,
            entry_refusals=[
                cpb.EntryRefusal(
                    index=i,
                    status=o.status,  # type: ignore[arg-type]
                    reason=o.refusal.reason.value,
                    message=o.refusal.message,
                )
                for i, o in not_applied
                if o.refusal is not None
            ],
        )
        return self._sign(result, now_ms)

    # -- frequency response arming -------------------------------------------------------

    async def _arm(self, command: cpb.Command, now_ms: int) -> epb.SignedEnvelope:
        arming = command.arm_frequency_response
        if self._frequency is None:
            unsupported = Refusal(
                Reason.COMMAND_UNSUPPORTED, "this edge runs no frequency response"
            )
            return self._refuse(command, unsupported)
        refusal = self._frequency.check(arming, now_ms)
        if refusal is not None:
            if refusal.reason is Reason.COMMAND_UNSAFE:
                self._seq.advance(command.seq)  # as for an unsafe setpoint: the seq is used
            return self._refuse(command, refusal)
        self._seq.advance(command.seq)  # before any await
        refusal = await self._frequency.arm(arming, now_ms)
        if refusal is not None:
            return self._refuse(command, refusal)
        self.applied += 1
        self._audit.append(
            "frequency_armed",
            decision="allow",
            identity=self._controller.spiffe_id,
            details={
                "command_id": command.command_id,
                "seq": command.seq,
                "assets": [a.asset_id[:64] for a in arming.assets],
                "active_from_ms": arming.active_from_ms,
                "active_until_ms": arming.active_until_ms,
            },
        )
        result = self._result(command, cpb.COMMAND_STATUS_APPLIED, None, 0.0)
        return self._sign(result, result.decided_ms)

    # -- answers -------------------------------------------------------------------------

    def _refuse(self, command: cpb.Command, refusal: Refusal) -> epb.SignedEnvelope:
        return self._answer(command, cpb.COMMAND_STATUS_REFUSED, refusal, 0.0)

    def _answer(
        self, command: cpb.Command, status: int, refusal: Refusal | None, applied_p_kw: float
    ) -> epb.SignedEnvelope:
        result = self._result(command, status, refusal, applied_p_kw)
        seq = result.command_seq
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
                    "seq": seq,
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
                    {"command_id": command.command_id[:64], "seq": seq},
                ),
                event="command",
            )
            log.warning("command %s refused: %s", command.command_id[:16], refusal.message)
        return self._sign(result, result.decided_ms)

    def _result(
        self, command: cpb.Command, status: int, refusal: Refusal | None, applied_p_kw: float
    ) -> cpb.CommandResult:
        group = command.WhichOneof("action") == "group_setpoints"
        return cpb.CommandResult(
            command_id=command.command_id[:64],
            site_id=self._site,
            command_seq=command.group_setpoints.group_seq if group else command.seq,
            status=status,  # type: ignore[arg-type]
            reason=refusal.reason.value if refusal else "",
            message=refusal.message if refusal else "",
            decided_ms=self._clock.now_ms(),
            applied_p_kw=applied_p_kw,
        )

    def _sign(self, result: cpb.CommandResult, now_ms: int) -> epb.SignedEnvelope:
        return self._signer.sign(
            epb.PAYLOAD_TYPE_COMMAND_RESULT, result.SerializeToString(), now_ms
        )
