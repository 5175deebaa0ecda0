"""Sampler: reads every device on a fixed period, seals one signed batch per period into
the outbox, and wakes the uplink. Sampling never waits for the network.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from edge_node.commands import DeviceState
from edge_node.devices.base import DeviceError, Reading
from edge_node.outbox import Outbox
from gridfort.v1 import telemetry_pb2 as tpb
from security.clock import Clock
from security.envelope import EnvelopeSigner

log = logging.getLogger(__name__)


@dataclass
class SamplerStats:
    batches_sealed: int = 0
    measurements_sealed: int = 0
    device_errors: int = 0
    reconnects: int = 0


class Sampler:
    def __init__(
        self,
        *,
        site_id: str,
        devices: Mapping[str, DeviceState],
        outbox: Outbox,
        signer: EnvelopeSigner,
        clock: Clock,
        interval_s: float,
        read_timeout_s: float = 2.0,
        on_sealed: Callable[[], None] = lambda: None,
    ) -> None:
        if interval_s <= 0:
            raise ValueError("sample interval must be positive")
        self._site = site_id
        self._devices = devices
        self._outbox = outbox
        self._signer = signer
        self._clock = clock
        self._interval = interval_s
        self._timeout = read_timeout_s
        self._on_sealed = on_sealed
        self.stats = SamplerStats()
        self._broken: set[str] = set()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        next_tick = loop.time()
        while True:
            await self.sample_once()
            next_tick += self._interval
            await asyncio.sleep(max(0.0, next_tick - loop.time()))

    async def sample_once(self) -> int:
        """Read all devices once and seal what was read; returns the number of readings."""
        now_ms = self._clock.now_ms()
        results = await asyncio.gather(
            *(self._read(asset_id, state, now_ms) for asset_id, state in self._devices.items())
        )
        readings = [r for rs in results for r in rs]
        if readings:
            self._outbox.seal(self._site, readings, self._clock.now_ms(), self._signer)
            self.stats.batches_sealed += 1
            self.stats.measurements_sealed += len(readings)
            self._on_sealed()
        return len(readings)

    async def _read(self, asset_id: str, state: DeviceState, now_ms: int) -> list[Reading]:
        try:
            if asset_id in self._broken:
                state.limits = await asyncio.wait_for(state.adapter.connect(), self._timeout)
                self._broken.discard(asset_id)
                self.stats.reconnects += 1
            readings = await asyncio.wait_for(state.adapter.read(now_ms), self._timeout)
        except (DeviceError, TimeoutError) as e:
            self.stats.device_errors += 1
            if asset_id not in self._broken:
                log.warning("site %s device %s: %s", self._site, asset_id, e or "timeout")
                self._broken.add(asset_id)
                with contextlib.suppress(DeviceError, TimeoutError):
                    await asyncio.wait_for(state.adapter.close(), self._timeout)
            return []
        for r in readings:
            if r.quantity == tpb.QUANTITY_STATE_OF_CHARGE:
                state.soc_pct = r.value
        return readings
