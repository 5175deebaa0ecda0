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
import math
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from control_plane.embedded import EmbeddedSystem
from gridfort.v1 import command_pb2 as cpb
from gridfort.v1 import edge_link_pb2 as lpb
from gridfort.v1 import envelope_pb2 as epb
from security.audit_log import verify_audit_log
from security.envelope import EnvelopeSigner
from security.refusals import Reason
from tests.e2e.command_site import (
    BATTERY_RATED_KW,
    MINUTE_MS,
    PV_RATED_KW,
    EdgeSite,
    EnrollSite,
    assert_refused_and_not_applied,
    audit_records,
    start_edge,
)
from tests.e2e.raw_link import RawLink


@pytest.fixture
async def edge(
    system: EmbeddedSystem, enroll_site: EnrollSite, tmp_path: Path
) -> AsyncIterator[EdgeSite]:
    async for site in start_edge(system, enroll_site, tmp_path, battery_soc_pct=50.0):
        yield site


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
