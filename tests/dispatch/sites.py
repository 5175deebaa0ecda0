"""In-process sites for dispatch tests: the real group dispatcher and, per site, the real
edge ``CommandExecutor`` (signature, replay state, limits, audit, signed result) with
in-memory devices. Messages go through the dispatcher's delivery (a fallback sink that
keeps them) and results come back through ``CommandDispatcher.on_result``, as from a
stream. The gRPC path itself is covered by ``tests/e2e``."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from control_plane.commands.command_log import CommandLog
from control_plane.commands.dispatcher import CommandDispatcher
from control_plane.commands.group_dispatcher import GroupAck, GroupDispatcher
from control_plane.ingest.types import Peer
from control_plane.transports.streams import StreamRegistry
from edge_node.commands import CommandExecutor, CommandSeqStore, DeviceState, TrustedController
from edge_node.devices.base import AppliedSetpoint, AssetKind, DeviceLimits, Reading
from gridfort.v1 import edge_link_pb2 as lpb
from security.audit_log import AuditLog
from security.clock import Clock
from security.envelope import EnvelopeSigner, generate_signing_key
from security.identity import Role, SpiffeId
from security.signing_keys import EnrolledKey, load_signing_public_key

DOMAIN = "dispatch.test"


class MemoryDevice:
    """A device whose setpoint is a number in memory [kW]."""

    def __init__(self, asset_id: str, kind: AssetKind) -> None:
        self._asset_id, self._kind = asset_id, kind
        self.p_kw: float | None = None

    @property
    def asset_id(self) -> str:
        return self._asset_id

    @property
    def kind(self) -> AssetKind:
        return self._kind

    async def connect(self) -> DeviceLimits:
        return DeviceLimits(10.0, 20.0, 5.0, 95.0)

    async def read(self, now_ms: int) -> list[Reading]:
        return []

    async def apply_active_power(self, p_kw: float, now_ms: int) -> AppliedSetpoint:
        self.p_kw = p_kw
        return AppliedSetpoint(self._asset_id, p_kw, now_ms)

    async def close(self) -> None:
        return None


@dataclass
class Site:
    site_id: str
    executor: CommandExecutor
    devices: dict[str, DeviceState]
    key: EnrolledKey
    peer: Peer

    def setpoint(self, asset_id: str) -> float | None:
        device = self.devices[asset_id].adapter
        assert isinstance(device, MemoryDevice)
        return device.p_kw


@dataclass
class Control:
    """The control plane's command side plus the sites, in one process."""

    commands: CommandDispatcher
    groups: GroupDispatcher
    audit: AuditLog
    log: CommandLog
    signer: EnvelopeSigner
    sites: dict[str, Site] = field(default_factory=dict)
    outbox: list[tuple[str, lpb.ControlMessage]] = field(default_factory=list)
    acks: list[GroupAck] = field(default_factory=list)

    def sink(self, site_id: str, message: lpb.ControlMessage) -> bool:
        if site_id not in self.sites:
            return False
        self.outbox.append((site_id, message))
        return True

    async def deliver(self, skip: frozenset[str] = frozenset()) -> int:
        """Every queued message to its site; the signed results back. Returns how many."""
        queued, self.outbox = self.outbox, []
        for site_id, message in queued:
            if site_id in skip:
                continue
            site = self.sites[site_id]
            answer = await site.executor.handle(message.command)
            refusal = self.commands.on_result(site.peer, answer, {site.key.key_id: site.key})
            assert refusal is None, refusal
        return len(queued)


def build_control(tmp: Path, clock: Clock) -> Control:
    signer = EnvelopeSigner(generate_signing_key(), f"spiffe://{DOMAIN}/control-plane/cp")
    log = CommandLog(tmp / "commands.db")
    audit = AuditLog(tmp / "audit.jsonl", clock)
    commands = CommandDispatcher(
        signer=signer,
        trust_domain=DOMAIN,
        log=log,
        streams=StreamRegistry(),
        audit=audit,
        clock=clock,
    )
    groups = GroupDispatcher(commands=commands, signer=signer, log=log, audit=audit, clock=clock)
    control = Control(commands, groups, audit, log, signer)
    commands.add_fallback_sink(control.sink)
    groups.add_listener(control.acks.append)
    return control


def add_site(
    control: Control,
    tmp: Path,
    clock: Clock,
    site_id: str,
    assets: dict[str, AssetKind],
    soc_pct: float = 50.0,
) -> Site:
    key = generate_signing_key()
    spiffe = SpiffeId(DOMAIN, Role.EDGE, site_id)
    edge_signer = EnvelopeSigner(key, str(spiffe))
    devices = {
        a: DeviceState(MemoryDevice(a, kind), DeviceLimits(10.0, 20.0, 5.0, 95.0), soc_pct)
        for a, kind in assets.items()
    }
    cp = control.signer
    executor = CommandExecutor(
        site_id=site_id,
        controller=TrustedController(
            cp.signer, cp.key_id, load_signing_public_key(cp.public_key_raw)
        ),
        devices=devices,
        signer=edge_signer,
        seq_store=CommandSeqStore(tmp / f"{site_id}.db"),
        audit=AuditLog(tmp / f"{site_id}.jsonl", clock),
        clock=clock,
    )
    enrolled = EnrolledKey(edge_signer.key_id, spiffe, key.public_key(), clock.now_ms())
    peer = Peer(spiffe, 1, 0, 2**62)
    site = Site(site_id, executor, devices, enrolled, peer)
    control.sites[site_id] = site
    return site
