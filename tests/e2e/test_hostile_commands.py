"""Hostile commands at the edge: the gateway's last word, against real devices on loopback.

The edge is real: enrolled with the real control plane (so it learned the real
command-signing key), a real ``CommandExecutor`` with its audit log and replay
state on disk, and SunSpec Modbus adapters talking to the SunSpec site
simulator (a PV inverter and a battery) on a loopback TCP port. Every refused
command must come back as a result signed by the edge, with the right reason,
leave the device exactly as it was, and be audited. One honest command goes
the whole way: control plane -> stream -> edge -> device -> signed result ->
control plane.
"""

from __future__ import annotations

import asyncio
import json
import math
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from control_plane.embedded import EmbeddedSystem
from edge_node.commands import CommandExecutor, CommandSeqStore, DeviceState
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
from gridfort.v1 import edge_link_pb2 as lpb
from gridfort.v1 import envelope_pb2 as epb
from security.audit_log import AuditLog, verify_audit_log
from security.envelope import EnvelopeSigner, verify_signature
from security.refusals import Reason
from tests.e2e.raw_link import RawLink

EnrollSite = Callable[[str], Awaitable[EdgeCredentials]]

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

    @property
    def cp_signer(self) -> EnvelopeSigner:
        return self.system.control_plane.signer

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
    system: EmbeddedSystem, enroll_site: EnrollSite, tmp_path: Path, battery_soc_pct: float
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
    executor = CommandExecutor(
        site_id="s1",
        controller=creds.controller,
        devices=devices,
        signer=creds.signer,
        seq_store=seq_store,
        audit=audit,
        clock=system.clock,
    )
    site = EdgeSite(system, creds, sim, executor, seq_store, audit, devices, creds.next_command_seq)
    try:
        yield site
    finally:
        for adapter in adapters:
            await adapter.close()
        await sim.stop()
        outbox.close()
        seq_store.close()
        audit.close()


@pytest.fixture
async def edge(
    system: EmbeddedSystem, enroll_site: EnrollSite, tmp_path: Path
) -> AsyncIterator[EdgeSite]:
    async for site in start_edge(system, enroll_site, tmp_path, battery_soc_pct=50.0):
        yield site


async def assert_refused_and_not_applied(
    edge: EdgeSite, envelope: epb.SignedEnvelope, reason: Reason
) -> cpb.CommandResult:
    before = edge.snapshot()
    hwm_before = edge.seq_store.get()
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
    return result


# -- forged, misaddressed, stale ------------------------------------------------------------------


@pytest.mark.parametrize("forgery", ["rogue-key-as-control-plane", "rogue-key-with-our-key-id"])
async def test_forged_command_is_refused(edge: EdgeSite, forgery: str) -> None:
    rogue = EnvelopeSigner(Ed25519PrivateKey.generate(), edge.cp_signer.signer)
    envelope = edge.sign(edge.command(p_kw=0.0), rogue)
    if forgery == "rogue-key-with-our-key-id":
        envelope.key_id = edge.cp_signer.key_id
    await assert_refused_and_not_applied(edge, envelope, Reason.COMMAND_BAD_SIGNATURE)


async def test_command_signed_by_the_edge_itself_is_refused(edge: EdgeSite) -> None:
    envelope = edge.sign(edge.command(p_kw=0.0), edge.creds.signer)
    await assert_refused_and_not_applied(edge, envelope, Reason.COMMAND_BAD_SIGNATURE)


async def test_tampered_command_is_refused(edge: EdgeSite) -> None:
    envelope = edge.sign(edge.command(p_kw=1.0))
    envelope.payload = envelope.payload.replace(b"s1-pv", b"s1-bt")  # same length, other asset
    await assert_refused_and_not_applied(edge, envelope, Reason.COMMAND_BAD_SIGNATURE)


async def test_other_payload_type_signed_by_the_control_plane_is_not_a_command(
    edge: EdgeSite,
) -> None:
    command = edge.command(p_kw=0.0)
    receipt_signed = edge.cp_signer.sign(
        epb.PAYLOAD_TYPE_BATCH_RECEIPT, command.SerializeToString(), edge.now()
    )
    await assert_refused_and_not_applied(edge, receipt_signed, Reason.COMMAND_MALFORMED)
    relabelled = edge.sign(command)
    relabelled.payload_type = epb.PAYLOAD_TYPE_BATCH_RECEIPT
    await assert_refused_and_not_applied(edge, relabelled, Reason.COMMAND_MALFORMED)


async def test_command_for_another_site_is_refused(edge: EdgeSite) -> None:
    envelope = edge.sign(edge.command(asset_id="s2-pv", site_id="s2", p_kw=0.0))
    await assert_refused_and_not_applied(edge, envelope, Reason.COMMAND_WRONG_SITE)


@pytest.mark.parametrize(
    ("issued_offset_ms", "ttl_ms"),
    [(-MINUTE_MS, 30_000), (-1_000, 500), (MINUTE_MS, 30_000)],
    ids=["expired", "just-expired", "issued-in-the-future"],
)
async def test_expired_command_is_refused(
    edge: EdgeSite, issued_offset_ms: int, ttl_ms: int
) -> None:
    command = edge.command(p_kw=1.0, issued_ms=edge.now() + issued_offset_ms, ttl_ms=ttl_ms)
    await assert_refused_and_not_applied(edge, edge.sign(command), Reason.COMMAND_EXPIRED)


async def test_replayed_command_seq_is_refused(edge: EdgeSite) -> None:
    applied = edge.sign(edge.command(p_kw=4.0))
    result = await edge.handle(applied)
    assert result.status == cpb.COMMAND_STATUS_APPLIED, result
    assert edge.snapshot().pv_cap_kw == pytest.approx(4.0)
    seq = cpb.Command.FromString(applied.payload).seq
    await assert_refused_and_not_applied(edge, applied, Reason.COMMAND_REPLAYED)  # exact re-send
    again = edge.sign(edge.command(p_kw=1.0, seq=seq))  # new command, same seq
    await assert_refused_and_not_applied(edge, again, Reason.COMMAND_REPLAYED)
    older = edge.sign(edge.command(p_kw=1.0, seq=seq - 1))
    await assert_refused_and_not_applied(edge, older, Reason.COMMAND_REPLAYED)
    assert edge.snapshot().pv_cap_kw == pytest.approx(4.0)


@pytest.mark.parametrize("asset_id", ["s1-ghost", "s2-pv", "", "s1-pv\x00"])
async def test_command_for_an_unknown_asset_is_refused(edge: EdgeSite, asset_id: str) -> None:
    envelope = edge.sign(edge.command(asset_id=asset_id, p_kw=0.0))
    await assert_refused_and_not_applied(edge, envelope, Reason.COMMAND_UNKNOWN_ASSET)


# -- local safety limits -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("asset_id", "p_kw"),
    [
        ("s1-pv", PV_RATED_KW + 5.0),
        ("s1-pv", PV_RATED_KW * 1.01),
        ("s1-bat", BATTERY_RATED_KW + 0.5),
        ("s1-bat", -3 * BATTERY_RATED_KW),
        ("s1-pv", math.inf),
        ("s1-bat", math.nan),
    ],
    ids=[
        "pv-above-rated",
        "pv-just-above",
        "bat-discharge-above",
        "bat-charge-above",
        "inf",
        "nan",
    ],
)
async def test_setpoint_beyond_the_rating_is_refused(
    edge: EdgeSite, asset_id: str, p_kw: float
) -> None:
    await assert_refused_and_not_applied(
        edge, edge.sign(edge.command(asset_id, p_kw)), Reason.COMMAND_UNSAFE
    )


@pytest.mark.parametrize("p_kw", [-0.001, -1.0, -PV_RATED_KW])
async def test_negative_pv_export_cap_is_refused(edge: EdgeSite, p_kw: float) -> None:
    await assert_refused_and_not_applied(
        edge, edge.sign(edge.command("s1-pv", p_kw)), Reason.COMMAND_UNSAFE
    )


@pytest.fixture
async def low_battery_edge(
    system: EmbeddedSystem, enroll_site: EnrollSite, tmp_path: Path
) -> AsyncIterator[EdgeSite]:
    async for site in start_edge(system, enroll_site, tmp_path, battery_soc_pct=4.0):
        yield site


async def test_battery_discharge_below_soc_min_is_refused(low_battery_edge: EdgeSite) -> None:
    edge = low_battery_edge
    assert edge.devices["s1-bat"].soc_pct == pytest.approx(4.0, abs=0.1)  # learned by sampling
    result = await assert_refused_and_not_applied(
        edge, edge.sign(edge.command("s1-bat", 2.0)), Reason.COMMAND_UNSAFE
    )
    assert "may not discharge" in result.message
    # charging is what the battery needs, and it is allowed
    charge = await edge.handle(edge.sign(edge.command("s1-bat", -2.0)))
    assert charge.status == cpb.COMMAND_STATUS_APPLIED, charge
    assert edge.snapshot().battery_cmd_kw == pytest.approx(-2.0, abs=0.01)


async def test_battery_with_unknown_soc_only_accepts_zero(edge: EdgeSite) -> None:
    edge.devices["s1-bat"].soc_pct = None  # e.g. the battery was never read since start
    await assert_refused_and_not_applied(
        edge, edge.sign(edge.command("s1-bat", 1.0)), Reason.COMMAND_UNSAFE
    )


# -- the honest path -----------------------------------------------------------------------------


async def test_honest_command_is_applied_read_back_and_reported(edge: EdgeSite) -> None:
    """Control plane -> stream -> executor -> SunSpec device -> signed result -> control plane."""
    system = edge.system
    dispatcher = system.control_plane.dispatcher
    link = RawLink.for_edge(system.link_endpoints[0], edge.creds)
    try:
        await link.send_bytes(
            lpb.EdgeMessage(heartbeat=lpb.Heartbeat(sent_ms=1)).SerializeToString()
        )
        assert (await link.recv()).WhichOneof("kind") == "heartbeat"  # the stream is registered
        for asset_id, p_kw in (("s1-pv", 2.5), ("s1-bat", 1.5)):
            sent = dispatcher.send_active_power("s1", asset_id, p_kw)
            assert isinstance(sent, cpb.Command), sent
            message = await link.recv()
            assert message.WhichOneof("kind") == "command"
            answer, result = await edge.answer(message.command)
            assert result.status == cpb.COMMAND_STATUS_APPLIED, result
            assert result.command_id == sent.command_id
            assert result.applied_p_kw == pytest.approx(p_kw, abs=0.01)
            reply = lpb.EdgeMessage(command_result=answer)
            await link.send_bytes(reply.SerializeToString())
            replayed = await edge.handle(message.command)  # the same command once more
            assert replayed.reason == Reason.COMMAND_REPLAYED.value
        for _ in range(100):
            if dispatcher.status_counts(["s1"]).get("applied") == 2:
                break
            await asyncio.sleep(0.05)
        assert dispatcher.status_counts(["s1"]) == {"applied": 2}
    finally:
        await link.close()
    state = edge.snapshot()
    assert state.pv_cap_kw == pytest.approx(2.5, abs=0.01)
    assert state.battery_cmd_kw == pytest.approx(1.5, abs=0.01)
    # read back through the adapters, as the edge sees its devices
    readings = await edge.devices["s1-bat"].adapter.read(edge.now())
    power = [r.value for r in readings if r.quantity == 1]
    assert power and 0.0 < power[0] <= 1.5 + 0.01
    applied = [r for r in audit_records(edge.audit.path) if r["event"] == "command_applied"]
    assert [r["details"]["asset"] for r in applied] == ["s1-pv", "s1-bat"]
    assert verify_audit_log(edge.audit.path).ok
