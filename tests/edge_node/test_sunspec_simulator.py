"""PV and battery physics, and the SunSpec site simulator on a real loopback server."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
import sunspec2.modbus.client as ss_client
from hypothesis import given
from hypothesis import strategies as st
from pymodbus.client import AsyncModbusTcpClient

from edge_node.devices import sunspec_models as ssm
from edge_node.simulators import battery_model as bm
from edge_node.simulators import pv_model as pvm
from edge_node.simulators.sunspec_server import SunSpecSiteSimulator
from security.clock import ManualClock

DAY_MS = 86_400_000
MIDNIGHT_MS = 1_700_006_400_000  # 2023-11-15T00:00Z
NOON_MS = MIDNIGHT_MS + DAY_MS // 2
HOUR_MS = 3_600_000

# --- PV physics --------------------------------------------------------------------------


def test_pv_curve_peaks_at_solar_noon_and_is_dark_at_night() -> None:
    cfg = pvm.PvConfig(rated_kw=5.0)
    assert pvm.available_kw(cfg, NOON_MS) == pytest.approx(5.0)
    assert pvm.available_kw(cfg, MIDNIGHT_MS) == 0.0
    assert pvm.available_kw(cfg, MIDNIGHT_MS + 6 * HOUR_MS) == 0.0  # sunrise
    morning = pvm.available_kw(cfg, NOON_MS - 3 * HOUR_MS)
    assert 0 < morning < 5.0
    assert pvm.available_kw(cfg, NOON_MS + 3 * HOUR_MS) == pytest.approx(morning)


def test_pv_follows_local_solar_time() -> None:
    cfg = pvm.PvConfig(rated_kw=4.0, utc_offset_h=2.0)
    assert pvm.available_kw(cfg, NOON_MS - 2 * HOUR_MS) == pytest.approx(4.0)
    assert pvm.local_hour(NOON_MS, -5.0) == pytest.approx(7.0)


def test_pv_output_is_capped_and_energy_integrates() -> None:
    cfg = pvm.PvConfig(rated_kw=5.0)
    assert pvm.output_kw(cfg, NOON_MS, cap_kw=2.0) == 2.0
    state = pvm.step_pv(cfg, pvm.PvState(2.0, 10.0), NOON_MS, 1800.0, cap_kw=2.0)
    assert state.p_kw == 2.0
    assert state.e_exported_kwh == pytest.approx(11.0)


def test_time_scale_compresses_a_day() -> None:
    assert pvm.scaled_time_ms(MIDNIGHT_MS, MIDNIGHT_MS + 30_000, 1440.0) == NOON_MS


@pytest.mark.parametrize(
    "kwargs",
    [
        {"rated_kw": 0.0},
        {"rated_kw": 5.0, "sunrise_h": 19.0},
        {"rated_kw": 5.0, "utc_offset_h": 20},
    ],
)
def test_pv_config_refuses_nonsense(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="PvConfig"):
        pvm.PvConfig(**kwargs)


# --- battery physics ---------------------------------------------------------------------

BAT = bm.BatteryConfig(rated_kw=5.0, e_kwh=10.0, soc_min_pct=10.0, soc_max_pct=90.0)


def test_charging_raises_soc_through_the_efficiency() -> None:
    state = bm.step_battery(BAT, bm.BatteryState(50.0), -4.0, 3600.0)
    assert state.soc_pct == pytest.approx(50.0 + 4.0 * 0.95 / 10.0 * 100)
    assert state.p_kw == -4.0
    assert state.e_charged_kwh == pytest.approx(4.0)


def test_charging_stops_at_max_soc() -> None:
    state = bm.step_battery(BAT, bm.BatteryState(85.0), -5.0, 10 * 3600.0)
    assert (state.soc_pct, state.p_kw) == (90.0, 0.0)
    assert state.e_charged_kwh == pytest.approx(0.5 / 0.95)
    assert bm.step_battery(BAT, state, -5.0, 0.0).p_kw == 0.0


def test_discharging_stops_at_min_soc_and_power_is_limited() -> None:
    state = bm.step_battery(BAT, bm.BatteryState(20.0), 50.0, 3600.0)
    assert (state.soc_pct, state.p_kw) == (10.0, 0.0)
    assert state.e_discharged_kwh == pytest.approx(1.0 * 0.95)
    assert bm.step_battery(BAT, bm.BatteryState(50.0), 50.0, 1.0).p_kw == 5.0


@given(
    st.floats(10.0, 90.0),
    st.lists(st.tuples(st.floats(-20.0, 20.0), st.floats(0.0, 20_000.0)), max_size=30),
)
def test_soc_never_leaves_its_window(soc: float, steps: list[tuple[float, float]]) -> None:
    state = bm.BatteryState(soc)
    for p_kw, dt_s in steps:
        state = bm.step_battery(BAT, state, p_kw, dt_s)
        assert BAT.soc_min_pct <= state.soc_pct <= BAT.soc_max_pct
        assert abs(state.p_kw) <= BAT.rated_kw


@pytest.mark.parametrize(
    "kwargs",
    [
        {"rated_kw": -1.0, "e_kwh": 10.0},
        {"rated_kw": 5.0, "e_kwh": 0.0},
        {"rated_kw": 5.0, "e_kwh": 10.0, "soc_min_pct": 50.0, "soc_max_pct": 40.0},
        {"rated_kw": 5.0, "e_kwh": 10.0, "charge_efficiency": 1.5},
    ],
)
def test_battery_config_refuses_nonsense(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="BatteryConfig"):
        bm.BatteryConfig(**kwargs)


# --- the simulator -----------------------------------------------------------------------


def _sim(clock: ManualClock, **overrides: Any) -> SunSpecSiteSimulator:
    kwargs: dict[str, Any] = {
        "pv_rated_kw": 5.0,
        "battery_rated_kw": 5.0,
        "battery_e_kwh": 10.0,
        "battery_soc_pct": 50.0,
        "clock": clock,
    }
    return SunSpecSiteSimulator(**(kwargs | overrides))


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(NOON_MS)


@pytest.fixture
async def sim(clock: ManualClock) -> AsyncIterator[SunSpecSiteSimulator]:
    simulator = _sim(clock)
    await simulator.start()
    yield simulator
    await simulator.stop()


@pytest.fixture
async def client(sim: SunSpecSiteSimulator) -> AsyncIterator[AsyncModbusTcpClient]:
    modbus = AsyncModbusTcpClient("127.0.0.1", port=sim.port, timeout=1, retries=0)
    assert await modbus.connect()
    yield modbus
    modbus.close()


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"pv_rated_kw": -5.0}, "rated_kw"),
        ({"battery_e_kwh": 0.0}, "e_kwh"),
        ({"battery_soc_pct": 120.0}, "soc_pct"),
        ({"time_scale": 0.0}, "time_scale"),
        ({"port": 70000}, "port"),
        ({"battery_soc_min_pct": 95.0, "battery_soc_max_pct": 90.0}, "soc_min_pct"),
    ],
)
def test_simulator_refuses_nonsense_config(overrides: dict[str, float], field: str) -> None:
    with pytest.raises(ValueError, match=field):
        _sim(ManualClock(NOON_MS), **overrides)


def _scan(port: int, unit_id: int) -> dict[int, Any]:
    device = ss_client.SunSpecModbusClientDeviceTCP(
        slave_id=unit_id, ipaddr="127.0.0.1", ipport=port, timeout=2
    )
    try:
        device.scan()
        return {mid: device.models[mid][0] for mid in device.models if isinstance(mid, int)}
    finally:
        device.close()


async def test_pysunspec2_client_scans_both_devices(sim: SunSpecSiteSimulator) -> None:
    pv = await asyncio.to_thread(_scan, sim.port, 1)
    battery = await asyncio.to_thread(_scan, sim.port, 2)
    assert sorted(pv) == [1, 103, 120, 121, 123]
    assert sorted(battery) == [1, 103, 124, 802]
    assert all(not m.error_info for m in (*pv.values(), *battery.values()))
    assert pv[103].W.cvalue == pytest.approx(5000)
    assert pv[120].WRtg.cvalue == pytest.approx(5000)
    assert battery[802].SoC.cvalue == pytest.approx(50.0)
    assert battery[802].WHRtg.cvalue == pytest.approx(10_000)


async def _read_point(client: AsyncModbusTcpClient, unit: int, model_id: int, name: str) -> float:
    """Read one model block over Modbus the long way (scan 'SunS', walk the chain)."""
    regs = (await client.read_holding_registers(40000, count=2, device_id=unit)).registers
    assert tuple(regs) == ssm.SUNS_MARKER
    address = 40002
    while True:
        mid, length = (
            await client.read_holding_registers(address, count=2, device_id=unit)
        ).registers
        if mid == model_id:
            block = await client.read_holding_registers(address, count=length + 2, device_id=unit)
            return ssm.decode_model(ssm.load_model(model_id), block.registers).scaled(name)
        address += 2 + length


async def test_pv_power_follows_the_sun(
    sim: SunSpecSiteSimulator, clock: ManualClock, client: AsyncModbusTcpClient
) -> None:
    assert sim.snapshot().pv_p_kw == pytest.approx(5.0)
    assert await _read_point(client, 1, 103, "W") == pytest.approx(5000)
    clock.set(MIDNIGHT_MS + DAY_MS)
    sim.step()
    assert sim.snapshot().pv_p_kw == 0.0
    assert await _read_point(client, 1, 103, "W") == 0.0


async def test_background_task_steps_the_physics(
    sim: SunSpecSiteSimulator, clock: ManualClock
) -> None:
    clock.advance(12 * HOUR_MS)  # to midnight
    for _ in range(50):
        if sim.snapshot().pv_p_kw == 0.0:
            break
        await asyncio.sleep(0.02)
    assert sim.snapshot().pv_p_kw == 0.0
    assert sim.snapshot().pv_e_exported_kwh > 1000.0


async def test_time_scale_speeds_up_the_battery(clock: ManualClock) -> None:
    simulator = _sim(clock, time_scale=1800.0)
    port = await simulator.start()
    modbus = AsyncModbusTcpClient("127.0.0.1", port=port, timeout=1, retries=0)
    try:
        assert await modbus.connect()
        in_rate = simulator.point_address(2, 124, "InWRte")
        await modbus.write_registers(in_rate, [10000], device_id=2)  # 100.00 % of WChaMax
        await modbus.write_registers(
            simulator.point_address(2, 124, "StorCtl_Mod"), [1], device_id=2
        )
        assert simulator.snapshot().battery_p_kw == -5.0
        clock.advance(1000)  # one real second = half a simulated hour at -5 kW
        simulator.step()
    finally:
        modbus.close()
        await simulator.stop()
    assert simulator.snapshot().battery_soc_pct == pytest.approx(50.0 + 2.5 * 0.95 / 10 * 100)


async def test_client_writes_take_effect(
    sim: SunSpecSiteSimulator, client: AsyncModbusTcpClient
) -> None:
    rsp = await client.write_registers(sim.point_address(1, 123, "WMaxLimPct"), [4000], device_id=1)
    assert not rsp.isError()
    await client.write_registers(sim.point_address(1, 123, "WMaxLim_Ena"), [1], device_id=1)
    assert sim.snapshot().pv_p_kw == pytest.approx(2.0)


async def test_nonsense_writes_are_refused_with_modbus_exceptions(
    sim: SunSpecSiteSimulator, client: AsyncModbusTcpClient
) -> None:
    pct = sim.point_address(1, 123, "WMaxLimPct")
    assert (await client.write_registers(pct, [15000], device_id=1)).exception_code == 3
    ena = sim.point_address(1, 123, "WMaxLim_Ena")
    assert (await client.write_registers(ena, [7], device_id=1)).exception_code == 3
    w = sim.point_address(1, 103, "W")
    assert (await client.write_registers(w, [0], device_id=1)).exception_code == 2
    rsp = await client.read_holding_registers(40000, count=2, device_id=9)
    assert rsp.exception_code == 0x0B  # gateway: no such unit
    assert sim.snapshot().pv_cap_kw == pytest.approx(5.0)


async def test_stop_releases_the_port_and_is_idempotent(clock: ManualClock) -> None:
    simulator = _sim(clock)
    port = await simulator.start()
    await simulator.stop()
    await simulator.stop()
    with pytest.raises(OSError):
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.close()
