"""A flexible-load Modbus TCP simulator: an electric boiler (or heat pump) with a tank.

One pymodbus TCP server (loopback, random port by default) hosts one device that
speaks the Gridfort load profile (register map in :mod:`edge_node.devices.modbus_load`).

Physics (:func:`step_load`, pure) runs on simulated time, the injected clock's
elapsed time times ``time_scale``: the device draws its limit ``W_LIM`` (at most its
rating) while the tank is below ``t_max_c``, nothing once it is hot; the energy
counter integrates the draw; the tank heats by ``cop`` x draw and loses heat to the
room through ``ua_kw_per_k``. Writes to ``W_LIM`` outside 0..W_RTG are refused with
Modbus exception 3 (illegal value), writes anywhere else with exception 2.
"""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass

from pymodbus.constants import ExcCodes
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from edge_node.devices import modbus_load as ml
from security.clock import Clock
from security.tasks import reap

_FC_READ_HOLDING, _FC_READ_INPUT = 3, 4
_S_PER_H = 3600.0


@dataclass(frozen=True, slots=True)
class LoadConfig:
    """A boiler or heat pump with a hot-water tank; units are in the names."""

    rated_kw: float = 3.0  # maximum electrical draw [kW]
    w_sf: int = 1  # power scale factor of the registers (1: units of 10 W)
    cop: float = 1.0  # heat out per electricity in (1 for a resistive boiler)
    capacity_kwh_per_k: float = 0.2  # tank heat capacity [kWh/K], ~170 l of water
    ua_kw_per_k: float = 0.005  # heat loss to the room [kW/K]
    ambient_c: float = 20.0  # room temperature [degC]
    t_max_c: float = 65.0  # thermostat: no draw at or above this [degC]

    def __post_init__(self) -> None:
        lo, hi = ml.W_SF_RANGE
        if not lo <= self.w_sf <= hi:
            raise ValueError(f"w_sf must be in {lo}..{hi}, got {self.w_sf}")
        rtg_raw = self.rated_kw * 1000 / 10.0**self.w_sf
        if not (math.isfinite(rtg_raw) and 1 <= rtg_raw < 0xFFFF):
            raise ValueError(f"rated_kw {self.rated_kw} does not fit W_RTG with W_SF {self.w_sf}")
        for name in ("cop", "capacity_kwh_per_k", "ua_kw_per_k"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a finite number > 0, got {value}")
        if not -40 <= self.ambient_c < self.t_max_c <= 120:
            raise ValueError("need -40 <= ambient_c < t_max_c <= 120 degC")

    @property
    def w_rtg_raw(self) -> int:
        return round(self.rated_kw * 1000 / 10.0**self.w_sf)


@dataclass(frozen=True, slots=True)
class LoadState:
    """The physical state: draw [kW, >= 0], lifetime imported energy [kWh], tank [degC]."""

    p_draw_kw: float
    e_imported_kwh: float
    temperature_c: float


def step_load(cfg: LoadConfig, state: LoadState, limit_kw: float, dt_s: float) -> LoadState:
    """Advance ``dt_s`` [s] with the draw limited to ``limit_kw`` [kW, >= 0]."""
    draw_kw = min(max(limit_kw, 0.0), cfg.rated_kw) if state.temperature_c < cfg.t_max_c else 0.0
    dt_h = dt_s / _S_PER_H
    heat_kw = cfg.cop * draw_kw - cfg.ua_kw_per_k * (state.temperature_c - cfg.ambient_c)
    temperature = state.temperature_c + heat_kw * dt_h / cfg.capacity_kwh_per_k
    return LoadState(
        p_draw_kw=draw_kw,
        e_imported_kwh=state.e_imported_kwh + draw_kw * dt_h,
        temperature_c=min(temperature, cfg.t_max_c + 1.0),
    )


def input_registers(cfg: LoadConfig, state: LoadState) -> list[int]:
    """Input registers 0..7 of the profile for ``state``."""
    scale = 10.0**cfg.w_sf
    e_wh = int(state.e_imported_kwh * 1000) % 2**32
    raw = {
        "ID": ml.PROFILE_ID,
        "VER": ml.PROFILE_VERSION,
        "W_RTG": cfg.w_rtg_raw,
        "W_SF": cfg.w_sf,
        "W": min(round(state.p_draw_kw * 1000 / scale), 0xFFFE),
        "WH_IMP": 0 if e_wh == ml.NOT_IMPLEMENTED["uint32"] else e_wh,
        "TMP": max(-3276, min(3276, round(state.temperature_c * 10))),
    }
    regs = [0] * ml.INPUT_COUNT
    for point in ml.REGISTER_MAP:
        if point.table == "input":
            regs[point.address : point.address + point.size] = ml.encode_point(
                point, raw[point.name]
            )
    return regs


async def _no_such_unit(*_args: object) -> ExcCodes | None:
    return ExcCodes.GATEWAY_NO_RESPONSE


class LoadSimulator:
    """One flexible load behind a Modbus TCP server; ``clock`` is the injected time."""

    def __init__(
        self,
        *,
        clock: Clock,
        config: LoadConfig | None = None,
        unit_id: int = 1,
        e_imported_kwh: float = 0.0,
        temperature_c: float = 45.0,
        time_scale: float = 1.0,
        host: str = "127.0.0.1",
        port: int = 0,
        step_s: float = 0.1,
    ) -> None:
        self._cfg = config or LoadConfig()
        if not 1 <= unit_id <= 247:
            raise ValueError(f"unit_id must be in 1..247, got {unit_id}")
        if not (math.isfinite(time_scale) and 0 < time_scale <= 1e6):
            raise ValueError(f"time_scale must be in (0, 1e6], got {time_scale}")
        if not (math.isfinite(step_s) and 0 < step_s <= 10):
            raise ValueError(f"step_s must be in (0, 10] s, got {step_s}")
        if not (math.isfinite(e_imported_kwh) and e_imported_kwh >= 0):
            raise ValueError("e_imported_kwh must be a finite number >= 0")
        self._unit_id, self._host, self._bind_port = unit_id, host, port
        self._clock, self._time_scale, self._step_s = clock, time_scale, step_s
        self._anchor_ms = self._sim_ms = clock.now_ms()
        self._state = LoadState(0.0, float(e_imported_kwh), float(temperature_c))
        self._limit_raw = self._cfg.w_rtg_raw  # unconstrained until told otherwise
        self._overrides: dict[str, int] = {}
        self._inputs = input_registers(self._cfg, self._state)
        self._server: ModbusTcpServer | None = None
        self._task: asyncio.Task[None] | None = None
        self._port: int | None = None
        self.step()

    @property
    def port(self) -> int:
        """The bound TCP port; only valid after :meth:`start`."""
        if self._port is None:
            raise RuntimeError("simulator not started")
        return self._port

    @property
    def limit_kw(self) -> float:
        """The draw limit W_LIM now holds [kW, >= 0]."""
        return self._limit_raw * 10.0**self._cfg.w_sf / 1000

    @property
    def state(self) -> LoadState:
        """The true physical state as of the last step."""
        return self._state

    def override_input(self, name: str, raw: int) -> None:
        """Publish ``raw`` in input point ``name`` from now on (a broken or lying device)."""
        point = ml.POINTS[name]
        if point.table != "input":
            raise ValueError(f"{name} is not an input register")
        self._overrides[name] = raw
        self._publish()

    async def start(self) -> int:
        """Listen and start stepping the physics; returns the bound port."""
        if self._server is not None:
            raise RuntimeError("simulator already started")
        bits = [SimData(0, values=False, datatype=DataType.BITS)]
        device = SimDevice(
            id=self._unit_id,
            simdata=(
                bits,
                list(bits),
                [SimData(0, values=0, datatype=DataType.REGISTERS)],
                [SimData(0, count=ml.INPUT_COUNT, values=0, datatype=DataType.REGISTERS)],
            ),
            action=self._on_access,
        )
        catch_all = SimDevice(
            id=0, simdata=[SimData(0, values=0, datatype=DataType.REGISTERS)], action=_no_such_unit
        )
        server = ModbusTcpServer([device, catch_all], address=(self._host, self._bind_port))
        await server.serve_forever(background=True)
        self._server = server
        listener = server.transport
        if not isinstance(listener, asyncio.Server) or not listener.sockets:
            await self.stop()
            raise RuntimeError("Modbus server is not listening")
        self._port = int(listener.sockets[0].getsockname()[1])
        self._task = asyncio.create_task(self._run(), name="load-sim-physics")
        return self._port

    async def stop(self) -> None:
        """Stop stepping, close every connection and release the port. Idempotent."""
        task, self._task = self._task, None
        await reap(task)
        server, self._server = self._server, None
        if server is not None:
            await server.shutdown()  # type: ignore[no-untyped-call]  # closes clients too

    def step(self) -> None:
        """Advance the physics to the clock's now and publish the registers."""
        elapsed_ms = (self._clock.now_ms() - self._anchor_ms) * self._time_scale
        now_sim = max(self._sim_ms, self._anchor_ms + int(elapsed_ms))
        dt_s = (now_sim - self._sim_ms) / 1000
        self._sim_ms = now_sim
        self._state = step_load(self._cfg, self._state, self.limit_kw, dt_s)
        self._publish()

    def _publish(self) -> None:
        regs = input_registers(self._cfg, self._state)
        for name, raw in self._overrides.items():
            point = ml.POINTS[name]
            regs[point.address : point.address + point.size] = ml.encode_point(point, raw)
        self._inputs = regs

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._step_s)
            self.step()

    async def _on_access(
        self,
        function_code: int,
        _start_address: int,
        address: int,
        count: int,
        current_registers: list[int],
        set_values: list[int] | list[bool] | None,
    ) -> ExcCodes | None:
        if set_values is not None:
            values = [int(v) for v in set_values][:count]
            if address != ml.W_LIM_ADDRESS or len(values) != 1:
                return ExcCodes.ILLEGAL_ADDRESS
            if not 0 <= values[0] <= self._cfg.w_rtg_raw:
                return ExcCodes.ILLEGAL_VALUE
            self.step()  # the old limit up to now, then the new one
            self._limit_raw = values[0]
            self.step()
            return None
        if function_code == _FC_READ_INPUT:
            current_registers[: ml.INPUT_COUNT] = self._inputs  # serve the latest physics
        elif function_code == _FC_READ_HOLDING:
            current_registers[ml.W_LIM_ADDRESS] = self._limit_raw
        return None
