"""Helpers for end-to-end tests with a real edge node (real SunSpec Modbus device)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

from control_plane.embedded import EmbeddedSystem
from edge_node.app import EdgeNode
from edge_node.config import DeviceConfig, EdgeConfig
from edge_node.devices.base import AssetKind
from security.clock import Clock
from tests.conftest import default_assets


async def wait_until(predicate: Callable[[], bool], timeout_s: float = 20.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.05)


async def start_edge(
    system: EmbeddedSystem,
    tmp_path: Path,
    site: str,
    modbus_port: int,
    endpoints: tuple[str, ...],
    *,
    clock: Clock | None = None,
    pv_only: bool = False,
    **config: Any,
) -> EdgeNode:
    """Register ``site``, enroll its edge, and start it sampling every 0.1 s."""
    system.register_site(site, default_assets(site))
    await system.control_plane.sync_transports()
    edge_dir = tmp_path / "edges" / site
    await system.enroll_edge(site, edge_dir)
    devices = [
        DeviceConfig(f"{site}-pv", AssetKind.PV_INVERTER, "sunspec", f"127.0.0.1:{modbus_port}", 1)
    ]
    if not pv_only:
        devices.append(
            DeviceConfig(f"{site}-bat", AssetKind.BATTERY, "sunspec", f"127.0.0.1:{modbus_port}", 2)
        )
    edge_config = EdgeConfig(
        site_id=site,
        edge_dir=edge_dir,
        endpoints=endpoints,
        sample_interval_s=0.1,
        devices=tuple(devices),
        **config,
    )
    node = EdgeNode(edge_config, clock=clock or system.clock)
    await node.start()
    return node


async def drain_and_check(system: EmbeddedSystem, node: EdgeNode, site: str) -> None:
    """Stop sampling, wait for the outbox to drain, and check the end-to-end invariant:
    every sealed measurement committed exactly once, sequence numbers contiguous."""
    await node.stop_sampling()
    await wait_until(lambda: node.outbox.stats().pending_batches == 0)
    stats = node.outbox.stats()
    counts = system.control_plane.store.counts([site])
    assert stats.sealed_measurements == counts.measurements + counts.quarantined
    assert stats.dead_letter_batches == 0
    seqs = system.control_plane.store.sequences(site)
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))  # contiguous, no gaps, no dups
    assert len(seqs) == node.sampler.stats.batches_sealed
