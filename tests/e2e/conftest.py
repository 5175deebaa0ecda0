"""End-to-end test support: if a test hangs, show where every asyncio task is waiting."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from control_plane.embedded import EmbeddedSystem
from edge_node.simulators.sunspec_server import SunSpecSiteSimulator
from security.clock import SystemClock
from tests.conftest import TRUST_DOMAIN

HANG_REPORT_AFTER_S = 45.0


async def _report_hang() -> None:
    await asyncio.sleep(HANG_REPORT_AFTER_S)
    print(
        f"\n--- asyncio tasks still running after {HANG_REPORT_AFTER_S:.0f} s ---", file=sys.stderr
    )
    for task in asyncio.all_tasks():
        print(f"task {task.get_name()}: {task.get_coro()}", file=sys.stderr)
        try:
            for frame in task.get_stack(limit=12):
                code = frame.f_code
                print(f"    {code.co_filename}:{frame.f_lineno} {code.co_name}", file=sys.stderr)
        except Exception as e:  # a C-level coroutine has no Python frames
            print(f"    (no stack: {e!r})", file=sys.stderr)


@pytest.fixture(autouse=True)
async def hang_reporter() -> AsyncIterator[None]:
    watchdog = asyncio.ensure_future(_report_hang())
    try:
        yield
    finally:
        watchdog.cancel()


@pytest.fixture
async def modbus() -> AsyncIterator[int]:
    """A real SunSpec Modbus TCP site (PV unit 1, battery unit 2) on a random port."""
    sim = SunSpecSiteSimulator(
        pv_rated_kw=10.0,
        battery_rated_kw=5.0,
        battery_e_kwh=10.0,
        battery_soc_pct=50.0,
        clock=SystemClock(),
    )
    port = await sim.start()
    try:
        yield port
    finally:
        await sim.stop()


@pytest.fixture
async def nats_system(tmp_path: Path) -> AsyncIterator[EmbeddedSystem]:
    """A started control plane with the embedded NATS broker and JetStream consumer."""
    system = EmbeddedSystem(
        tmp_path / "cp", trust_domain=TRUST_DOMAIN, durable_sync=False, nats_port=0
    )
    await system.start()
    try:
        yield system
    finally:
        await system.stop()
