"""Faults on the real path: link down then back, control plane restart, failover.

Each test runs a real edge node (real SunSpec Modbus simulator on loopback) and
checks end to end: every sealed measurement is committed exactly once, the
committed sequence numbers are exactly the sealed ones, nothing is left behind.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from control_plane.embedded import EmbeddedSystem
from security.clock import SystemClock
from tests.e2e.edge_harness import drain_and_check, start_edge, wait_until
from tests.e2e.tcp_proxy import TcpProxy


async def test_link_down_then_back_loses_nothing(
    system: EmbeddedSystem, modbus: int, tmp_path: Path
) -> None:
    proxy = TcpProxy("127.0.0.1", system.control_plane.link_ports[0])
    await proxy.start()
    node = await start_edge(system, tmp_path, "s1", modbus, (proxy.endpoint,))
    try:
        await wait_until(lambda: system.control_plane.store.counts(["s1"]).batches >= 3)
        await proxy.cut()
        buffered_from = node.sampler.stats.batches_sealed
        await wait_until(lambda: node.sampler.stats.batches_sealed >= buffered_from + 10)
        assert node.outbox.stats().pending_batches >= 5  # store-and-forward while down
        await proxy.restore()
        await drain_and_check(system, node, "s1")
    finally:
        await node.stop()
        await proxy.cut()


async def test_control_plane_restart_mid_stream_loses_nothing(
    system: EmbeddedSystem, modbus: int, tmp_path: Path
) -> None:
    node = await start_edge(system, tmp_path, "s1", modbus, (system.link_endpoints[0],))
    try:
        await wait_until(lambda: system.control_plane.store.counts(["s1"]).batches >= 3)
        await system.restart()  # high-water marks reload from the store
        await wait_until(lambda: node.uplink.stats.connects >= 2)
        await drain_and_check(system, node, "s1")
    finally:
        await node.stop()


async def test_failover_to_second_endpoint(
    system: EmbeddedSystem, modbus: int, tmp_path: Path
) -> None:
    proxy = TcpProxy("127.0.0.1", system.control_plane.link_ports[0])
    await proxy.start()
    second = system.link_endpoints[1]
    node = await start_edge(system, tmp_path, "s1", modbus, (proxy.endpoint, second))
    try:
        await wait_until(lambda: node.uplink.stats.endpoint == proxy.endpoint)
        await wait_until(lambda: system.control_plane.store.counts(["s1"]).batches >= 3)
        await proxy.cut()  # the primary link (first SIM) dies
        await wait_until(
            lambda: node.uplink.stats.endpoint == second and node.uplink.stats.connected
        )
        await drain_and_check(system, node, "s1")
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
    clock = SkewedClock(SystemClock(), offset_ms=60_000)  # a minute fast: FUTURE_TIMESTAMP
    node = await start_edge(
        system, tmp_path, site, modbus, system.link_endpoints[:1], clock=clock, pv_only=True
    )
    try:
        await wait_until(lambda: node.uplink.stats.receipts_refused >= 3)
        await asyncio.sleep(2.0)
        sealed = node.sampler.stats.batches_sealed
        assert node.uplink.stats.batches_sent < 4 * sealed + 20  # retries are paced, not a hot loop
        assert node.uplink.stats.refusal_reasons.get("FUTURE_TIMESTAMP", 0) >= 3
        assert system.control_plane.store.counts([site]).batches == 0
        clock.offset_ms = 0  # NTP fixed the clock: every buffered batch is re-signed and lands
        await drain_and_check(system, node, site)
    finally:
        await node.stop()
