"""Composition root of an edge node: devices -> sampler -> outbox -> uplink, and commands back.

Edge directory layout: the credentials (see ``edge_node.credentials``), plus
``outbox.db`` (durable queue and command replay state) and ``audit.jsonl``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from edge_node.commands import CommandExecutor, CommandSeqStore, DeviceState
from edge_node.config import DeviceConfig, EdgeConfig
from edge_node.credentials import EdgeCredentials
from edge_node.devices.base import DeviceAdapter, DeviceError, DeviceLimits
from edge_node.frequency_meter import meter_for
from edge_node.frequency_response import FrequencyResponder
from edge_node.outbox import Outbox
from edge_node.sampler import Sampler
from edge_node.uplinks.grpc import GrpcUplink, UplinkSettings
from edge_node.uplinks.nats import NatsUplink, NatsUplinkSettings
from security.audit_log import AuditLog
from security.clock import Clock, SystemClock
from security.tasks import reap

log = logging.getLogger(__name__)

AdapterFactory = Callable[[DeviceConfig], DeviceAdapter]
STOP_TIMEOUT_S = 3.0  # a device that does not close in time is abandoned, not waited for


def default_adapter(device: DeviceConfig) -> DeviceAdapter:
    """Build the adapter for a configured device."""
    from edge_node.devices.factory import build_adapter

    return build_adapter(device)


class EdgeNode:
    def __init__(
        self,
        config: EdgeConfig,
        *,
        clock: Clock | None = None,
        adapter_factory: AdapterFactory = default_adapter,
    ) -> None:
        self.config = config
        self.clock = clock or SystemClock()
        self.credentials = EdgeCredentials.load(config.edge_dir)
        if self.credentials.site_id != config.site_id:
            raise ValueError(
                f"site_id {config.site_id!r} does not match the enrolled identity "
                f"{self.credentials.spiffe_id}"
            )
        d = config.edge_dir
        self.outbox = Outbox(d / "outbox.db")
        self.outbox.ensure_next_seq(self.credentials.next_seq)
        self.command_seq = CommandSeqStore(d / "outbox.db")
        self.command_seq.advance(self.credentials.next_command_seq - 1)
        self.audit = AuditLog(d / "audit.jsonl", self.clock)
        self.devices = {
            dev.asset_id: DeviceState(adapter_factory(dev), DeviceLimits(rated_p_kw=0.0))
            for dev in config.devices
        }
        self.frequency = FrequencyResponder(
            devices=self.devices,
            meters={dev.asset_id: m for dev in config.devices if (m := meter_for(dev)) is not None},
            site_limits=config.site_limits,
            clock=self.clock,
            audit=self.audit,
            controller_id=self.credentials.controller.spiffe_id,
            interval_s=config.frequency_poll_s,
        )
        self.executor = CommandExecutor(
            frequency=self.frequency,
            site_id=config.site_id,
            controller=self.credentials.controller,
            devices=self.devices,
            signer=self.credentials.signer,
            seq_store=self.command_seq,
            audit=self.audit,
            clock=self.clock,
            site_limits=config.site_limits,
        )
        self.uplink = GrpcUplink(
            credentials=self.credentials,
            outbox=self.outbox,
            settings=UplinkSettings(endpoints=config.endpoints, window=config.uplink_window),
            clock=self.clock,
            on_command=self.executor.handle,
        )
        self.nats_uplink: NatsUplink | None = None
        if config.transport in ("nats", "both"):
            grpc_link = self.uplink
            self.nats_uplink = NatsUplink(
                credentials=self.credentials,
                outbox=self.outbox,
                settings=NatsUplinkSettings(
                    servers=config.nats_servers,
                    server_name=config.nats_server_name,
                    window=config.uplink_window,
                    renewal_endpoint=config.endpoints[0],
                ),
                clock=self.clock,
                on_command=self.executor.handle,
                standby=(lambda: grpc_link.stats.connected)
                if config.transport == "both"
                else (lambda: False),
            )
        self.sampler = Sampler(
            site_id=config.site_id,
            devices=self.devices,
            outbox=self.outbox,
            signer=self.credentials.signer,
            clock=self.clock,
            interval_s=config.sample_interval_s,
            on_sealed=self._notify_uplinks,
        )
        self._uplink_task: asyncio.Task[None] | None = None
        self._sampler_task: asyncio.Task[None] | None = None
        self._nats_task: asyncio.Task[None] | None = None

    def _notify_uplinks(self) -> None:
        self.uplink.notify()
        if self.nats_uplink is not None:
            self.nats_uplink.notify()

    async def connect_devices(self) -> None:
        """Connect every device; a device that is down now is retried by the sampler."""
        for asset_id, state in self.devices.items():
            try:
                state.limits = await state.adapter.connect()
            except DeviceError as e:
                log.warning("site %s: device %s unavailable: %s", self.config.site_id, asset_id, e)

    async def start(self, *, sample: bool = True) -> None:
        await self.connect_devices()
        if self.config.transport in ("grpc", "both"):
            self._uplink_task = asyncio.ensure_future(self.uplink.run())
        if self.nats_uplink is not None:
            self._nats_task = asyncio.ensure_future(self.nats_uplink.run())
        if sample:
            self._sampler_task = asyncio.ensure_future(self.sampler.run())

    async def stop_sampling(self) -> None:
        """Stop reading devices; the uplink keeps draining the outbox."""
        task, self._sampler_task = self._sampler_task, None
        await reap(task)

    async def stop(self) -> None:
        await self.stop_sampling()
        task, self._uplink_task = self._uplink_task, None
        await reap(task)
        task, self._nats_task = self._nats_task, None
        await reap(task)
        await self.frequency.stop()
        for state in self.devices.values():
            with contextlib.suppress(DeviceError, TimeoutError):
                await asyncio.wait_for(state.adapter.close(), STOP_TIMEOUT_S)
        self.outbox.close()
        self.command_seq.close()
        self.audit.close()
