"""The NATS transport end to end: embedded broker, JetStream consumer, the same pipeline.

Edges publish the same signed envelopes as over gRPC; receipts and commands come back
on the site's command subject; nothing is lost or counted twice, also when the gRPC
link fails and a ``both`` edge continues over NATS.
"""

from __future__ import annotations

from pathlib import Path

from control_plane.embedded import EmbeddedSystem
from edge_node.app import EdgeNode
from tests.e2e.edge_harness import drain_and_check, start_edge, wait_until
from tests.e2e.tcp_proxy import TcpProxy


async def _edge(
    system: EmbeddedSystem, tmp_path: Path, port: int, transport: str, endpoints: tuple[str, ...]
) -> EdgeNode:
    nats_url = system.control_plane.nats_url
    assert nats_url is not None
    return await start_edge(
        system, tmp_path, "s1", port, endpoints, transport=transport, nats_servers=(nats_url,)
    )


async def test_telemetry_and_commands_over_nats(
    nats_system: EmbeddedSystem, modbus: int, tmp_path: Path
) -> None:
    node = await _edge(nats_system, tmp_path, modbus, "nats", nats_system.link_endpoints)
    cp = nats_system.control_plane
    try:
        await wait_until(lambda: cp.store.counts(["s1"]).batches >= 5)
        assert node.nats_uplink is not None and node.nats_uplink.stats.connected
        assert node.uplink.stats.connects == 0  # gRPC was never used
        command = cp.dispatcher.send_active_power("s1", "s1-bat", -2.0)
        assert not hasattr(command, "reason")  # sent, not refused
        await wait_until(lambda: cp.dispatcher.status_counts(["s1"]).get("applied", 0) == 1)
        await drain_and_check(nats_system, node, "s1")
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
        await wait_until(lambda: node.uplink.stats.connected)
        await wait_until(lambda: cp.store.counts(["s1"]).batches >= 3)
        assert node.nats_uplink is not None
        before = node.nats_uplink.stats.batches_sent
        await proxy.cut()  # the gRPC link dies; NATS carries on
        await wait_until(
            lambda: node.nats_uplink is not None and node.nats_uplink.stats.receipts_committed >= 3
        )
        assert node.nats_uplink.stats.batches_sent > before
        await drain_and_check(nats_system, node, "s1")
    finally:
        await node.stop()
        await proxy.cut()
