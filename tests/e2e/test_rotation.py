"""Certificates rotate at half-life without losing a batch (real time, short lifetime)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from control_plane.embedded import EmbeddedSystem
from edge_node.app import EdgeNode
from edge_node.config import DeviceConfig, EdgeConfig
from edge_node.devices.base import AssetKind
from edge_node.simulators.sunspec_server import SunSpecSiteSimulator
from tests.conftest import TRUST_DOMAIN, default_assets


async def test_edge_and_server_certificates_rotate_without_loss(tmp_path: Path) -> None:
    system = EmbeddedSystem(
        tmp_path / "cp", trust_domain=TRUST_DOMAIN, workload_ttl_s=10, durable_sync=False
    )
    await system.start()
    sim = SunSpecSiteSimulator(
        pv_rated_kw=10.0,
        battery_rated_kw=5.0,
        battery_e_kwh=10.0,
        battery_soc_pct=50.0,
        clock=system.clock,
    )
    port = await sim.start()
    node: EdgeNode | None = None
    try:
        system.register_site("s1", default_assets("s1"))
        await system.enroll_edge("s1", tmp_path / "edge")
        first_cert = (tmp_path / "edge" / "tls.pem").read_bytes()
        node = EdgeNode(
            EdgeConfig(
                site_id="s1",
                edge_dir=tmp_path / "edge",
                endpoints=system.link_endpoints,
                sample_interval_s=0.1,
                devices=(
                    DeviceConfig("s1-pv", AssetKind.PV_INVERTER, "sunspec", f"127.0.0.1:{port}"),
                ),
            ),
            clock=system.clock,
        )
        await node.start()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 20
        while node.uplink.stats.rotations < 2 and loop.time() < deadline:
            await asyncio.sleep(0.2)
        assert node.uplink.stats.rotations >= 2  # two rotations: beyond one cert lifetime
        assert (tmp_path / "edge" / "tls.pem").read_bytes() != first_cert
        assert system.control_plane.server_identity.rotations >= 1
        await node.stop_sampling()
        while node.outbox.stats().pending_batches and loop.time() < deadline + 10:
            await asyncio.sleep(0.1)
        sealed = node.outbox.stats().sealed_measurements
        counts = system.control_plane.store.counts(["s1"])
        assert sealed == counts.measurements + counts.quarantined
        assert node.outbox.stats().dead_letter_batches == 0
    finally:
        if node is not None:
            await node.stop()
        await sim.stop()
        await system.stop()
