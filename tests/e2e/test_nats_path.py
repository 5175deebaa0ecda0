"""The NATS transport end to end: embedded broker, JetStream consumer, the same pipeline.

Edges publish the same signed envelopes as over gRPC; receipts and commands come back
on the site's command subject; nothing is lost or counted twice, also when the gRPC
link fails and a ``both`` edge continues over NATS.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from control_plane.embedded import EmbeddedSystem
from edge_node.app import EdgeNode
from edge_node.config import DeviceConfig, EdgeConfig
from edge_node.devices.base import AssetKind
from edge_node.simulators.sunspec_server import SunSpecSiteSimulator
from tests.conftest import TRUST_DOMAIN, default_assets
from tests.e2e.tcp_proxy import TcpProxy


@pytest.fixture
async def nats_system(tmp_path: Path) -> AsyncIterator[EmbeddedSystem]:
    system = EmbeddedSystem(
        tmp_path / "cp", trust_domain=TRUST_DOMAIN, durable_sync=False, nats_port=0
    )
    await system.start()
    try:
        yield system
    finally:
        await system.stop()


@pytest.fixture
async def modbus(nats_system: EmbeddedSystem) -> AsyncIterator[int]:
    sim = SunSpecSiteSimulator(
        pv_rated_kw=10.0,
        battery_rated_kw=5.0,
        battery_e_kwh=10.0,
        battery_soc_pct=50.0,
        clock=nats_system.clock,
    )
    port = await sim.start()
    try:
        yield port
    finally:
        await sim.stop()


async def _wait(predicate: Callable[[], bool], timeout_s: float = 20.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.05)


async def _edge(
    system: EmbeddedSystem, tmp_path: Path, port: int, transport: str, endpoints: tuple[str, ...]
) -> EdgeNode:
    site = "s1"
    system.register_site(site, default_assets(site))
    await system.control_plane.sync_transports()
    await system.enroll_edge(site, tmp_path / "edge")
    nats_url = system.control_plane.nats_url
    assert nats_url is not None
    config = EdgeConfig(
        site_id=site,
        edge_dir=tmp_path / "edge",
        endpoints=endpoints,
        sample_interval_s=0.1,
        transport=transport,
        nats_servers=(nats_url,),
        devices=(
            DeviceConfig("s1-pv", AssetKind.PV_INVERTER, "sunspec", f"127.0.0.1:{port}", 1),
            DeviceConfig("s1-bat", AssetKind.BATTERY, "sunspec", f"127.0.0.1:{port}", 2),
        ),
    )
    node = EdgeNode(config, clock=system.clock)
    await node.start()
    return node


async def _drain_and_check(system: EmbeddedSystem, node: EdgeNode) -> None:
    await node.stop_sampling()
    await _wait(lambda: node.outbox.stats().pending_batches == 0)
    stats = node.outbox.stats()
    counts = system.control_plane.store.counts(["s1"])
    assert stats.sealed_measurements == counts.measurements + counts.quarantined
    assert stats.dead_letter_batches == 0
    seqs = system.control_plane.store.sequences("s1")
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))
    assert len(seqs) == node.sampler.stats.batches_sealed


async def test_telemetry_and_commands_over_nats(
    nats_system: EmbeddedSystem, modbus: int, tmp_path: Path
) -> None:
    node = await _edge(nats_system, tmp_path, modbus, "nats", nats_system.link_endpoints)
    cp = nats_system.control_plane
    try:
        await _wait(lambda: cp.store.counts(["s1"]).batches >= 5)
        assert node.nats_uplink is not None and node.nats_uplink.stats.connected
        assert node.uplink.stats.connects == 0  # gRPC was never used
        command = cp.dispatcher.send_active_power("s1", "s1-bat", -2.0)
        assert not hasattr(command, "reason")  # sent, not refused
        await _wait(lambda: cp.dispatcher.status_counts(["s1"]).get("applied", 0) == 1)
        await _drain_and_check(nats_system, node)
    finally:
        await node.stop()


async def test_both_mode_fails_over_from_grpc_to_nats_without_loss(
    nats_system: EmbeddedSystem, modbus: int, tmp_path: Path
) -> None:
    cp = nats_system.control_plane
    proxy = TcpProxy("127.0.0.1", cp.link_ports[0])
    await proxy.start()
    node = await _edge(nats_system, tmp_path, modbus, "both", (proxy.endpoint,))
    try:
        await _wait(lambda: node.uplink.stats.connected)
        await _wait(lambda: cp.store.counts(["s1"]).batches >= 3)
        assert node.nats_uplink is not None
        before = node.nats_uplink.stats.batches_sent
        await proxy.cut()  # the gRPC link dies; NATS carries on
        await _wait(
            lambda: node.nats_uplink is not None and node.nats_uplink.stats.receipts_committed >= 3
        )
        assert node.nats_uplink.stats.batches_sent > before
        await _drain_and_check(nats_system, node)
    finally:
        await node.stop()
        await proxy.cut()
