"""Faults on the real path: link down then back, control plane restart, failover.

Each test runs a real edge node (real SunSpec Modbus simulator on loopback) and
checks end to end: every sealed measurement is committed exactly once, the
committed sequence numbers are exactly the sealed ones, nothing is left behind.
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
from security.clock import SystemClock
from tests.conftest import default_assets
from tests.e2e.tcp_proxy import TcpProxy


@pytest.fixture
async def modbus(system: EmbeddedSystem) -> AsyncIterator[int]:
    sim = SunSpecSiteSimulator(
        pv_rated_kw=10.0,
        battery_rated_kw=5.0,
        battery_e_kwh=10.0,
        battery_soc_pct=50.0,
        clock=system.clock,
    )
    port = await sim.start()
    try:
        yield port
    finally:
        await sim.stop()


async def _edge(
    system: EmbeddedSystem, tmp_path: Path, site: str, port: int, endpoints: tuple[str, ...]
) -> EdgeNode:
    system.register_site(site, default_assets(site))
    edge_dir = tmp_path / "edges" / site
    await system.enroll_edge(site, edge_dir)
    config = EdgeConfig(
        site_id=site,
        edge_dir=edge_dir,
        endpoints=endpoints,
        sample_interval_s=0.1,
        devices=(
            DeviceConfig(f"{site}-pv", AssetKind.PV_INVERTER, "sunspec", f"127.0.0.1:{port}", 1),
            DeviceConfig(f"{site}-bat", AssetKind.BATTERY, "sunspec", f"127.0.0.1:{port}", 2),
        ),
    )
    node = EdgeNode(config, clock=system.clock)
    await node.start()
    return node


async def _wait(predicate: Callable[[], bool], timeout_s: float = 15.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.05)


async def _drain_and_check(system: EmbeddedSystem, node: EdgeNode, site: str) -> None:
    await node.stop_sampling()
    await _wait(lambda: node.outbox.stats().pending_batches == 0)
    stats = node.outbox.stats()
    counts = system.control_plane.store.counts([site])
    assert stats.sealed_measurements == counts.measurements + counts.quarantined
    assert stats.dead_letter_batches == 0
    seqs = system.control_plane.store.sequences(site)
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))  # contiguous, no gaps, no dups
    assert len(seqs) == node.sampler.stats.batches_sealed


async def test_link_down_then_back_loses_nothing(
    system: EmbeddedSystem, modbus: int, tmp_path: Path
) -> None:
    proxy = TcpProxy("127.0.0.1", system.control_plane.link_ports[0])
    await proxy.start()
    node = await _edge(system, tmp_path, "s1", modbus, (proxy.endpoint,))
    try:
        await _wait(lambda: system.control_plane.store.counts(["s1"]).batches >= 3)
        await proxy.cut()
        buffered_from = node.sampler.stats.batches_sealed
        await _wait(lambda: node.sampler.stats.batches_sealed >= buffered_from + 10)
        assert node.outbox.stats().pending_batches >= 5  # store-and-forward while down
        await proxy.restore()
        await _drain_and_check(system, node, "s1")
    finally:
        await node.stop()
        await proxy.cut()


async def test_control_plane_restart_mid_stream_loses_nothing(
    system: EmbeddedSystem, modbus: int, tmp_path: Path
) -> None:
    node = await _edge(system, tmp_path, "s1", modbus, (system.link_endpoints[0],))
    try:
        await _wait(lambda: system.control_plane.store.counts(["s1"]).batches >= 3)
        await system.restart()  # high-water marks reload from the store
        await _wait(lambda: node.uplink.stats.connects >= 2)
        await _drain_and_check(system, node, "s1")
    finally:
        await node.stop()


async def test_failover_to_second_endpoint(
    system: EmbeddedSystem, modbus: int, tmp_path: Path
) -> None:
    proxy = TcpProxy("127.0.0.1", system.control_plane.link_ports[0])
    await proxy.start()
    second = system.link_endpoints[1]
    node = await _edge(system, tmp_path, "s1", modbus, (proxy.endpoint, second))
    try:
        await _wait(lambda: node.uplink.stats.endpoint == proxy.endpoint)
        await _wait(lambda: system.control_plane.store.counts(["s1"]).batches >= 3)
        await proxy.cut()  # the primary link (first SIM) dies
        await _wait(lambda: node.uplink.stats.endpoint == second and node.uplink.stats.connected)
        await _drain_and_check(system, node, "s1")
    finally:
        await node.stop()
        await proxy.cut()


class SkewedClock:
    """The edge's wall clock, off by an adjustable amount."""

    def __init__(self, base: SystemClock, offset_ms: int) -> None:
        self.base, self.offset_ms = base, offset_ms

    def now_ms(self) -> int:
        return self.base.now_ms() + self.offset_ms


async def test_edge_clock_ahead_is_refused_without_a_hot_loop_then_recovers(
    system: EmbeddedSystem, modbus: int, tmp_path: Path
) -> None:
    site = "s1"
    system.register_site(site, default_assets(site))
    edge_dir = tmp_path / "edges" / site
    await system.enroll_edge(site, edge_dir)
    clock = SkewedClock(SystemClock(), offset_ms=60_000)  # a minute fast: FUTURE_TIMESTAMP
    pv = DeviceConfig(f"{site}-pv", AssetKind.PV_INVERTER, "sunspec", f"127.0.0.1:{modbus}", 1)
    config = EdgeConfig(
        site_id=site,
        edge_dir=edge_dir,
        endpoints=system.link_endpoints[:1],
        sample_interval_s=0.2,
        devices=(pv,),
    )
    node = EdgeNode(config, clock=clock)
    await node.start()
    try:
        await _wait(lambda: node.uplink.stats.receipts_refused >= 3)
        await asyncio.sleep(2.0)
        sealed = node.sampler.stats.batches_sealed
        assert node.uplink.stats.batches_sent < 4 * sealed + 20  # retries are paced, not a hot loop
        assert node.uplink.stats.refusal_reasons.get("FUTURE_TIMESTAMP", 0) >= 3
        assert system.control_plane.store.counts([site]).batches == 0
        clock.offset_ms = 0  # NTP fixed the clock: every buffered batch is re-signed and lands
        await _drain_and_check(system, node, site)
    finally:
        await node.stop()
