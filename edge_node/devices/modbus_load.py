"""A controllable load (heat pump, boiler) over Modbus TCP: the "Gridfort load profile".

Real heat pumps and boilers expose vendor maps (SG-Ready relays, EEBus LPC, Modbus
power limits); this profile is the small common core a gateway needs from them, so a
vendor map is translated to it once (or a device speaks it natively, like the
simulator in :mod:`edge_node.simulators.load_server`).

Register map (one unit id; big-endian words, uint32 high word first):

============  =====  ========  =====================================================
table         addr   name      type, unit, meaning
============  =====  ========  =====================================================
input (FC 4)  0      ID        uint16, 0x474C ("GL"): marks the profile
input         1      VER       uint16, profile version, 1
input         2      W_RTG     uint16, W x 10^W_SF: rated (maximum) draw, > 0
input         3      W_SF      int16, power scale factor, 0..4 (0: W, 2: 0.1 kW)
input         4      W         uint16, W x 10^W_SF: measured draw now, >= 0
input         5-6    WH_IMP    uint32, Wh: lifetime imported energy (wraps at 2^32)
input         7      TMP       int16, 0.1 degC: process temperature (tank, flow)
holding (FC   0      W_LIM     uint16, W x 10^W_SF: maximum draw allowed now,
3, 6, 16)                      0..W_RTG (0 = off); a value outside is refused
                               with Modbus exception 3 (illegal value)
============  =====  ========  =====================================================

"Not implemented" values (uint16 0xFFFF, int16 0x8000, uint32 0xFFFFFFFF) are refused,
never passed on as numbers. The device reports its draw as a positive number; the
adapter converts to Gridfort's sign once, here: import is negative, so a measured
2 kW draw is ``ACTIVE_POWER = -2.0`` kW and a setpoint of ``-2.0`` kW writes a 2 kW
limit. ``read()`` takes all channels from one request, so power, energy counter and
temperature are sampled together and carry the same timestamp.

Every failure (refused connection, timeout, dropped link, Modbus exception, short
read, wrong profile, a scale factor or rating that changed since ``connect``)
surfaces as :class:`DeviceError` naming the device; no asyncio or pymodbus exception
escapes. After a timeout or a transport failure the link is dropped and the next
call reconnects.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from edge_node.devices.base import AppliedSetpoint, AssetKind, DeviceError, DeviceLimits, Reading
from edge_node.devices.modbus_link import ModbusAdapter, Request
from gridfort.v1 import telemetry_pb2 as tpb

PROFILE_ID = 0x474C  # "GL"
PROFILE_VERSION = 1
W_SF_RANGE = (0, 4)
NOT_IMPLEMENTED = {"uint16": 0xFFFF, "int16": 0x8000, "uint32": 0xFFFF_FFFF}


@dataclass(frozen=True, slots=True)
class LoadRegister:
    """One point of the load profile: where it lives, its type and its unit."""

    name: str
    table: str  # "input" (FC 4, read-only) or "holding" (FC 3 read, FC 6/16 write)
    address: int
    type: str  # "uint16", "int16" or "uint32"
    unit: str

    @property
    def size(self) -> int:
        """Registers the point occupies."""
        return 2 if self.type == "uint32" else 1


#: The profile as data: the adapter decodes and the simulator encodes with it.
REGISTER_MAP: tuple[LoadRegister, ...] = (
    LoadRegister("ID", "input", 0, "uint16", ""),
    LoadRegister("VER", "input", 1, "uint16", ""),
    LoadRegister("W_RTG", "input", 2, "uint16", "W x 10^W_SF"),
    LoadRegister("W_SF", "input", 3, "int16", ""),
    LoadRegister("W", "input", 4, "uint16", "W x 10^W_SF"),
    LoadRegister("WH_IMP", "input", 5, "uint32", "Wh"),
    LoadRegister("TMP", "input", 7, "int16", "0.1 degC"),
    LoadRegister("W_LIM", "holding", 0, "uint16", "W x 10^W_SF"),
)
POINTS = {p.name: p for p in REGISTER_MAP}
INPUT_COUNT = max(p.address + p.size for p in REGISTER_MAP if p.table == "input")
W_LIM_ADDRESS = POINTS["W_LIM"].address


class LoadProfileError(ValueError):
    """Registers that do not hold a valid load profile (the message names the point)."""


def decode_point(point: LoadRegister, regs: Sequence[int]) -> int:
    """The raw integer value of ``point`` within ``regs`` (a block starting at address 0)."""
    words = regs[point.address : point.address + point.size]
    if len(words) != point.size:
        raise LoadProfileError(f"{point.name}: block too short")
    raw = (words[0] << 16 | words[1]) if point.size == 2 else words[0]
    if raw == NOT_IMPLEMENTED[point.type]:
        raise LoadProfileError(f"{point.name} is not implemented (0x{raw:X})")
    if point.type == "int16" and raw >= 0x8000:
        raw -= 0x10000
    return raw


def encode_point(point: LoadRegister, raw: int) -> list[int]:
    """The registers holding ``raw`` for ``point`` (two's complement for int16)."""
    if point.size == 2:
        return [(raw >> 16) & 0xFFFF, raw & 0xFFFF]
    return [raw & 0xFFFF]


@dataclass(frozen=True, slots=True)
class LoadInputs:
    """The decoded input registers, in device units (draw positive)."""

    w_rtg_raw: int
    w_sf: int
    draw_w: float  # [W], >= 0
    e_imported_wh: int  # [Wh]
    temperature_c: float  # [degC]

    @property
    def rated_kw(self) -> float:
        return self.w_rtg_raw * 10.0**self.w_sf / 1000


def decode_inputs(regs: Sequence[int]) -> LoadInputs:
    """Decode input registers 0..7; LoadProfileError if they are not a valid profile."""
    if len(regs) < INPUT_COUNT:
        raise LoadProfileError(f"expected {INPUT_COUNT} input registers, got {len(regs)}")
    raw = {p.name: decode_point(p, regs) for p in REGISTER_MAP if p.table == "input"}
    if raw["ID"] != PROFILE_ID:
        raise LoadProfileError(f"ID is 0x{raw['ID']:04X}, not the load profile 0x{PROFILE_ID:04X}")
    if raw["VER"] != PROFILE_VERSION:
        raise LoadProfileError(f"profile version {raw['VER']} is not {PROFILE_VERSION}")
    lo, hi = W_SF_RANGE
    if not lo <= raw["W_SF"] <= hi:
        raise LoadProfileError(f"W_SF {raw['W_SF']} outside {lo}..{hi}")
    if raw["W_RTG"] <= 0:
        raise LoadProfileError("W_RTG is 0: a load must have a rating")
    scale = 10.0 ** raw["W_SF"]
    return LoadInputs(
        w_rtg_raw=raw["W_RTG"],
        w_sf=raw["W_SF"],
        draw_w=raw["W"] * scale,
        e_imported_wh=raw["WH_IMP"],
        temperature_c=raw["TMP"] / 10,
    )


class ModbusFlexibleLoad(ModbusAdapter):
    """A flexible load speaking the Gridfort load profile over Modbus TCP.

    ``apply_active_power(p_kw)`` with ``p_kw`` in [-rated, 0] kW writes W_LIM = -p_kw
    and returns the value read back from the device.
    """

    def __init__(
        self, asset_id: str, host: str, port: int, unit_id: int, timeout_s: float = 2.0
    ) -> None:
        super().__init__(asset_id, host, port, unit_id, timeout_s)
        self._rating: tuple[int, int] | None = None  # (W_RTG raw, W_SF) read at connect

    @property
    def asset_id(self) -> str:
        return self._asset_id

    @property
    def kind(self) -> AssetKind:
        return AssetKind.FLEXIBLE_LOAD

    async def connect(self) -> DeviceLimits:
        """Open the link, check the profile, return the rated draw as ``rated_p_kw``."""
        await self.close()
        await self._open()
        self._opened = True
        try:
            inputs = await self._read_inputs()
        except DeviceError:
            await self.close()
            raise
        self._rating = (inputs.w_rtg_raw, inputs.w_sf)
        return DeviceLimits(rated_p_kw=inputs.rated_kw)

    async def read(self, now_ms: int) -> list[Reading]:
        inputs = await self._checked_inputs()
        q, u = tpb.Quantity, tpb.Unit
        return [
            Reading(
                self._asset_id,
                q.QUANTITY_ACTIVE_POWER,
                u.UNIT_KW,
                0.0 - inputs.draw_w / 1000,
                now_ms,
            ),
            Reading(
                self._asset_id,
                q.QUANTITY_ENERGY_IMPORTED,
                u.UNIT_KWH,
                inputs.e_imported_wh / 1000,
                now_ms,
            ),
            Reading(
                self._asset_id, q.QUANTITY_TEMPERATURE, u.UNIT_DEG_C, inputs.temperature_c, now_ms
            ),
        ]

    async def apply_active_power(self, p_kw: float, now_ms: int) -> AppliedSetpoint:
        w_rtg_raw, w_sf = self._connected_rating()
        scale = 10.0**w_sf
        rated_kw = w_rtg_raw * scale / 1000
        if not math.isfinite(p_kw):
            raise self._error(f"setpoint {p_kw} kW is not finite")
        if not -rated_kw - 1e-9 <= p_kw <= 0:
            raise self._error(f"a load setpoint must be in [-{rated_kw:g}, 0] kW, got {p_kw}")
        raw = min(w_rtg_raw, round(-p_kw * 1000 / scale))
        await self._call(
            f"writing W_LIM={raw} at holding {W_LIM_ADDRESS}",
            lambda c: c.write_register(W_LIM_ADDRESS, raw, device_id=self._unit_id),
        )
        back = await self._registers(
            "holding",
            W_LIM_ADDRESS,
            1,
            lambda c: c.read_holding_registers(W_LIM_ADDRESS, count=1, device_id=self._unit_id),
        )
        try:
            limit_raw = decode_point(POINTS["W_LIM"], back)
        except LoadProfileError as exc:
            raise self._error(str(exc)) from exc
        return AppliedSetpoint(self._asset_id, 0.0 - limit_raw * scale / 1000, now_ms)

    async def close(self) -> None:
        self._opened = False
        self._rating = None
        self._drop()

    # --- profile ------------------------------------------------------------------------

    def _connected_rating(self) -> tuple[int, int]:
        if self._rating is None:
            raise self._error("not connected: call connect() first")
        return self._rating

    async def _read_inputs(self) -> LoadInputs:
        regs = await self._registers(
            "input",
            0,
            INPUT_COUNT,
            lambda c: c.read_input_registers(0, count=INPUT_COUNT, device_id=self._unit_id),
        )
        try:
            return decode_inputs(regs)
        except LoadProfileError as exc:
            raise self._error(str(exc)) from exc

    async def _checked_inputs(self) -> LoadInputs:
        rating = self._connected_rating()
        inputs = await self._read_inputs()
        if (inputs.w_rtg_raw, inputs.w_sf) != rating:
            raise self._error("W_RTG or W_SF changed since connect; reconnect to re-read ratings")
        return inputs

    # --- transport ----------------------------------------------------------------------

    async def _registers(self, table: str, address: int, count: int, request: Request) -> list[int]:
        what = f"reading {count} {table} registers at {address}"
        registers = (await self._call(what, request)).registers
        if len(registers) != count:
            raise self._error(f"short read: got {len(registers)} registers {what}")
        return [int(r) for r in registers]
