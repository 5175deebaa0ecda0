"""A SunSpec Modbus TCP site simulator: one server, a PV inverter and a battery.

One pymodbus TCP server (loopback by default) hosts two SunSpec devices:

* unit 1, PV inverter: models 1 (common), 103 (three-phase inverter: W, VAr,
  PhVphA, Hz, WH), 120 (nameplate: WRtg), 121 (settings: WMax, the base of
  WMaxLimPct) and 123 (immediate controls: Conn, WMaxLimPct, WMaxLim_Ena).
* unit 2, battery: models 1, 103, 124 (basic storage controls: WChaMax,
  StorCtl_Mod, InWRte, OutWRte) and 802 (battery: SoC, WHRtg, SoCMin/SoCMax,
  DC V/A/W and every other mandatory point).

The battery's *active power* is presented in model 103, as real hybrid and
storage inverters do (Fronius GEN24, SMA Sunny Island): 103 ``W`` is AC power at
the grid terminals with SunSpec's sign (+ export/discharge, - import/charge),
which is what a VPP meters and settles; 802 ``W`` is DC power at the cells (its
scale factor is even optional). 103 ``PhVphA`` is also the line-to-neutral AC
voltage that ``QUANTITY_VOLTAGE`` means; 802 ``V`` is the DC bus.

Model 124 as a setpoint (the simulator's documented reading of it): the
commanded AC power is ``(OutWRte if StorCtl_Mod has DISCHARGE) - (InWRte if it has
CHARGE)`` percent of ``WChaMax``; no bit set means idle. Writes are validated
against the model definitions (RW points only, enum symbols, ranges) and refused
with Modbus exceptions 2 (address) or 3 (value). Physics runs on simulated time:
the injected clock's elapsed time times ``time_scale``.

Grid frequency: model 103 ``Hz`` of both units is the frequency at the terminals.
:meth:`SunSpecSiteSimulator.set_grid_frequency` changes it at once (published in the
registers before it returns) and :meth:`SunSpecSiteSimulator.script_frequency` plays
a scripted event (e.g. a dip) on the simulator's event loop. For latency
measurements the simulator logs, on a monotonic clock [ns], every frequency change
(:attr:`frequency_log`) and every change of a unit's commanded power that a control
write caused (:attr:`control_log`), both at the device, where the truth is.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from pymodbus.constants import ExcCodes
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from edge_node.devices import sunspec_models as ssm
from edge_node.simulators import battery_model as bm
from edge_node.simulators import pv_model as pvm
from security.clock import Clock
from security.tasks import reap

PV_UNIT_ID = 1
BATTERY_UNIT_ID = 2
PV_MODELS = (1, 103, 120, 121, 123)
BATTERY_MODELS = (1, 103, 124, 802)
_HEADROOM = 1.5  # scale factors leave room for 150 % of rating
_CHARGE_BIT, _DISCHARGE_BIT = 0x1, 0x2  # model 124 StorCtl_Mod symbols CHARGE=0, DiSCHARGE=1
LOG_KEPT = 100_000  # entries kept in each latency log


@dataclass(frozen=True, slots=True)
class SiteConfig:
    """Validated simulator configuration; units are in the names."""

    pv: pvm.PvConfig
    battery: bm.BatteryConfig
    battery_soc_pct: float
    time_scale: float
    host: str
    port: int
    pv_e_exported_kwh: float
    grid_v: float
    grid_hz: float
    step_s: float

    def __post_init__(self) -> None:
        bm.BatteryState(soc_pct=self.battery_soc_pct)  # 0..100 or ValueError
        if not (math.isfinite(self.time_scale) and 0 < self.time_scale <= 1e6):
            raise ValueError(f"time_scale must be in (0, 1e6], got {self.time_scale}")
        if not self.host:
            raise ValueError("host must be non-empty")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be in 0..65535, got {self.port}")
        if not (math.isfinite(self.pv_e_exported_kwh) and self.pv_e_exported_kwh > 0):
            # SunSpec reserves accumulator value 0 for "not implemented".
            raise ValueError(f"pv_e_exported_kwh must be > 0 kWh, got {self.pv_e_exported_kwh}")
        if not 100.0 <= self.grid_v <= 500.0:
            raise ValueError(f"grid_v must be in 100..500 V, got {self.grid_v}")
        if not 40.0 <= self.grid_hz <= 70.0:
            raise ValueError(f"grid_hz must be in 40..70 Hz, got {self.grid_hz}")
        if not 0.01 <= self.step_s <= 10.0:
            raise ValueError(f"step_s must be in 0.01..10 s, got {self.step_s}")


@dataclass(frozen=True, slots=True)
class FrequencyStep:
    """One step of a scripted frequency event: ``hz`` [Hz] from ``after_s`` [s] after the
    script started."""

    after_s: float
    hz: float

    def __post_init__(self) -> None:
        if not (math.isfinite(self.after_s) and self.after_s >= 0):
            raise ValueError(f"FrequencyStep.after_s must be >= 0 s, got {self.after_s}")
        _check_hz(self.hz)


@dataclass(frozen=True, slots=True)
class FrequencyChange:
    """The frequency published at ``mono_ns`` [ns, monotonic clock] [Hz]."""

    mono_ns: int
    hz: float


@dataclass(frozen=True, slots=True)
class ControlChange:
    """A control write changed unit ``unit_id``'s commanded power to ``p_kw`` [kW] (battery:
    + discharge; PV: the export cap) at ``mono_ns`` [ns, monotonic clock]."""

    mono_ns: int
    unit_id: int
    p_kw: float


def _check_hz(hz: float) -> None:
    if not (math.isfinite(hz) and 40.0 <= hz <= 70.0):
        raise ValueError(f"grid frequency must be in 40..70 Hz, got {hz}")


@dataclass(frozen=True, slots=True)
class SiteSnapshot:
    """The true physical state (for tests): powers [kW, + export], energy [kWh], SOC [%]."""

    sim_ms: int
    pv_available_kw: float
    pv_cap_kw: float
    pv_p_kw: float
    pv_e_exported_kwh: float
    battery_cmd_kw: float
    battery_p_kw: float
    battery_soc_pct: float


# --- register maps -------------------------------------------------------------------


def _common(model: str, serial: str, unit_id: int) -> tuple[ssm.ModelDef, dict[str, ssm.RawValue]]:
    values: dict[str, ssm.RawValue] = {"Mn": "Gridfort", "Md": model, "SN": serial}
    return ssm.load_model(1), {**values, "Vr": "1.0", "DA": unit_id}


def _inverter_sfs(rated_w: float, grid_v: float, grid_hz: float) -> dict[str, ssm.RawValue]:
    w_sf = ssm.choose_sf(rated_w * _HEADROOM, "int16", -2)
    return {
        "W_SF": w_sf,
        "VA_SF": w_sf,
        "VAr_SF": w_sf,
        "A_SF": ssm.choose_sf(rated_w * _HEADROOM / grid_v, "uint16", -2),
        "V_SF": ssm.choose_sf(grid_v * math.sqrt(3) * _HEADROOM, "uint16", -1),
        "Hz_SF": ssm.choose_sf(grid_hz * _HEADROOM, "uint16", -2),
        "PF_SF": ssm.choose_sf(100 * _HEADROOM, "int16", -2),
        "WH_SF": 0,
        "Tmp_SF": -1,
        "St": 2,
        "Evt1": 0,
        "Evt2": 0,
    }


def _pv_image(cfg: SiteConfig) -> ssm.DeviceImage:
    rated_w = cfg.pv.rated_kw * 1000
    w_sf = ssm.choose_sf(rated_w * _HEADROOM, "uint16", -2)
    va_raw = ssm.to_raw(rated_w, w_sf)
    var_raw = ssm.to_raw(rated_w * 0.44, w_sf)  # reactive capability at cos(phi) 0.9
    nameplate = {"DERTyp": 4, "WRtg": va_raw, "VARtg": va_raw, "WRtg_SF": w_sf, "VARtg_SF": w_sf}
    nameplate |= {"VArRtgQ1": var_raw, "VArRtgQ2": var_raw, "VArRtg_SF": w_sf}
    nameplate |= {"VArRtgQ3": -var_raw, "VArRtgQ4": -var_raw, "ARtg_SF": -1, "PFRtg_SF": -2}
    nameplate |= {"ARtg": ssm.to_raw(rated_w / (3 * cfg.grid_v), -1)}
    nameplate |= {"PFRtgQ1": 90, "PFRtgQ2": 90, "PFRtgQ3": -90, "PFRtgQ4": -90}
    settings = {"WMax": va_raw, "WMax_SF": w_sf, "VRef": ssm.to_raw(cfg.grid_v, -1), "VRef_SF": -1}
    settings |= {"VRefOfs": 0, "VRefOfs_SF": 0}
    controls = {"Conn": 1, "WMaxLimPct": ssm.to_raw(100, -2), "WMaxLimPct_SF": -2, "WMaxLim_Ena": 0}
    controls |= {"OutPFSet": 1000, "OutPFSet_SF": -3, "OutPFSet_Ena": 0, "VArPct_Ena": 0}
    return ssm.DeviceImage(
        [
            _common("SimPV-3P", "GF-SIM-PV-0001", PV_UNIT_ID),
            (ssm.load_model(103), _inverter_sfs(rated_w, cfg.grid_v, cfg.grid_hz)),
            (ssm.load_model(120), nameplate),
            (ssm.load_model(121), settings),
            (ssm.load_model(123), controls),
        ]
    )


def _battery_image(cfg: SiteConfig) -> ssm.DeviceImage:
    bat = cfg.battery
    rated_w, e_wh = bat.rated_kw * 1000, bat.e_kwh * 1000
    w_sf = ssm.choose_sf(rated_w * _HEADROOM, "uint16", -2)
    storage = {"WChaMax": ssm.to_raw(rated_w, w_sf), "WChaMax_SF": w_sf, "StorCtl_Mod": 0}
    storage |= {"WChaGra": 100, "WDisChaGra": 100, "WChaDisChaGra_SF": 0, "InOutWRte_SF": -2}
    storage |= {"OutWRte": 0, "InWRte": 0, "ChaState_SF": -1, "InBatV_SF": -1}
    ah_rtg = e_wh / bat.nominal_v
    ah_sf, wh_sf = ssm.choose_sf(ah_rtg, "uint16", -1), ssm.choose_sf(e_wh, "uint16", 0)
    battery = {"AHRtg": ssm.to_raw(ah_rtg, ah_sf), "AHRtg_SF": ah_sf, "SoC_SF": -1, "V_SF": -1}
    battery |= {"WHRtg": ssm.to_raw(e_wh, wh_sf), "WHRtg_SF": wh_sf, "WChaDisChaMax_SF": w_sf}
    battery |= {"WChaRteMax": storage["WChaMax"], "WDisChaRteMax": storage["WChaMax"]}
    battery |= {
        "SoCMax": ssm.to_raw(bat.soc_max_pct, -1),
        "SoCMin": ssm.to_raw(bat.soc_min_pct, -1),
    }
    battery |= {"LocRemCtl": 0, "AlmRst": 0, "Typ": 4, "State": 3, "SetOp": 1, "SetInvState": 3}
    battery |= {"Evt1": 0, "Evt2": 0, "EvtVnd1": 0, "EvtVnd2": 0, "CellV_SF": -3, "AMax_SF": 0}
    battery |= {"A_SF": ssm.choose_sf(rated_w * _HEADROOM / bat.nominal_v, "int16", -2)}
    battery |= {"W_SF": ssm.choose_sf(rated_w * _HEADROOM, "int16", -2)}
    return ssm.DeviceImage(
        [
            _common("SimBattery", "GF-SIM-BAT-0001", BATTERY_UNIT_ID),
            (ssm.load_model(103), _inverter_sfs(rated_w, cfg.grid_v, cfg.grid_hz)),
            (ssm.load_model(124), storage),
            (ssm.load_model(802), battery),
        ]
    )


def _publish_ac(
    image: ssm.DeviceImage, cfg: SiteConfig, p_kw: float, rated_kw: float, hz: float
) -> None:
    """Model 103 measurements for AC power ``p_kw`` at unity power factor, frequency ``hz``."""
    p_w = p_kw * 1000
    phase_a = abs(p_w) / (3 * cfg.grid_v)
    values = {"W": p_w, "VA": abs(p_w), "VAr": 0.0, "PF": 100.0, "Hz": hz}
    values |= {"A": 3 * phase_a, "AphA": phase_a, "AphB": phase_a, "AphC": phase_a}
    values |= {f"PhVph{ph}": cfg.grid_v for ph in "ABC"}
    values |= {f"PPVph{ph}": cfg.grid_v * math.sqrt(3) for ph in ("AB", "BC", "CA")}
    values |= {"TmpCab": 30.0 + 15.0 * abs(p_kw) / rated_kw}
    for name, value in values.items():
        _set_scaled(image, 103, name, value)


def _set_scaled(image: ssm.DeviceImage, model_id: int, name: str, value: float) -> None:
    """``DeviceImage.set_scaled`` reading only the one scale-factor point, not the whole
    model: the physics publishes dozens of points per step, and a Modbus request waits
    for it."""
    ref = image.model(model_id).point(name).sf
    sf = 0 if ref is None else ref if isinstance(ref, int) else image.get(model_id, ref)
    if not isinstance(sf, int):
        raise ssm.SunSpecValueError(f"model {model_id}: no scale factor for {name}")
    image.set(model_id, name, ssm.to_raw(value, sf))


def _set_counter_wh(image: ssm.DeviceImage, e_wh: float) -> None:
    """Model 103 WH [Wh]; an acc32 that has counted nothing yet reads "not implemented" (0)."""
    raw = ssm.to_raw(e_wh, image.block(103).scale_factor("WH")) % 2**32  # accumulators wrap
    image.set(103, "WH", raw if raw else None)


def _pv_cap_kw(image: ssm.DeviceImage, rated_kw: float) -> float:
    """Export cap [kW] from models 121/123; SunSpecValueError if a control is nonsense."""
    wmax_kw = image.block(121).scaled("WMax") / 1000
    if not 0 < wmax_kw <= rated_kw * 1.001:
        raise ssm.SunSpecValueError(f"WMax {wmax_kw} kW outside (0, {rated_kw}]")
    ctl = image.block(123)
    pct = ctl.scaled("WMaxLimPct")
    if not 0 <= pct <= 100:
        raise ssm.SunSpecValueError(f"WMaxLimPct {pct} % outside 0..100")
    if ctl.raw("Conn") == 0:
        return 0.0
    return wmax_kw * pct / 100 if ctl.raw("WMaxLim_Ena") == 1 else wmax_kw


def _battery_cmd_kw(image: ssm.DeviceImage, rated_kw: float) -> float:
    """Commanded AC power [kW, + discharge] from model 124; SunSpecValueError if nonsense."""
    ctl = image.block(124)
    wcha_kw = ctl.scaled("WChaMax") / 1000
    if not 0 < wcha_kw <= rated_kw * 1.001:
        raise ssm.SunSpecValueError(f"WChaMax {wcha_kw} kW outside (0, {rated_kw}]")
    out_pct, in_pct = ctl.scaled_or_none("OutWRte") or 0.0, ctl.scaled_or_none("InWRte") or 0.0
    if not (-100 <= out_pct <= 100 and -100 <= in_pct <= 100):
        raise ssm.SunSpecValueError("InWRte/OutWRte outside -100..100 %")
    mode = ctl.raw("StorCtl_Mod")
    mode = mode if isinstance(mode, int) else 0
    pct = (out_pct if mode & _DISCHARGE_BIT else 0.0) - (in_pct if mode & _CHARGE_BIT else 0.0)
    return max(-wcha_kw, min(wcha_kw, pct / 100 * wcha_kw))


def _check_symbols(image: ssm.DeviceImage, address: int, count: int) -> None:
    """Enumerated and bitfield points touched by a write must hold defined symbols."""
    for model_id in image.model_ids():
        model, start = image.model(model_id), image.model_address(model_id)
        for p in model.points:
            touched = start + p.offset < address + count and address < start + p.offset + p.size
            if not (touched and p.symbols):
                continue
            value, allowed = image.get(model_id, p.name), {v for _, v in p.symbols}
            if p.type.startswith("enum") and value not in allowed:
                raise ssm.SunSpecValueError(f"{p.name}={value} is not a defined symbol")
            mask = sum(1 << bit for bit in allowed)
            if p.type.startswith("bitfield") and (not isinstance(value, int) or value & ~mask):
                raise ssm.SunSpecValueError(f"{p.name}={value} sets undefined bits")


# --- Modbus side ---------------------------------------------------------------------


class _Unit:
    """One simulated SunSpec device on the shared server: its image and write handling."""

    def __init__(
        self,
        unit_id: int,
        image: ssm.DeviceImage,
        validate: Callable[[ssm.DeviceImage], object],
        on_write: Callable[[Callable[[], None]], None],
    ) -> None:
        self.unit_id = unit_id
        self.image = image
        self._validate = validate
        self._on_write = on_write

    def sim_device(self) -> SimDevice:
        regs = list(self.image.registers)
        data = SimData(self.image.base_address, values=regs, datatype=DataType.REGISTERS)
        return SimDevice(id=self.unit_id, simdata=[data], action=self._on_access)

    async def _on_access(
        self,
        _function_code: int,
        _start_address: int,
        address: int,
        count: int,
        current_registers: list[int],
        set_values: list[int] | list[bool] | None,
    ) -> ExcCodes | None:
        regs = self.image.registers
        current_registers[: len(regs)] = regs  # serve the latest physics
        if set_values is None:
            return None
        return self._write(address, [int(v) for v in set_values][:count])

    def _write(self, address: int, values: list[int]) -> ExcCodes | None:
        if not self.image.is_writable(address, len(values)):
            return ExcCodes.ILLEGAL_ADDRESS
        candidate = self.image.copy()
        try:
            candidate.write_registers(address, values)
            _check_symbols(candidate, address, len(values))
            self._validate(candidate)
        except ssm.SunSpecValueError:
            return ExcCodes.ILLEGAL_VALUE
        self._on_write(lambda: self.image.write_registers(address, values))
        return None


def _bound_port(server: ModbusTcpServer) -> int:
    listener = server.transport
    if not isinstance(listener, asyncio.Server) or not listener.sockets:
        raise RuntimeError("Modbus server is not listening")
    return int(listener.sockets[0].getsockname()[1])


async def _no_such_unit(*_args: object) -> ExcCodes | None:
    return ExcCodes.GATEWAY_NO_RESPONSE


class SunSpecSiteSimulator:
    """A PV inverter (unit 1) and a battery (unit 2) behind one Modbus TCP server.

    Powers are in kW, energy in kWh, state of charge in %; ``clock`` is the
    injected time source and ``time_scale`` compresses simulated time.
    """

    def __init__(
        self,
        *,
        pv_rated_kw: float,
        battery_rated_kw: float,
        battery_e_kwh: float,
        battery_soc_pct: float,
        clock: Clock,
        time_scale: float = 1.0,
        host: str = "127.0.0.1",
        port: int = 0,
        utc_offset_h: float = 0.0,
        battery_soc_min_pct: float = 5.0,
        battery_soc_max_pct: float = 95.0,
        pv_e_exported_kwh: float = 1000.0,
        grid_v: float = 230.0,
        grid_hz: float = 50.0,
        step_s: float = 0.1,
        monotonic_ns: Callable[[], int] = time.monotonic_ns,
    ) -> None:
        battery = bm.BatteryConfig(
            battery_rated_kw, battery_e_kwh, battery_soc_min_pct, battery_soc_max_pct
        )
        pv = pvm.PvConfig(rated_kw=pv_rated_kw, utc_offset_h=utc_offset_h)
        self._cfg = SiteConfig(
            pv=pv,
            battery=battery,
            battery_soc_pct=battery_soc_pct,
            time_scale=time_scale,
            host=host,
            port=port,
            pv_e_exported_kwh=pv_e_exported_kwh,
            grid_v=grid_v,
            grid_hz=grid_hz,
            step_s=step_s,
        )
        self._clock = clock
        self._mono_ns = monotonic_ns
        self._grid_hz = grid_hz
        self.frequency_log: deque[FrequencyChange] = deque(maxlen=LOG_KEPT)
        #: Attack simulation (``gridfort demo --attack soc-inflation``): %-points added to the
        #: state of charge the battery's registers report; the physics is untouched.
        self.soc_falsification_pct = 0.0
        self.control_log: deque[ControlChange] = deque(maxlen=LOG_KEPT)
        self._script: asyncio.Task[None] | None = None
        self._anchor_ms = self._sim_ms = clock.now_ms()
        self._pv = pvm.PvState(p_kw=0.0, e_exported_kwh=pv_e_exported_kwh)
        self._bat = bm.BatteryState(soc_pct=float(battery_soc_pct))
        self._pv_unit = _Unit(
            PV_UNIT_ID, _pv_image(self._cfg), self._pv_cap, lambda c: self._apply(PV_UNIT_ID, c)
        )
        self._bat_unit = _Unit(
            BATTERY_UNIT_ID,
            _battery_image(self._cfg),
            self._bat_cmd,
            lambda c: self._apply(BATTERY_UNIT_ID, c),
        )
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

    async def start(self) -> int:
        """Listen and start stepping the physics; returns the bound port."""
        if self._server is not None:
            raise RuntimeError("simulator already started")
        catch_all = SimDevice(
            id=0,
            simdata=[SimData(0, count=0x10000, values=0, datatype=DataType.REGISTERS)],
            action=_no_such_unit,
        )
        devices = [self._pv_unit.sim_device(), self._bat_unit.sim_device(), catch_all]
        server = ModbusTcpServer(devices, address=(self._cfg.host, self._cfg.port))
        await server.serve_forever(background=True)
        self._server = server
        self._port = _bound_port(server)
        self._task = asyncio.create_task(self._run(), name="sunspec-sim-physics")
        return self._port

    async def stop(self) -> None:
        """Stop stepping, close every connection and release the port. Idempotent."""
        script, self._script = self._script, None
        await reap(script)
        task, self._task = self._task, None
        await reap(task)
        server, self._server = self._server, None
        if server is not None:
            await server.shutdown()  # type: ignore[no-untyped-call]  # closes clients too

    def step(self) -> None:
        """Advance the physics to the clock's now and publish the registers."""
        now_sim = pvm.scaled_time_ms(self._anchor_ms, self._clock.now_ms(), self._cfg.time_scale)
        now_sim = max(now_sim, self._sim_ms)
        dt_s = (now_sim - self._sim_ms) / 1000
        self._sim_ms = now_sim
        self._pv = pvm.step_pv(self._cfg.pv, self._pv, now_sim, dt_s, self._pv_cap())
        self._bat = bm.step_battery(self._cfg.battery, self._bat, self._bat_cmd(), dt_s)
        self._publish_pv()
        self._publish_battery()

    @property
    def grid_hz(self) -> float:
        """The grid frequency now published in model 103 ``Hz`` [Hz]."""
        return self._grid_hz

    def set_grid_frequency(self, hz: float) -> None:
        """Publish grid frequency ``hz`` [Hz, 40..70] in both units' model 103 now, and log it."""
        _check_hz(hz)
        self._grid_hz = float(hz)
        for unit in (self._pv_unit, self._bat_unit):
            _set_scaled(unit.image, 103, "Hz", self._grid_hz)
        self.frequency_log.append(FrequencyChange(self._mono_ns(), self._grid_hz))

    def script_frequency(self, steps: Sequence[FrequencyStep]) -> asyncio.Task[None]:
        """Play ``steps`` from now on the simulator's loop (replacing a running script)."""
        ordered = sorted(steps, key=lambda s: s.after_s)
        if self._script is not None:
            self._script.cancel()
        self._script = asyncio.ensure_future(self._play(ordered))
        return self._script

    async def _play(self, steps: Sequence[FrequencyStep]) -> None:
        loop = asyncio.get_running_loop()
        start = loop.time()
        for step in steps:
            await asyncio.sleep(max(0.0, start + step.after_s - loop.time()))
            self.set_grid_frequency(step.hz)

    def point_address(self, unit_id: int, model_id: int, name: str) -> int:
        """Modbus address of a point on unit 1 (PV) or 2 (battery), e.g. for a test client."""
        units = {PV_UNIT_ID: self._pv_unit, BATTERY_UNIT_ID: self._bat_unit}
        if unit_id not in units:
            raise ValueError(f"no unit {unit_id}; units are {sorted(units)}")
        return units[unit_id].image.point_address(model_id, name)

    def snapshot(self) -> SiteSnapshot:
        """The true physical state as of the last step."""
        return SiteSnapshot(
            sim_ms=self._sim_ms,
            pv_available_kw=pvm.available_kw(self._cfg.pv, self._sim_ms),
            pv_cap_kw=self._pv_cap(),
            pv_p_kw=self._pv.p_kw,
            pv_e_exported_kwh=self._pv.e_exported_kwh,
            battery_cmd_kw=self._bat_cmd(),
            battery_p_kw=self._bat.p_kw,
            battery_soc_pct=self._bat.soc_pct,
        )

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._cfg.step_s)
            self.step()

    def _apply(self, unit_id: int, commit: Callable[[], None]) -> None:
        """A validated control write: run the old setpoint up to now, commit, re-publish,
        and log the commanded power if the write changed it."""
        self.step()
        before = self._commanded(unit_id)
        commit()
        after = self._commanded(unit_id)
        if after != before:
            self.control_log.append(ControlChange(self._mono_ns(), unit_id, after))
        self.step()

    def _commanded(self, unit_id: int) -> float:
        return self._pv_cap() if unit_id == PV_UNIT_ID else self._bat_cmd()

    def _pv_cap(self, image: ssm.DeviceImage | None = None) -> float:
        return _pv_cap_kw(
            image if image is not None else self._pv_unit.image, self._cfg.pv.rated_kw
        )

    def _bat_cmd(self, image: ssm.DeviceImage | None = None) -> float:
        return _battery_cmd_kw(
            image if image is not None else self._bat_unit.image, self._cfg.battery.rated_kw
        )

    def _publish_pv(self) -> None:
        image, p_kw = self._pv_unit.image, self._pv.p_kw
        _publish_ac(image, self._cfg, p_kw, self._cfg.pv.rated_kw, self._grid_hz)
        _set_counter_wh(image, self._pv.e_exported_kwh * 1000)
        curtailed = self._pv_cap() < pvm.available_kw(self._cfg.pv, self._sim_ms)
        state = 2 if p_kw <= 0 else 5 if curtailed else 4  # SLEEPING, THROTTLED, MPPT
        image.set(103, "St", 1 if image.get(123, "Conn") == 0 else state)  # OFF

    def _publish_battery(self) -> None:
        image, cfg, bat = self._bat_unit.image, self._cfg.battery, self._bat
        _publish_ac(image, self._cfg, bat.p_kw, cfg.rated_kw, self._grid_hz)
        _set_counter_wh(image, bat.e_discharged_kwh * 1000)
        image.set(103, "St", 4 if bat.p_kw else 8)  # MPPT (running), STANDBY
        v_dc, p_dc_w = bm.dc_voltage_v(cfg, bat.soc_pct), bm.dc_power_kw(cfg, bat.p_kw) * 1000
        soc = min(100.0, bat.soc_pct + self.soc_falsification_pct)  # a compromised BMS lies
        for name, value in {"SoC": soc, "V": v_dc, "A": p_dc_w / v_dc, "W": p_dc_w}.items():
            _set_scaled(image, 802, name, value)
        _set_scaled(image, 124, "ChaState", bat.soc_pct)
        _set_scaled(image, 124, "InBatV", v_dc)
        cha_st = self._charge_status()
        image.set(802, "ChaSt", cha_st)
        image.set(124, "ChaSt", cha_st)

    def _charge_status(self) -> int:
        """Model 124/802 ChaSt: FULL 5, EMPTY 2, CHARGING 4, DISCHARGING 3, HOLDING 6."""
        bat, cfg = self._bat, self._cfg.battery
        if bat.p_kw < 0:
            return 4
        if bat.p_kw > 0:
            return 3
        if bat.soc_pct >= cfg.soc_max_pct:
            return 5
        return 2 if bat.soc_pct <= cfg.soc_min_pct else 6
