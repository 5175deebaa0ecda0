"""SunSpec Modbus TCP device adapters: a PV inverter and a battery.

Both scan for the 'SunS' marker (registers 40000, 0, 50000), walk the model chain
to the end model, check the models they need are present and decode registers
with the model definitions from :mod:`edge_node.devices.sunspec_models`.
Values leave here in canonical units (kW, kvar, V, Hz, %, kWh; + export/discharge).

Every failure (refused connection, timeout, dropped link, Modbus exception
response, short read, not-implemented value, absurd scale factor) surfaces as
:class:`DeviceError` naming the device and what went wrong; no asyncio or
pymodbus exception escapes. After a timeout or transport failure the
connection is dropped and the next call reconnects.

Models used: PV -- 1, 103 (W, VAr, PhVphA, Hz, WH), 120 (WRtg), 121 (WMax, the
base of WMaxLimPct, optional: WRtg if absent), 123 (WMaxLimPct, WMaxLim_Ena).
Battery -- 1, 103 (AC W and PhVphA at the grid terminals, which is what a VPP
settles), 124 (WChaMax, StorCtl_Mod, InWRte, OutWRte) and 802 (SoC, WHRtg,
SoCMin, SoCMax).
"""

from __future__ import annotations

import abc
import math
from collections.abc import Awaitable, Mapping

from pymodbus.client import AsyncModbusTcpClient
from pymodbus.pdu import ModbusPDU

from edge_node.devices import sunspec_models as ssm
from edge_node.devices.base import AppliedSetpoint, AssetKind, DeviceError, DeviceLimits, Reading
from edge_node.devices.modbus_link import (
    ModbusAdapter,
    ModbusExceptionResponse,
)
from gridfort.v1 import telemetry_pb2 as tpb

MAX_MODELS = 64  # a longer chain is treated as a broken device
_CHARGE_BIT, _DISCHARGE_BIT = 0x1, 0x2  # model 124 StorCtl_Mod: CHARGE=bit 0, DiSCHARGE=bit 1
_ILLEGAL_ADDRESS = 2  # Modbus exception code: nothing mapped at that register


_ExceptionResponse = ModbusExceptionResponse  # a Modbus exception answer (its code)


class SunSpecModbusDevice(ModbusAdapter, abc.ABC):
    """Modbus TCP plumbing shared by the SunSpec adapters; subclasses read the ratings."""

    required_models: tuple[int, ...] = (ssm.COMMON_MODEL_ID,)

    def __init__(
        self, asset_id: str, host: str, port: int, unit_id: int, timeout_s: float = 2.0
    ) -> None:
        super().__init__(asset_id, host, port, unit_id, timeout_s)
        self._models: dict[int, tuple[int, int]] = {}  # model id -> (address, L)

    @property
    def asset_id(self) -> str:
        return self._asset_id

    async def connect(self) -> DeviceLimits:
        """Open the link, find the SunSpec map and the required models, read the ratings."""
        await self.close()
        await self._open()
        self._opened = True
        try:
            await self._discover()
            return await self._read_limits()
        except DeviceError:
            await self.close()
            raise

    async def close(self) -> None:
        self._opened = False
        self._models = {}
        self._drop()

    @abc.abstractmethod
    async def _read_limits(self) -> DeviceLimits:
        """Read the device's ratings once the required models are known."""

    # --- errors and transport ----------------------------------------------------------

    async def _read(self, address: int, count: int) -> list[int]:
        regs: list[int] = []
        while len(regs) < count:
            start = address + len(regs)
            regs.extend(
                await self._read_chunk(start, min(ssm.MAX_READ_REGISTERS, count - len(regs)))
            )
        return regs

    async def _read_chunk(self, address: int, count: int) -> list[int]:
        what = f"reading {count} registers at {address}"

        def request(client: AsyncModbusTcpClient) -> Awaitable[ModbusPDU]:
            return client.read_holding_registers(address, count=count, device_id=self._unit_id)

        registers = (await self._call(what, request)).registers
        if len(registers) != count:
            raise self._error(f"short read: got {len(registers)} registers {what}")
        return [int(r) for r in registers]

    async def _write(self, address: int, values: list[int]) -> None:
        what = f"writing {len(values)} registers at {address}"

        def request(client: AsyncModbusTcpClient) -> Awaitable[ModbusPDU]:
            return client.write_registers(address, values, device_id=self._unit_id)

        await self._call(what, request)

    # --- SunSpec discovery and blocks --------------------------------------------------

    async def _find_base(self) -> int:
        for base in ssm.BASE_ADDRESSES:
            try:
                if tuple(await self._read(base, 2)) == ssm.SUNS_MARKER:
                    return base
            except _ExceptionResponse as exc:
                if exc.code != _ILLEGAL_ADDRESS:
                    raise
                # nothing mapped there; try the next address the spec allows
        bases = ", ".join(str(b) for b in ssm.BASE_ADDRESSES)
        raise self._error(f"no SunSpec 'SunS' marker at registers {bases}")

    async def _walk_models(self, base: int) -> list[tuple[int, int, int]]:
        """(model id, address, L) of every model, in chain order."""
        chain: list[tuple[int, int, int]] = []
        address = base + 2
        while len(chain) < MAX_MODELS:
            model_id, length = await self._read(address, 2)
            if model_id == ssm.END_MODEL_ID:
                return chain
            chain.append((model_id, address, length))
            address += 2 + length
            if address + 2 > 0x10000:
                raise self._error("SunSpec model chain runs past register 65535 (no end model)")
        raise self._error(f"SunSpec model chain longer than {MAX_MODELS} models (no end model)")

    async def _discover(self) -> None:
        chain = await self._walk_models(await self._find_base())
        ids = [model_id for model_id, _, _ in chain]
        present = ", ".join(str(i) for i in ids) or "none"
        if not ids or ids[0] != ssm.COMMON_MODEL_ID:
            raise self._error(f"first SunSpec model must be 1 (models present: {present})")
        missing = [m for m in self.required_models if m not in ids]
        if missing:
            noun = "model" if len(missing) == 1 else "models"
            names = ", ".join(str(m) for m in missing)
            raise self._error(f"SunSpec {noun} {names} not found (models present: {present})")
        self._models = {}
        for model_id, address, length in chain:
            self._models.setdefault(model_id, (address, length))

    async def _block(self, model_id: int) -> ssm.ModelBlock:
        if not self._opened or model_id not in self._models:
            raise self._error("not connected: call connect() first")
        address, length = self._models[model_id]
        model = ssm.load_model(model_id)
        if length != model.length:
            raise self._error(
                f"SunSpec model {model_id} has length {length}, its definition says {model.length}"
            )
        regs = await self._read(address, model.block_len)
        try:
            return ssm.decode_model(model, regs)
        except ssm.SunSpecValueError as exc:
            raise self._error(str(exc)) from exc

    def _scaled(self, block: ssm.ModelBlock, name: str) -> float:
        try:
            return block.scaled(name)
        except ssm.SunSpecValueError as exc:
            raise self._error(str(exc)) from exc

    def _scale_factor(self, block: ssm.ModelBlock, name: str) -> int:
        try:
            return block.scale_factor(name)
        except ssm.SunSpecValueError as exc:
            raise self._error(str(exc)) from exc

    def _scaled_or_none(self, block: ssm.ModelBlock, name: str) -> float | None:
        return None if block.raw(name) is None else self._scaled(block, name)

    async def _write_points(self, model_id: int, raw: Mapping[str, int]) -> None:
        """Write raw point values, one request per run of adjacent points."""
        model, (address, _) = ssm.load_model(model_id), self._models[model_id]
        points = sorted((model.point(n) for n in raw), key=lambda p: p.offset)
        run_start = points[0].offset
        run_regs: list[int] = []
        for point in points:
            if point.offset != run_start + len(run_regs):
                await self._write(address + run_start, run_regs)
                run_start, run_regs = point.offset, []
            try:
                run_regs.extend(ssm.encode_point(point, raw[point.name]))
            except ssm.SunSpecValueError as exc:
                raise self._error(str(exc)) from exc
        await self._write(address + run_start, run_regs)

    def _reading(self, quantity: int, unit: int, value: float, now_ms: int) -> Reading:
        return Reading(self._asset_id, quantity, unit, value, now_ms)

    def _setpoint_kw(self, p_kw: float) -> float:
        """``p_kw`` checked to be finite, on a connected device."""
        if not self._opened:
            raise self._error("not connected: call connect() first")
        if not math.isfinite(p_kw):
            raise self._error(f"setpoint {p_kw} kW is not finite")
        return p_kw


class SunSpecPvInverter(SunSpecModbusDevice):
    """A PV inverter: models 1, 103, 120, 123 (and 121 when present).

    ``apply_active_power`` caps export through 123 WMaxLimPct (% of 121 WMax, or of
    120 WRtg when 121 is absent) and enables it with WMaxLim_Ena.
    """

    required_models = (1, 103, 120, 123)

    def __init__(
        self, asset_id: str, host: str, port: int, unit_id: int, timeout_s: float = 2.0
    ) -> None:
        super().__init__(asset_id, host, port, unit_id, timeout_s)
        self._rated_kw = 0.0
        self._wmax_kw = 0.0

    @property
    def kind(self) -> AssetKind:
        return AssetKind.PV_INVERTER

    async def _read_limits(self) -> DeviceLimits:
        self._rated_kw = self._scaled(await self._block(120), "WRtg") / 1000
        if not self._rated_kw > 0:
            raise self._error(f"model 120 WRtg is {self._rated_kw} kW, must be > 0")
        self._wmax_kw = self._rated_kw
        if 121 in self._models:
            wmax_kw = self._scaled_or_none(await self._block(121), "WMax")
            self._wmax_kw = wmax_kw / 1000 if wmax_kw else self._rated_kw
        return DeviceLimits(rated_p_kw=self._rated_kw)

    async def read(self, now_ms: int) -> list[Reading]:
        ac = await self._block(103)
        q, u = tpb.Quantity, tpb.Unit
        return [
            self._reading(q.QUANTITY_ACTIVE_POWER, u.UNIT_KW, self._scaled(ac, "W") / 1000, now_ms),
            self._reading(
                q.QUANTITY_REACTIVE_POWER, u.UNIT_KVAR, self._scaled(ac, "VAr") / 1000, now_ms
            ),
            self._reading(q.QUANTITY_VOLTAGE, u.UNIT_V, self._scaled(ac, "PhVphA"), now_ms),
            self._reading(q.QUANTITY_FREQUENCY, u.UNIT_HZ, self._scaled(ac, "Hz"), now_ms),
            self._reading(
                q.QUANTITY_ENERGY_EXPORTED, u.UNIT_KWH, self._scaled(ac, "WH") / 1000, now_ms
            ),
        ]

    async def apply_active_power(self, p_kw: float, now_ms: int) -> AppliedSetpoint:
        if not self._setpoint_kw(p_kw) >= 0:
            raise self._error(f"PV export cap must be >= 0 kW, got {p_kw}")
        pct = min(100.0, p_kw / self._wmax_kw * 100)
        sf = self._scale_factor(await self._block(123), "WMaxLimPct")
        await self._write_points(123, {"WMaxLimPct": ssm.to_raw(pct, sf)})
        await self._write_points(123, {"WMaxLim_Ena": 1})
        ctl = await self._block(123)
        cap_kw = self._wmax_kw
        if ctl.raw("WMaxLim_Ena") == 1:
            cap_kw = self._scaled(ctl, "WMaxLimPct") / 100 * self._wmax_kw
        return AppliedSetpoint(self.asset_id, cap_kw, now_ms)


class SunSpecBattery(SunSpecModbusDevice):
    """A battery: models 1, 103 (AC power, voltage), 124 (controls), 802 (SoC, ratings).

    ``apply_active_power`` sets 124 InWRte (charge, ``p_kw`` < 0) or OutWRte
    (discharge, ``p_kw`` > 0) as % of WChaMax, then StorCtl_Mod (0 = idle).
    """

    required_models = (1, 103, 124, 802)

    @property
    def kind(self) -> AssetKind:
        return AssetKind.BATTERY

    async def _read_limits(self) -> DeviceLimits:
        wcha_kw = self._scaled(await self._block(124), "WChaMax") / 1000
        battery = await self._block(802)
        e_kwh = self._scaled(battery, "WHRtg") / 1000
        soc_min = self._scaled_or_none(battery, "SoCMin") or 0.0
        soc_max = self._scaled_or_none(battery, "SoCMax") or 100.0
        if not (wcha_kw > 0 and e_kwh > 0 and 0 <= soc_min < soc_max <= 100):
            raise self._error(
                f"implausible ratings: WChaMax {wcha_kw} kW, WHRtg {e_kwh} kWh, "
                f"SoC window {soc_min}..{soc_max} %"
            )
        return DeviceLimits(wcha_kw, e_kwh, soc_min, soc_max)

    async def read(self, now_ms: int) -> list[Reading]:
        ac, battery = await self._block(103), await self._block(802)
        soc = self._scaled(battery, "SoC")
        if not 0 <= soc <= 100:
            raise self._error(f"model 802 SoC {soc} % outside 0..100")
        q, u = tpb.Quantity, tpb.Unit
        readings = [
            self._reading(q.QUANTITY_ACTIVE_POWER, u.UNIT_KW, self._scaled(ac, "W") / 1000, now_ms),
            self._reading(q.QUANTITY_STATE_OF_CHARGE, u.UNIT_PCT, soc, now_ms),
        ]
        voltage = self._scaled_or_none(ac, "PhVphA")
        if voltage is not None:
            readings.append(self._reading(q.QUANTITY_VOLTAGE, u.UNIT_V, voltage, now_ms))
        return readings

    async def apply_active_power(self, p_kw: float, now_ms: int) -> AppliedSetpoint:
        self._setpoint_kw(p_kw)
        ctl = await self._block(124)
        wcha_kw = self._scaled(ctl, "WChaMax") / 1000
        if not abs(p_kw) <= wcha_kw * (1 + 1e-9):
            raise self._error(f"setpoint {p_kw} kW exceeds WChaMax {wcha_kw} kW")
        rate = ssm.to_raw(abs(p_kw) / wcha_kw * 100, self._scale_factor(ctl, "InWRte"))
        out_rate, in_rate, mode = (rate, 0, _DISCHARGE_BIT) if p_kw > 0 else (0, rate, _CHARGE_BIT)
        if p_kw == 0:
            mode = 0
        await self._write_points(124, {"OutWRte": out_rate, "InWRte": in_rate})
        await self._write_points(124, {"StorCtl_Mod": mode})
        return AppliedSetpoint(self.asset_id, self._commanded_kw(await self._block(124)), now_ms)

    def _commanded_kw(self, ctl: ssm.ModelBlock) -> float:
        """The setpoint the device holds [kW, + discharge], from a model 124 block."""
        mode = ctl.raw("StorCtl_Mod")
        if not isinstance(mode, int):
            raise self._error("model 124 StorCtl_Mod is not implemented")
        out_pct = self._scaled(ctl, "OutWRte") if mode & _DISCHARGE_BIT else 0.0
        in_pct = self._scaled(ctl, "InWRte") if mode & _CHARGE_BIT else 0.0
        return (out_pct - in_pct) / 100 * self._scaled(ctl, "WChaMax") / 1000
