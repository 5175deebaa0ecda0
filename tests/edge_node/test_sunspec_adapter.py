"""SunSpec adapters against the real simulator and hostile Modbus servers on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator, Callable, Mapping

import pytest
from pymodbus.pdu import ModbusPDU
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from edge_node.devices import sunspec_models as ssm
from edge_node.devices.base import DeviceAdapter, DeviceError, Reading
from edge_node.devices.sunspec import SunSpecBattery, SunSpecPvInverter
from edge_node.simulators.sunspec_server import SunSpecSiteSimulator
from gridfort.v1 import telemetry_pb2 as tpb
from security.clock import ManualClock

NOON_MS = 1_700_049_600_000  # 2023-11-15T12:00Z
HOUR_MS = 3_600_000
Q = tpb.Quantity


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(NOON_MS)


@pytest.fixture
async def sim(clock: ManualClock) -> AsyncIterator[SunSpecSiteSimulator]:
    simulator = SunSpecSiteSimulator(
        pv_rated_kw=6.0,
        battery_rated_kw=5.0,
        battery_e_kwh=10.0,
        battery_soc_pct=50.0,
        clock=clock,
    )
    await simulator.start()
    yield simulator
    await simulator.stop()


@pytest.fixture
async def pv(sim: SunSpecSiteSimulator) -> AsyncIterator[SunSpecPvInverter]:
    adapter = SunSpecPvInverter("pv-1", "127.0.0.1", sim.port, 1, timeout_s=0.5)
    await adapter.connect()
    yield adapter
    await adapter.close()


@pytest.fixture
async def battery(sim: SunSpecSiteSimulator) -> AsyncIterator[SunSpecBattery]:
    adapter = SunSpecBattery("bat-1", "127.0.0.1", sim.port, 2, timeout_s=0.5)
    await adapter.connect()
    yield adapter
    await adapter.close()


def _by_quantity(readings: list[Reading]) -> Mapping[int, Reading]:
    return {r.quantity: r for r in readings}


# --- against the simulator ---------------------------------------------------------------


async def test_adapters_are_device_adapters(sim: SunSpecSiteSimulator) -> None:
    pv = SunSpecPvInverter("pv-1", "127.0.0.1", sim.port, 1)
    battery = SunSpecBattery("bat-1", "127.0.0.1", sim.port, 2)
    assert isinstance(pv, DeviceAdapter)
    assert isinstance(battery, DeviceAdapter)
    assert (pv.kind, battery.kind) == ("pv_inverter", "battery")


async def test_connect_reports_ratings(sim: SunSpecSiteSimulator) -> None:
    pv = SunSpecPvInverter("pv-1", "127.0.0.1", sim.port, 1)
    battery = SunSpecBattery("bat-1", "127.0.0.1", sim.port, 2)
    try:
        assert (await pv.connect()).rated_p_kw == pytest.approx(6.0)
        limits = await battery.connect()
    finally:
        await pv.close()
        await battery.close()
    assert limits.rated_p_kw == pytest.approx(5.0)
    assert limits.e_kwh == pytest.approx(10.0)
    assert (limits.soc_min_pct, limits.soc_max_pct) == (5.0, 95.0)


async def test_pv_reads_plausible_values_in_canonical_units(pv: SunSpecPvInverter) -> None:
    readings = _by_quantity(await pv.read(NOON_MS))
    assert readings[Q.QUANTITY_ACTIVE_POWER].value == pytest.approx(6.0)
    assert readings[Q.QUANTITY_ACTIVE_POWER].unit == tpb.Unit.UNIT_KW
    assert readings[Q.QUANTITY_REACTIVE_POWER].value == pytest.approx(0.0)
    assert readings[Q.QUANTITY_VOLTAGE].value == pytest.approx(230.0)
    assert readings[Q.QUANTITY_FREQUENCY].value == pytest.approx(50.0)
    assert readings[Q.QUANTITY_ENERGY_EXPORTED].value == pytest.approx(1000.0)
    assert readings[Q.QUANTITY_ENERGY_EXPORTED].unit == tpb.Unit.UNIT_KWH
    assert {r.ts_ms for r in readings.values()} == {NOON_MS}
    assert {r.asset_id for r in readings.values()} == {"pv-1"}


async def test_pv_power_follows_the_sun(
    pv: SunSpecPvInverter, sim: SunSpecSiteSimulator, clock: ManualClock
) -> None:
    clock.advance(12 * HOUR_MS)  # midnight
    sim.step()
    readings = _by_quantity(await pv.read(clock.now_ms()))
    assert readings[Q.QUANTITY_ACTIVE_POWER].value == 0.0
    assert readings[Q.QUANTITY_ENERGY_EXPORTED].value > 1000.0


async def test_curtailment_lowers_pv_output(
    pv: SunSpecPvInverter, sim: SunSpecSiteSimulator
) -> None:
    applied = await pv.apply_active_power(2.4, NOON_MS)
    assert applied.p_kw == pytest.approx(2.4)
    assert sim.snapshot().pv_p_kw == pytest.approx(2.4)
    readings = _by_quantity(await pv.read(NOON_MS))
    assert readings[Q.QUANTITY_ACTIVE_POWER].value == pytest.approx(2.4)
    lifted = await pv.apply_active_power(100.0, NOON_MS)  # above rating: no curtailment
    assert lifted.p_kw == pytest.approx(6.0)
    with pytest.raises(DeviceError, match="must be >= 0"):
        await pv.apply_active_power(-1.0, NOON_MS)


async def test_battery_reads_soc_power_and_voltage(battery: SunSpecBattery) -> None:
    readings = _by_quantity(await battery.read(NOON_MS))
    assert readings[Q.QUANTITY_STATE_OF_CHARGE].value == pytest.approx(50.0)
    assert readings[Q.QUANTITY_ACTIVE_POWER].value == 0.0
    assert readings[Q.QUANTITY_VOLTAGE].value == pytest.approx(230.0)


async def test_battery_setpoint_is_read_back(
    battery: SunSpecBattery, sim: SunSpecSiteSimulator
) -> None:
    for p_kw in (-3.0, 2.5, 0.0):
        applied = await battery.apply_active_power(p_kw, NOON_MS)
        assert applied.p_kw == pytest.approx(p_kw)
        assert sim.snapshot().battery_p_kw == pytest.approx(p_kw)
        power = _by_quantity(await battery.read(NOON_MS))[Q.QUANTITY_ACTIVE_POWER]
        assert power.value == pytest.approx(p_kw)  # + discharge, - charge
    with pytest.raises(DeviceError, match="exceeds WChaMax"):
        await battery.apply_active_power(-7.0, NOON_MS)


async def test_battery_soc_rises_when_charging_and_stops_at_max(
    battery: SunSpecBattery, sim: SunSpecSiteSimulator, clock: ManualClock
) -> None:
    await battery.apply_active_power(-4.0, clock.now_ms())
    clock.advance(HOUR_MS)
    sim.step()
    soc = _by_quantity(await battery.read(clock.now_ms()))[Q.QUANTITY_STATE_OF_CHARGE]
    assert soc.value == pytest.approx(50.0 + 4.0 * 0.95 / 10.0 * 100, abs=0.1)
    clock.advance(5 * HOUR_MS)
    sim.step()
    readings = _by_quantity(await battery.read(clock.now_ms()))
    assert readings[Q.QUANTITY_STATE_OF_CHARGE].value == pytest.approx(95.0)
    assert readings[Q.QUANTITY_ACTIVE_POWER].value == 0.0


# --- hostile devices ---------------------------------------------------------------------

TracePdu = Callable[[bool, ModbusPDU], ModbusPDU]


@contextlib.asynccontextmanager
async def serve(devices: list[SimDevice], trace_pdu: TracePdu | None = None) -> AsyncIterator[int]:
    """A plain pymodbus server on a random loopback port; yields the port."""
    server = ModbusTcpServer(devices, address=("127.0.0.1", 0), trace_pdu=trace_pdu)
    await server.serve_forever(background=True)
    listener = server.transport
    assert isinstance(listener, asyncio.Server)
    try:
        yield listener.sockets[0].getsockname()[1]
    finally:
        await server.shutdown()  # type: ignore[no-untyped-call]


def _device(unit_id: int, registers: list[int], base: int = 40000) -> SimDevice:
    return SimDevice(
        id=unit_id, simdata=[SimData(base, values=registers, datatype=DataType.REGISTERS)]
    )


def _image(*models: tuple[int, dict[str, ssm.RawValue]]) -> list[int]:
    common = (ssm.load_model(1), {"Mn": "Hostile", "Md": "X", "SN": "1"})
    return list(ssm.DeviceImage([common, *((ssm.load_model(m), v) for m, v in models)]).registers)


PV_OK: dict[int, dict[str, ssm.RawValue]] = {
    103: {"W": 1500, "W_SF": 0, "VAr": 10, "VAr_SF": 0, "PhVphA": 2300, "V_SF": -1},
    120: {"WRtg": 5000, "WRtg_SF": 0},
    123: {"WMaxLimPct": 100, "WMaxLimPct_SF": 0, "WMaxLim_Ena": 0},
}


def _pv_image(**changes: ssm.RawValue) -> list[int]:
    ac = PV_OK[103] | {"Hz": 5000, "Hz_SF": -2, "WH": 7000, "WH_SF": 0} | changes
    return _image((103, ac), (120, PV_OK[120]), (123, PV_OK[123]))


async def test_device_without_suns_marker_is_refused() -> None:
    async with serve([_device(1, [0] * 0xFFFF, base=0)]) as port:
        adapter = SunSpecPvInverter("pv-1", "127.0.0.1", port, 1, timeout_s=0.5)
        with pytest.raises(DeviceError, match=r"unit 1: no SunSpec 'SunS' marker at registers"):
            await adapter.connect()
        await adapter.close()


async def test_missing_required_model_is_refused() -> None:
    registers = _image((103, {}), (802, {}))
    async with serve([_device(2, registers)]) as port:
        adapter = SunSpecBattery("bat-1", "127.0.0.1", port, 2, timeout_s=0.5)
        expected = f"device 127.0.0.1:{port} unit 2: SunSpec model 124 not found "
        with pytest.raises(DeviceError) as info:
            await adapter.connect()
        assert str(info.value) == expected + "(models present: 1, 103, 802)"
        await adapter.close()


@pytest.mark.parametrize(
    ("changes", "problem"),
    [
        ({"W_SF": 20}, r"scale factor W_SF is 20, outside -10\.\.10"),
        ({"W": None}, "point W is not implemented"),
        ({"Hz_SF": None}, "scale factor Hz_SF is not implemented"),
    ],
)
async def test_undecodable_values_are_refused(
    changes: dict[str, ssm.RawValue], problem: str
) -> None:
    async with serve([_device(1, _pv_image(**changes))]) as port:
        adapter = SunSpecPvInverter("pv-1", "127.0.0.1", port, 1, timeout_s=0.5)
        assert (await adapter.connect()).rated_p_kw == 5.0
        with pytest.raises(DeviceError, match=problem):
            await adapter.read(NOON_MS)
        await adapter.close()


async def test_short_read_is_refused() -> None:
    def truncate(sending: bool, pdu: ModbusPDU) -> ModbusPDU:
        if sending and pdu.function_code == 3 and len(pdu.registers) > 2:
            pdu.registers = pdu.registers[:-1]
        return pdu

    async with serve([_device(1, _pv_image())], trace_pdu=truncate) as port:
        adapter = SunSpecPvInverter("pv-1", "127.0.0.1", port, 1, timeout_s=0.5)
        with pytest.raises(DeviceError, match="short read: got 27 registers reading 28"):
            await adapter.connect()
        await adapter.close()


async def test_modbus_exception_response_is_device_error(sim: SunSpecSiteSimulator) -> None:
    adapter = SunSpecBattery("bat-1", "127.0.0.1", sim.port, 7, timeout_s=0.5)
    with pytest.raises(DeviceError, match="unit 7: Modbus exception 11 reading 2 registers"):
        await adapter.connect()
    await adapter.close()


async def test_model_chain_without_end_is_refused() -> None:
    registers = [*ssm.SUNS_MARKER, 1, 65000, 0, 0]
    async with serve([_device(1, registers)]) as port:
        adapter = SunSpecPvInverter("pv-1", "127.0.0.1", port, 1, timeout_s=0.5)
        with pytest.raises(DeviceError, match="runs past register 65535"):
            await adapter.connect()
        await adapter.close()


async def test_map_not_starting_with_common_model_is_refused() -> None:
    inverter = ssm.encode_model(ssm.load_model(103), {})
    registers = [*ssm.SUNS_MARKER, *inverter, ssm.END_MODEL_ID, 0]
    async with serve([_device(1, registers)]) as port:
        adapter = SunSpecPvInverter("pv-1", "127.0.0.1", port, 1, timeout_s=0.5)
        with pytest.raises(
            DeviceError, match=r"first SunSpec model must be 1 \(models present: 103\)"
        ):
            await adapter.connect()
        await adapter.close()


async def test_server_stopped_mid_session_is_device_error_not_hang(clock: ManualClock) -> None:
    simulator = SunSpecSiteSimulator(
        pv_rated_kw=5.0, battery_rated_kw=5.0, battery_e_kwh=10.0, battery_soc_pct=50.0, clock=clock
    )
    port = await simulator.start()
    adapter = SunSpecPvInverter("pv-1", "127.0.0.1", port, 1, timeout_s=0.3)
    await adapter.connect()
    await simulator.stop()
    started = time.monotonic()
    for _ in range(2):  # first the dead link, then the refused reconnect
        with pytest.raises(DeviceError, match=f"127.0.0.1:{port} unit 1"):
            await asyncio.wait_for(adapter.read(NOON_MS), timeout=2.0)
        with pytest.raises(DeviceError):
            await asyncio.wait_for(adapter.apply_active_power(1.0, NOON_MS), timeout=2.0)
    assert time.monotonic() - started < 2.5
    await adapter.close()


async def test_silent_device_times_out_as_device_error() -> None:
    hung_up = asyncio.Event()

    async def swallow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(-1)  # accept requests, never answer
        writer.close()
        await writer.wait_closed()
        hung_up.set()

    server = await asyncio.start_server(swallow, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        adapter = SunSpecPvInverter("pv-1", "127.0.0.1", port, 1, timeout_s=0.3)
        with pytest.raises(DeviceError, match=r"no response within 0\.3 s reading 2 registers"):
            await adapter.connect()
        await adapter.close()
        await asyncio.wait_for(hung_up.wait(), timeout=1.0)  # the adapter hung up
    finally:
        server.close()
        await server.wait_closed()


async def test_connection_refused_is_device_error() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    adapter = SunSpecBattery("bat-1", "127.0.0.1", port, 2, timeout_s=0.5)
    with pytest.raises(DeviceError, match=f"127.0.0.1:{port} unit 2: cannot connect"):
        await adapter.connect()
    await adapter.close()


async def test_use_before_connect_is_device_error() -> None:
    adapter = SunSpecPvInverter("pv-1", "127.0.0.1", 1502, 1)
    with pytest.raises(DeviceError, match="not connected"):
        await adapter.read(NOON_MS)
    with pytest.raises(DeviceError, match="not connected"):
        await adapter.apply_active_power(1.0, NOON_MS)


def test_constructor_refuses_nonsense() -> None:
    with pytest.raises(ValueError, match="port"):
        SunSpecPvInverter("pv-1", "127.0.0.1", 0, 1)
    with pytest.raises(ValueError, match="timeout_s"):
        SunSpecBattery("bat-1", "127.0.0.1", 502, 1, timeout_s=0.0)
    with pytest.raises(ValueError, match="asset_id"):
        SunSpecBattery("", "127.0.0.1", 502, 1)
