"""Asset kinds, their channels with units, and the physical bounds a measurement must respect.

Like OpenEMS natures: each asset kind declares every quantity it may report
and its unit; bounds are functions of the asset's ratings. Sign convention:
active power is positive when the asset exports (PV generating, battery
discharging) and negative when it imports (charging).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from types import MappingProxyType

from gridfort.v1 import telemetry_pb2 as tpb

Q = tpb.Quantity
U = tpb.Unit

ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class AssetKind(StrEnum):
    PV_INVERTER = "pv_inverter"
    BATTERY = "battery"
    EV_CHARGER = "ev_charger"
    # A load whose daily energy (e_kwh) can be shifted within a window (heat pump, boiler,
    # pool pump); rated_p_kw is its maximum draw. Planned by the optimizer; its edge
    # reports its power like any meter.
    FLEXIBLE_LOAD = "flexible_load"
    # Grid metering points of a substation RTU (see detection/points.py); no commands.
    GRID_BUS = "grid_bus"
    GRID_LINE = "grid_line"
    GRID_TRAFO = "grid_trafo"


#: Kinds that are grid metering points, not controllable DER.
GRID_POINT_KINDS: frozenset[AssetKind] = frozenset(
    {AssetKind.GRID_BUS, AssetKind.GRID_LINE, AssetKind.GRID_TRAFO}
)


#: The one canonical unit of each quantity.
CANONICAL_UNIT: dict[int, int] = {
    Q.QUANTITY_ACTIVE_POWER: U.UNIT_KW,
    Q.QUANTITY_REACTIVE_POWER: U.UNIT_KVAR,
    Q.QUANTITY_VOLTAGE: U.UNIT_V,
    Q.QUANTITY_FREQUENCY: U.UNIT_HZ,
    Q.QUANTITY_STATE_OF_CHARGE: U.UNIT_PCT,
    Q.QUANTITY_ENERGY_EXPORTED: U.UNIT_KWH,
    Q.QUANTITY_ENERGY_IMPORTED: U.UNIT_KWH,
    Q.QUANTITY_TEMPERATURE: U.UNIT_DEG_C,
    Q.QUANTITY_EV_CONNECTED: U.UNIT_BOOL,
    Q.QUANTITY_EV_TARGET_SOC: U.UNIT_PCT,
    Q.QUANTITY_VOLTAGE_PU: U.UNIT_PU,
}


@dataclass(frozen=True, slots=True)
class Asset:
    """A registered asset. ``rated_p_kw`` > 0 [kW]; ``e_kwh`` >= 0 [kWh] (0: no storage)."""

    asset_id: str
    site_id: str
    kind: AssetKind
    rated_p_kw: float
    e_kwh: float = 0.0

    def __post_init__(self) -> None:
        if not ID_PATTERN.match(self.asset_id):
            raise ValueError(f"asset id {self.asset_id!r} must match {ID_PATTERN.pattern}")
        if not ID_PATTERN.match(self.site_id):
            raise ValueError(f"site id {self.site_id!r} must match {ID_PATTERN.pattern}")
        if not 0 < self.rated_p_kw <= 100_000:
            raise ValueError(f"asset {self.asset_id}: rated_p_kw must be in (0, 100000] kW")
        if not 0 <= self.e_kwh <= 1_000_000:
            raise ValueError(f"asset {self.asset_id}: e_kwh must be in [0, 1000000] kWh")
        if self.kind is AssetKind.BATTERY and self.e_kwh <= 0:
            raise ValueError(f"asset {self.asset_id}: a battery needs e_kwh > 0")
        if self.kind is AssetKind.FLEXIBLE_LOAD and self.e_kwh <= 0:
            raise ValueError(
                f"asset {self.asset_id}: a flexible load needs e_kwh > 0 (its daily energy)"
            )


Bounds = tuple[float, float]
BoundsFn = Callable[[Asset], Bounds]

_MARGIN = 1.1  # tolerated overshoot of ratings (metering error, transients)
_VOLTAGE: Bounds = (0.0, 300.0)  # V, line-to-neutral for 230/400 V systems
_FREQUENCY: Bounds = (45.0, 65.0)  # Hz
_PERCENT: Bounds = (0.0, 100.0)
_ENERGY: Bounds = (0.0, 1e9)  # kWh, lifetime counters
_TEMPERATURE: Bounds = (-40.0, 120.0)  # degC
_BOOL: Bounds = (0.0, 1.0)
_VOLTAGE_PU: Bounds = (0.0, 2.0)  # p.u.; a grid point outside this is a broken meter


def _symmetric(a: Asset) -> Bounds:
    return (-_MARGIN * a.rated_p_kw, _MARGIN * a.rated_p_kw)


def _const(b: Bounds) -> BoundsFn:
    return lambda _a: b


#: Which quantities each kind may report, and their physical bounds.
CHANNELS: dict[AssetKind, dict[int, BoundsFn]] = {
    AssetKind.PV_INVERTER: {
        Q.QUANTITY_ACTIVE_POWER: lambda a: (-0.05 * a.rated_p_kw, _MARGIN * a.rated_p_kw),
        Q.QUANTITY_REACTIVE_POWER: _symmetric,
        Q.QUANTITY_VOLTAGE: _const(_VOLTAGE),
        Q.QUANTITY_FREQUENCY: _const(_FREQUENCY),
        Q.QUANTITY_ENERGY_EXPORTED: _const(_ENERGY),
        Q.QUANTITY_TEMPERATURE: _const(_TEMPERATURE),
    },
    AssetKind.BATTERY: {
        Q.QUANTITY_ACTIVE_POWER: lambda a: (-_MARGIN * a.rated_p_kw, _MARGIN * a.rated_p_kw),
        Q.QUANTITY_REACTIVE_POWER: _symmetric,
        Q.QUANTITY_VOLTAGE: _const(_VOLTAGE),
        Q.QUANTITY_FREQUENCY: _const(_FREQUENCY),
        Q.QUANTITY_STATE_OF_CHARGE: _const(_PERCENT),
        Q.QUANTITY_ENERGY_EXPORTED: _const(_ENERGY),
        Q.QUANTITY_ENERGY_IMPORTED: _const(_ENERGY),
        Q.QUANTITY_TEMPERATURE: _const(_TEMPERATURE),
    },
    AssetKind.EV_CHARGER: {
        Q.QUANTITY_ACTIVE_POWER: lambda a: (-_MARGIN * a.rated_p_kw, 0.05 * a.rated_p_kw),
        Q.QUANTITY_VOLTAGE: _const(_VOLTAGE),
        Q.QUANTITY_FREQUENCY: _const(_FREQUENCY),
        Q.QUANTITY_STATE_OF_CHARGE: _const(_PERCENT),
        Q.QUANTITY_ENERGY_IMPORTED: _const(_ENERGY),
        Q.QUANTITY_EV_CONNECTED: _const(_BOOL),
        Q.QUANTITY_EV_TARGET_SOC: _const(_PERCENT),
    },
    AssetKind.FLEXIBLE_LOAD: {
        Q.QUANTITY_ACTIVE_POWER: lambda a: (-_MARGIN * a.rated_p_kw, 0.05 * a.rated_p_kw),
        Q.QUANTITY_REACTIVE_POWER: _symmetric,
        Q.QUANTITY_VOLTAGE: _const(_VOLTAGE),
        Q.QUANTITY_ENERGY_IMPORTED: _const(_ENERGY),
        Q.QUANTITY_TEMPERATURE: _const(_TEMPERATURE),
    },
    # Grid points: rated_p_kw is the element's rating (a bus: its feeder's); flows of
    # either sign up to the rating (with margin) are physical.
    AssetKind.GRID_BUS: {
        Q.QUANTITY_VOLTAGE_PU: _const(_VOLTAGE_PU),
        Q.QUANTITY_ACTIVE_POWER: _symmetric,
        Q.QUANTITY_REACTIVE_POWER: _symmetric,
    },
    AssetKind.GRID_LINE: {
        Q.QUANTITY_ACTIVE_POWER: _symmetric,
        Q.QUANTITY_REACTIVE_POWER: _symmetric,
    },
    AssetKind.GRID_TRAFO: {
        Q.QUANTITY_ACTIVE_POWER: _symmetric,
        Q.QUANTITY_REACTIVE_POWER: _symmetric,
    },
}


def bounds_for(asset: Asset, quantity: int) -> Bounds | None:
    """Physical bounds of ``quantity`` for ``asset`` in canonical units, or None if not allowed."""
    fn = CHANNELS[asset.kind].get(quantity)
    return None if fn is None else fn(asset)


def channel_bounds(asset: Asset) -> Mapping[int, Bounds]:
    """Every quantity ``asset`` may report, with its physical bounds in canonical units
    (computed once per asset: assets are immutable; read-only)."""
    return _channel_bounds(asset)


@functools.lru_cache(maxsize=1 << 18)
def _channel_bounds(asset: Asset) -> Mapping[int, Bounds]:
    return MappingProxyType({quantity: fn(asset) for quantity, fn in CHANNELS[asset.kind].items()})
