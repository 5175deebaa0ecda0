"""Frequency measured at the asset: the grid frequency its inverter reports (SunSpec 103 Hz).

The meter opens its own Modbus TCP connection to the device, so polling at tens of
hertz never queues behind the sampler or a command write on the adapter's link.
"""

from __future__ import annotations

from typing import Protocol

from edge_node.config import DeviceConfig
from edge_node.devices.base import DeviceLimits
from edge_node.devices.sunspec import SunSpecModbusDevice

INVERTER_MODEL_ID = 103  # three-phase inverter; its Hz point is the frequency at the terminals


class FrequencySource(Protocol):
    """Something that reads the grid frequency at an asset [Hz]."""

    async def connect(self) -> DeviceLimits: ...

    async def read_frequency_hz(self) -> float:
        """One reading [Hz]; raises DeviceError if the device cannot be read."""
        ...

    async def close(self) -> None: ...


class SunSpecFrequencyMeter(SunSpecModbusDevice):
    """Reads model 103 ``Hz`` (scaled by ``Hz_SF``) of a SunSpec inverter."""

    required_models = (1, INVERTER_MODEL_ID)

    async def _read_limits(self) -> DeviceLimits:
        return DeviceLimits(rated_p_kw=0.0)  # a meter has no rating; nothing is written

    async def read_frequency_hz(self) -> float:
        return self._scaled(await self._block(INVERTER_MODEL_ID), "Hz")


def meter_for(device: DeviceConfig, timeout_s: float = 1.0) -> FrequencySource | None:
    """The frequency meter of a configured device, or None if its protocol has none here."""
    if device.protocol != "sunspec":
        return None
    host, _, port = device.address.rpartition(":")
    return SunSpecFrequencyMeter(
        f"{device.asset_id}#hz", host, int(port), device.unit_id, timeout_s=timeout_s
    )
