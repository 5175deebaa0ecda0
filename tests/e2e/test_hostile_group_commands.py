"""Hostile group setpoints: one message signed once for many sites, against a real edge.

The edge (see ``command_site``) is enrolled with the real control plane and drives the
SunSpec site simulator over Modbus on loopback. A group is refused as a whole when its
envelope, signature, validity or replay state is wrong, or when it has no (or a
malformed) section for this site; inside an accepted section each entry is checked
against local limits on its own. Every refusal leaves the devices as they were, is
signed by the edge and audited.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from control_plane.commands.group_dispatcher import GroupAck
from control_plane.commands.group_messages import SiteSetpoints
from control_plane.embedded import EmbeddedSystem
from edge_node.commands import MAX_COMMAND_PAYLOAD_BYTES, CommandExecutor, CommandSeqStore
from edge_node.group_sections import MAX_SECTION_ENTRIES
from gridfort.v1 import command_pb2 as cpb
from gridfort.v1 import edge_link_pb2 as lpb
from security.audit_log import verify_audit_log
from security.envelope import EnvelopeSigner
from security.refusals import Reason
from tests.e2e.command_site import (
    MINUTE_MS,
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


# -- the honest path -----------------------------------------------------------------------------


async def test_group_section_is_applied_and_answered(edge: EdgeSite) -> None:
    command = edge.group({"s0": [("s0-pv", 1.0)], "s1": [("s1-pv", 2.5), ("s1-bat", 1.5)]})
    result = await edge.handle(edge.sign(command))
    assert result.status == cpb.COMMAND_STATUS_APPLIED, result
    assert result.command_id == command.command_id
    assert result.command_seq == command.group_setpoints.group_seq
    assert list(result.entry_applied_p_kw) == pytest.approx([2.5, 1.5], abs=0.01)
    assert result.applied_p_kw == pytest.approx(4.0, abs=0.02)
    assert not result.entry_refusals
    state = edge.snapshot()
    assert (state.pv_cap_kw, state.battery_cmd_kw) == pytest.approx((2.5, 1.5), abs=0.01)
    record = audit_records(edge.audit.path)[-1]
    assert record["event"] == "group_section" and record["decision"] == "allow"
    assert record["details"]["applied"] == 2
    assert edge.group_hwm() == command.group_setpoints.group_seq


async def test_unsafe_and_unknown_entries_are_refused_and_the_rest_applied(edge: EdgeSite) -> None:
    entries = [("s1-pv", 3.0), ("s1-bat", 50.0), ("s1-ghost", 1.0), ("s1-pv-x", math.nan)]
    result = await edge.handle(edge.sign(edge.group({"s1": entries})))
    assert result.status == cpb.COMMAND_STATUS_PARTIAL, result
    applied = list(result.entry_applied_p_kw)
    assert applied[0] == pytest.approx(3.0, abs=0.01)
    assert all(math.isnan(v) for v in applied[1:])
    reasons = {r.index: (r.status, r.reason) for r in result.entry_refusals}
    assert reasons == {
        1: (cpb.COMMAND_STATUS_REFUSED, Reason.COMMAND_UNSAFE.value),
        2: (cpb.COMMAND_STATUS_REFUSED, Reason.COMMAND_UNKNOWN_ASSET.value),
        3: (cpb.COMMAND_STATUS_REFUSED, Reason.COMMAND_UNKNOWN_ASSET.value),
    }
    state = edge.snapshot()
    assert state.pv_cap_kw == pytest.approx(3.0, abs=0.01)
    assert state.battery_cmd_kw == 0.0  # the unsafe entry never reached the device
    record = audit_records(edge.audit.path)[-1]
    assert (record["event"], record["reason"]) == ("group_section", "COMMAND_UNSAFE")
    assert [r["asset"] for r in record["details"]["not_applied"]] == [
        "s1-bat",
        "s1-ghost",
        "s1-pv-x",
    ]


async def test_a_section_with_only_unsafe_entries_is_refused(edge: EdgeSite) -> None:
    result = await edge.handle(edge.sign(edge.group({"s1": [("s1-pv", -1.0)]})))
    assert result.status == cpb.COMMAND_STATUS_REFUSED
    assert result.reason == Reason.COMMAND_UNSAFE.value
    assert "1 of 1 entries not applied" in result.message


# -- forged, tampered, misaddressed ---------------------------------------------------------------


@pytest.mark.parametrize("forgery", ["rogue-key", "rogue-key-with-our-key-id", "edge-key"])
async def test_forged_group_is_refused(edge: EdgeSite, forgery: str) -> None:
    signer = EnvelopeSigner(Ed25519PrivateKey.generate(), edge.cp_signer.signer)
    if forgery == "edge-key":
        signer = edge.creds.signer
    envelope = edge.sign(edge.group(), signer)
    if forgery == "rogue-key-with-our-key-id":
        envelope.key_id = edge.cp_signer.key_id
    await assert_refused_and_not_applied(edge, envelope, Reason.COMMAND_BAD_SIGNATURE)


@pytest.mark.parametrize("where", ["own-section", "other-site-section", "group-seq"])
async def test_tampered_group_is_refused(edge: EdgeSite, where: str) -> None:
    """The one signature covers every section: changing anyone's entry breaks it."""
    command = edge.group({"s1": [("s1-pv", 1.0)], "s2": [("s2-pv", 2.0)]}, group_seq=7)
    envelope = edge.sign(command)
    tampered = cpb.Command.FromString(envelope.payload)
    sections = tampered.group_setpoints.sites
    if where == "own-section":
        sections[0].p_kw[0] = 9.0
    elif where == "other-site-section":
        sections[1].p_kw[0] = 9.0
    else:
        tampered.group_setpoints.group_seq = 8
    envelope.payload = tampered.SerializeToString()
    await assert_refused_and_not_applied(edge, envelope, Reason.COMMAND_BAD_SIGNATURE)


async def test_group_without_a_section_for_this_site_is_refused(edge: EdgeSite) -> None:
    """Entries for another site (even naming this site's assets) are never taken."""
    command = edge.group({"s2": [("s1-pv", 0.0), ("s1-bat", 2.0)], "s3": [("s3-pv", 1.0)]})
    await assert_refused_and_not_applied(edge, edge.sign(command), Reason.COMMAND_WRONG_SITE)


@pytest.mark.parametrize(
    ("issued_offset_ms", "ttl_ms"),
    [(-MINUTE_MS, 30_000), (-1_000, 500), (MINUTE_MS, 30_000), (-1_000, 3_600_001)],
    ids=["expired", "just-expired", "issued-in-the-future", "validity-over-one-hour"],
)
async def test_expired_group_is_refused(edge: EdgeSite, issued_offset_ms: int, ttl_ms: int) -> None:
    command = edge.group(issued_ms=edge.now() + issued_offset_ms, ttl_ms=ttl_ms)
    await assert_refused_and_not_applied(edge, edge.sign(command), Reason.COMMAND_EXPIRED)


async def test_replayed_group_is_refused(edge: EdgeSite) -> None:
    first = edge.sign(edge.group({"s1": [("s1-pv", 4.0)]}))
    assert (await edge.handle(first)).status == cpb.COMMAND_STATUS_APPLIED
    seq = cpb.Command.FromString(first.payload).group_setpoints.group_seq
    await assert_refused_and_not_applied(edge, first, Reason.COMMAND_REPLAYED)  # exact re-send
    same_seq = edge.sign(edge.group({"s1": [("s1-pv", 1.0)]}, group_seq=seq))
    await assert_refused_and_not_applied(edge, same_seq, Reason.COMMAND_REPLAYED)
    older = edge.sign(edge.group({"s1": [("s1-pv", 1.0)]}, group_seq=seq - 1 or 1))
    await assert_refused_and_not_applied(edge, older, Reason.COMMAND_REPLAYED)
    assert edge.snapshot().pv_cap_kw == pytest.approx(4.0, abs=0.01)


async def test_group_issued_before_the_edge_replay_state_began_is_refused(edge: EdgeSite) -> None:
    """A fresh edge (high-water mark 0) must not take a group captured before it existed."""
    _, floor_ms = edge.seq_store.group_state(edge.creds.controller.key_id, edge.now())
    command = edge.group(issued_ms=floor_ms - 5_000, ttl_ms=60_000, group_seq=10**9)
    await assert_refused_and_not_applied(edge, edge.sign(command), Reason.COMMAND_REPLAYED)


async def test_group_replay_state_survives_a_restart(edge: EdgeSite, tmp_path: Path) -> None:
    envelope = edge.sign(edge.group({"s1": [("s1-pv", 2.0)]}))
    assert (await edge.handle(envelope)).status == cpb.COMMAND_STATUS_APPLIED
    path = tmp_path / "edge-runtime" / "commands.db"
    reopened = CommandSeqStore(path)
    try:
        restarted = CommandExecutor(
            site_id="s1",
            controller=edge.creds.controller,
            devices=edge.devices,
            signer=edge.creds.signer,
            seq_store=reopened,
            audit=edge.audit,
            clock=edge.system.clock,
        )
        answer = cpb.CommandResult.FromString((await restarted.handle(envelope)).payload)
        assert answer.reason == Reason.COMMAND_REPLAYED.value
    finally:
        reopened.close()


# -- malformed and oversized -----------------------------------------------------------------------


def _malformed(edge: EdgeSite, kind: str) -> cpb.Command:
    command = edge.group({"s1": [("s1-pv", 1.0), ("s1-bat", 0.5)]})
    section = command.group_setpoints.sites[0]
    if kind == "site-id-on-group":
        command.site_id = "s1"
    elif kind == "seq-on-group":
        command.seq = 99
    elif kind == "group-seq-zero":
        command.group_setpoints.group_seq = 0
    elif kind == "unequal-lengths":
        section.p_kw.append(1.0)
    elif kind == "asset-twice":
        section.asset_ids[1] = "s1-pv"
    elif kind == "site-twice":
        command.group_setpoints.sites.add(site_id="s1", asset_ids=["s1-bat"], p_kw=[1.0])
    elif kind == "empty-section":
        del section.asset_ids[:]
        del section.p_kw[:]
    return command


@pytest.mark.parametrize(
    "kind",
    [
        "site-id-on-group",
        "seq-on-group",
        "group-seq-zero",
        "unequal-lengths",
        "asset-twice",
        "site-twice",
        "empty-section",
    ],
)
async def test_malformed_group_is_refused(edge: EdgeSite, kind: str) -> None:
    envelope = edge.sign(_malformed(edge, kind))
    await assert_refused_and_not_applied(edge, envelope, Reason.COMMAND_MALFORMED)


async def test_oversized_group_is_refused_before_its_signature_is_checked(edge: EdgeSite) -> None:
    filler = [(f"s9-{i:06d}-{'x' * 40}", 1.0) for i in range(MAX_COMMAND_PAYLOAD_BYTES // 50)]
    command = edge.group({"s1": [("s1-pv", 1.0)], "s9": filler})
    envelope = edge.sign(command)
    assert len(envelope.payload) > MAX_COMMAND_PAYLOAD_BYTES
    await assert_refused_and_not_applied(edge, envelope, Reason.OVERSIZED)
    envelope.signature = bytes(64)  # a forged one is refused just as cheaply
    await assert_refused_and_not_applied(edge, envelope, Reason.OVERSIZED)


async def test_section_with_too_many_entries_is_refused(edge: EdgeSite) -> None:
    entries = [(f"s1-a{i}", 0.0) for i in range(MAX_SECTION_ENTRIES + 1)]
    await assert_refused_and_not_applied(
        edge, edge.sign(edge.group({"s1": entries})), Reason.OVERSIZED
    )


# -- control plane -> streams -> edges -> results -> control plane -------------------------------


async def test_group_is_signed_once_delivered_unchanged_and_acknowledged(
    edge: EdgeSite, enroll_site: EnrollSite
) -> None:
    system = edge.system
    cp = system.control_plane
    creds2 = await enroll_site("s2")
    acks: list[GroupAck] = []
    cp.groups.add_listener(acks.append)
    links = [RawLink.for_edge(system.link_endpoints[0], c) for c in (edge.creds, creds2)]
    try:
        for link in links:
            await link.send_bytes(
                lpb.EdgeMessage(heartbeat=lpb.Heartbeat(sent_ms=1)).SerializeToString()
            )
            assert (await link.recv()).WhichOneof("kind") == "heartbeat"
        sections = [
            SiteSetpoints("s1", ("s1-pv", "s1-bat"), (2.0, -1.0)),
            SiteSetpoints("s2", ("s2-pv",), (3.0,)),
            SiteSetpoints("s3", ("s3-pv",), (3.0,)),  # not connected: never sent
        ]
        report = cp.groups.send(sections, ttl_s=30.0, activation_id="afrr-1")
        assert report.signatures == 1 and report.sites_sent == 2
        assert report.undeliverable == ["s3"]
        received = [await link.recv() for link in links]
        assert received[0].command.SerializeToString() == received[1].command.SerializeToString()
        answer, result = await edge.answer(received[0].command)
        assert result.status == cpb.COMMAND_STATUS_APPLIED, result
        await links[0].send_bytes(lpb.EdgeMessage(command_result=answer).SerializeToString())
        # s2 passes s1's answer off as its own (signed with its own key): wrong entry count
        forged = cpb.CommandResult.FromString(answer.payload)
        forged.site_id = "s2"
        bad = creds2.signer.sign(answer.payload_type, forged.SerializeToString(), edge.now())
        for _ in range(100):
            if acks:
                break
            await asyncio.sleep(0.02)
        assert [(a.site_id, a.status, a.activation_id) for a in acks] == [
            ("s1", "applied", "afrr-1")
        ]
        assert acks[0].applied_kw == pytest.approx((2.0, -1.0), abs=0.01)
        assert cp.groups.pending_sites(report.group_ids[0]) == {"s2"}
        await links[1].send_bytes(lpb.EdgeMessage(command_result=bad).SerializeToString())
        await asyncio.sleep(0.2)
        assert len(acks) == 1
    finally:
        for link in links:
            await link.close()
    cp.groups.flush()
    assert cp.command_log.group_status_counts(report.group_ids) == {"applied": 1, "sent": 1}
    records = audit_records(cp.paths.audit_log)
    sent = [r for r in records if r["event"] == "group_command" and r["decision"] == "allow"]
    assert [g["sites"] for g in sent[0]["details"]["groups"]] == [2]
    assert any(r["event"] == "group_command" and r["decision"] == "deny" for r in records)
    denied = [r for r in records if r["event"] == "group_result" and r["decision"] == "deny"]
    assert [r["reason"] for r in denied] == [Reason.MALFORMED_ENVELOPE.value]
    assert verify_audit_log(cp.paths.audit_log).ok
