"""A real edge gateway for command tests: enrolled with the real control plane, a real
``CommandExecutor`` with its audit log and replay state on disk, SunSpec Modbus adapters
talking to the SunSpec site simulator on a loopback port."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from control_plane.embedded import EmbeddedSystem
from edge_node.commands import CommandExecutor, CommandSeqStore, DeviceState, FrequencyArming
from edge_node.credentials import EdgeCredentials
from edge_node.devices.sunspec import SunSpecBattery, SunSpecPvInverter
from edge_node.outbox import Outbox
from edge_node.sampler import Sampler
from edge_node.simulators.sunspec_server import (
    BATTERY_UNIT_ID,
    PV_UNIT_ID,
    SiteSnapshot,
    SunSpecSiteSimulator,
)
from gridfort.v1 import command_pb2 as cpb
from gridfort.v1 import envelope_pb2 as epb
from security.audit_log import AuditLog
from security.envelope import EnvelopeSigner, verify_signature
from security.refusals import Reason

EnrollSite = Callable[[str], Awaitable[EdgeCredentials]]
#: Builds a frequency responder from (devices, audit log, simulator port, controller id).
FrequencyFactory = Callable[[dict[str, DeviceState], AuditLog, int, str], FrequencyArming]

PV_RATED_KW = 10.0
BATTERY_RATED_KW = 5.0
MINUTE_MS = 60_000


@dataclass
class EdgeSite:
    """One real edge gateway: credentials, devices on the simulator, executor, audit log."""

    system: EmbeddedSystem
    creds: EdgeCredentials
    sim: SunSpecSiteSimulator
    executor: CommandExecutor
    seq_store: CommandSeqStore
    audit: AuditLog
    devices: dict[str, DeviceState]
    next_command_seq: int
    next_group_seq: int = 1
    frequency: FrequencyArming | None = None

    @property
    def cp_signer(self) -> EnvelopeSigner:
        return self.system.control_plane.signer

    def group_hwm(self) -> int:
        return self.seq_store.group_state(self.creds.controller.key_id, self.now())[0]

    def now(self) -> int:
        return self.system.clock.now_ms()

    def command(
        self,
        asset_id: str = "s1-pv",
        p_kw: float = 3.0,
        *,
        site_id: str = "s1",
        seq: int | None = None,
        issued_ms: int | None = None,
        ttl_ms: int = 30_000,
    ) -> cpb.Command:
        if seq is None:
            seq, self.next_command_seq = self.next_command_seq, self.next_command_seq + 1
        issued = self.now() if issued_ms is None else issued_ms
        return cpb.Command(
            command_id=uuid.uuid4().hex,
            site_id=site_id,
            asset_id=asset_id,
            seq=seq,
            issued_ms=issued,
            expires_ms=issued + ttl_ms,
            set_active_power=cpb.SetActivePower(p_kw=p_kw),
        )

    def group(
        self,
        sections: dict[str, list[tuple[str, float]]] | None = None,
        *,
        group_seq: int | None = None,
        issued_ms: int | None = None,
        ttl_ms: int = 30_000,
    ) -> cpb.Command:
        """A group command; default: s1-pv at 3 kW and a section for site s2."""
        if sections is None:
            sections = {"s1": [("s1-pv", 3.0)], "s2": [("s2-pv", 4.0), ("s2-bat", 1.0)]}
        if group_seq is None:
            group_seq, self.next_group_seq = self.next_group_seq, self.next_group_seq + 1
        issued = self.now() if issued_ms is None else issued_ms
        group = cpb.GroupSetpoints(group_seq=group_seq, activation_id="test")
        for site_id, entries in sections.items():
            section = group.sites.add(site_id=site_id)
            section.asset_ids.extend(a for a, _ in entries)
            section.p_kw.extend(p for _, p in entries)
        return cpb.Command(
            command_id=uuid.uuid4().hex,
            issued_ms=issued,
            expires_ms=issued + ttl_ms,
            group_setpoints=group,
        )

    def sign(
        self, command: cpb.Command, signer: EnvelopeSigner | None = None
    ) -> epb.SignedEnvelope:
        signer = signer or self.cp_signer
        return signer.sign(epb.PAYLOAD_TYPE_COMMAND, command.SerializeToString(), self.now())

    async def handle(self, envelope: epb.SignedEnvelope) -> cpb.CommandResult:
        return (await self.answer(envelope))[1]

    async def answer(
        self, envelope: epb.SignedEnvelope
    ) -> tuple[epb.SignedEnvelope, cpb.CommandResult]:
        """Run the executor; the result must be signed by this edge's enrolled key."""
        answer = await asyncio.wait_for(self.executor.handle(envelope), 10.0)
        assert answer.payload_type == epb.PAYLOAD_TYPE_COMMAND_RESULT
        assert answer.signer == str(self.creds.spiffe_id)
        assert answer.key_id == self.creds.signer.key_id
        key = self.system.control_plane.keys.lookup(answer.key_id)  # the enrolled key
        assert key is not None and verify_signature(answer, key.public_key)
        result = cpb.CommandResult.FromString(answer.payload)
        assert result.site_id == "s1"
        return answer, result

    def snapshot(self) -> SiteSnapshot:
        self.sim.step()
        return self.sim.snapshot()


def audit_records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line]


async def start_edge(
    system: EmbeddedSystem,
    enroll_site: EnrollSite,
    tmp_path: Path,
    battery_soc_pct: float,
    frequency: FrequencyFactory | None = None,
) -> AsyncIterator[EdgeSite]:
    creds = await enroll_site("s1")
    sim = SunSpecSiteSimulator(
        pv_rated_kw=PV_RATED_KW,
        battery_rated_kw=BATTERY_RATED_KW,
        battery_e_kwh=10.0,
        battery_soc_pct=battery_soc_pct,
        clock=system.clock,
        battery_soc_min_pct=5.0,
        battery_soc_max_pct=95.0,
    )
    port = await sim.start()
    adapters = [
        SunSpecPvInverter("s1-pv", "127.0.0.1", port, PV_UNIT_ID),
        SunSpecBattery("s1-bat", "127.0.0.1", port, BATTERY_UNIT_ID),
    ]
    devices = {a.asset_id: DeviceState(a, await a.connect()) for a in adapters}
    edge_dir = tmp_path / "edge-runtime"
    edge_dir.mkdir()
    outbox = Outbox(edge_dir / "outbox.db", synchronous="NORMAL")
    seq_store = CommandSeqStore(edge_dir / "commands.db")
    seq_store.advance(creds.next_command_seq - 1)
    audit = AuditLog(edge_dir / "audit.jsonl", system.clock)
    # One real sampling pass, as the edge does it: learns the battery's state of charge.
    sampler = Sampler(
        site_id="s1",
        devices=devices,
        outbox=outbox,
        signer=creds.signer,
        clock=system.clock,
        interval_s=1.0,
    )
    assert await sampler.sample_once() > 0
    responder = frequency(devices, audit, port, creds.controller.spiffe_id) if frequency else None
    executor = CommandExecutor(
        site_id="s1",
        controller=creds.controller,
        devices=devices,
        signer=creds.signer,
        seq_store=seq_store,
        audit=audit,
        clock=system.clock,
        frequency=responder,
    )
    site = EdgeSite(system, creds, sim, executor, seq_store, audit, devices, creds.next_command_seq)
    site.frequency = responder
    try:
        yield site
    finally:
        stop = getattr(responder, "stop", None)
        if stop is not None:
            await stop()
        for adapter in adapters:
            await adapter.close()
        await sim.stop()
        outbox.close()
        seq_store.close()
        audit.close()


async def assert_refused_and_not_applied(
    edge: EdgeSite, envelope: epb.SignedEnvelope, reason: Reason
) -> cpb.CommandResult:
    before = edge.snapshot()
    hwm_before = edge.seq_store.get()
    group_hwm_before = edge.group_hwm()
    result = await edge.handle(envelope)
    assert result.status == cpb.COMMAND_STATUS_REFUSED, result
    assert result.reason == reason.value, result
    assert result.applied_p_kw == 0.0
    for leak in ("Traceback", "INTERNAL", 'File "', "Exception"):
        assert leak not in result.message
    after = edge.snapshot()
    assert (after.pv_cap_kw, after.battery_cmd_kw) == (before.pv_cap_kw, before.battery_cmd_kw)
    record = audit_records(edge.audit.path)[-1]
    assert (record["event"], record["decision"], record["reason"]) == (
        "command",
        "deny",
        reason.value,
    )
    assert record["identity"] == edge.creds.controller.spiffe_id
    if reason is not Reason.COMMAND_UNSAFE:  # refused before the checks: no seq is burned
        assert edge.seq_store.get() == hwm_before
    assert edge.group_hwm() == group_hwm_before  # a refused group never uses its seq
    return result
