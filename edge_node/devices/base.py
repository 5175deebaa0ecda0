"""The one interface every device adapter implements (SunSpec Modbus, OPC UA, ...).

Adapters convert to Gridfort's canonical units once, at this boundary:
power in kW (sign: + export/discharge, - import/charge), reactive power in
kvar, voltage in V, frequency in Hz, state of charge in %, energy in kWh.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol, runtime_checkable

from gridfort.v1 import telemetry_pb2 as tpb


class AssetKind(StrEnum):
    PV_INVERTER = "pv_inverter"
    BATTERY = "battery"
    EV_CHARGER = "ev_charger"
    # A controllable load (heat pump, boiler; edge_node/devices/modbus_load.py): its
    # setpoint is the power it may draw, in [-rated_p_kw, 0] kW (import negative).
    FLEXIBLE_LOAD = "flexible_load"
    # A substation RTU (edge_node/devices/grid_rtu.py): metering only, takes no setpoint.
    GRID_RTU = "grid_rtu"


@dataclass(frozen=True, slots=True)
class Reading:
    """One sampled value of one asset, in canonical units.

    ``quantity`` and ``unit`` are ``gridfort.v1.Quantity`` / ``gridfort.v1.Unit`` values.
    """

    asset_id: str
    quantity: int
    unit: int
    value: float
    ts_ms: int

    def __post_init__(self) -> None:
        if not self.asset_id:
            raise ValueError("Reading.asset_id must be non-empty")
        if self.quantity not in tpb.Quantity.values() or self.quantity == 0:
            raise ValueError(f"Reading.quantity {self.quantity} is not a known Quantity")
        if self.unit not in tpb.Unit.values() or self.unit == 0:
            raise ValueError(f"Reading.unit {self.unit} is not a known Unit")
        if not math.isfinite(self.value):
            raise ValueError(f"Reading.value for {self.asset_id} is not finite")


@dataclass(frozen=True, slots=True)
class DeviceLimits:
    """What the device itself reports about its ratings, read at connect time.

    Local safety limits are computed from these plus the edge's configuration.
    """

    rated_p_kw: float  # maximum |active power| [kW]
    e_kwh: float = 0.0  # usable energy of a battery or EV [kWh], 0 if none
    soc_min_pct: float = 0.0  # lowest allowed state of charge [%]
    soc_max_pct: float = 100.0  # highest allowed state of charge [%]


@dataclass(frozen=True, slots=True)
class AppliedSetpoint:
    """What the device accepted after a write: the value read back [kW]."""

    asset_id: str
    p_kw: float
    ts_ms: int


@dataclass(frozen=True, slots=True)
class EvSession:
    """The plugged-in vehicle's state and its owner's constraint, as the charger reports it."""

    connected: bool
    soc_pct: float  # vehicle state of charge [%]
    target_soc_pct: float  # owner's target [%], e.g. 80
    departure_ms: int  # owner's departure time, Unix epoch [ms]; 0 if unknown
    e_kwh: float  # vehicle battery capacity [kWh]
    max_charge_kw: float  # max charging power the charger/vehicle allows [kW], > 0


class DeviceError(Exception):
    """A device could not be reached, read or written. The message is safe to log."""


@runtime_checkable
class DeviceAdapter(Protocol):
    """A connection to one physical (or simulated) asset."""

    @property
    def asset_id(self) -> str: ...

    @property
    def kind(self) -> AssetKind: ...

    async def connect(self) -> DeviceLimits:
        """Open the connection, validate the device's model, return its ratings.

        Raises DeviceError with a precise message if the device is unreachable or
        does not present the expected model.
        """
        ...

    async def read(self, now_ms: int) -> list[Reading]:
        """Sample every channel once; ``now_ms`` stamps the readings.

        Raises DeviceError on any communication or decoding failure (never returns garbage).
        """
        ...

    async def apply_active_power(self, p_kw: float, now_ms: int) -> AppliedSetpoint:
        """Write an active-power setpoint (sign convention above) and read it back.

        PV inverter: ``p_kw`` >= 0 is the export cap (curtailment).
        Battery: + discharge, - charge. EV charger: <= 0, the charging power.
        Flexible load: <= 0, the power it may draw.
        The caller has already checked local safety limits. Raises DeviceError.
        """
        ...

    async def close(self) -> None: ...
