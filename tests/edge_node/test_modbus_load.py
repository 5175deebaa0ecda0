"""Flexible loads at the edge: the Gridfort load profile adapter against the real pymodbus
simulator on a loopback port, the local safety limits through the real command executor,
and the failures that must surface as DeviceError without hanging."""

from __future__ import annotations

import asyncio
import math
import socket
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from pymodbus.client import AsyncModbusTcpClient

from edge_node.commands import CommandExecutor, CommandSeqStore, DeviceState, TrustedController
from edge_node.config import DeviceConfig
from edge_node.devices import modbus_load as ml
from edge_node.devices.base import AssetKind, DeviceAdapter, DeviceError, DeviceLimits
from edge_node.devices.factory import build_adapter
from edge_node.devices.modbus_load import ModbusFlexibleLoad
from edge_node.safety_limits import SiteLimits, active_power_bounds, check_active_power
from edge_node.simulators.load_server import (
    LoadConfig,
    LoadSimulator,
    LoadState,
    input_registers,
    step_load,
)
from gridfort.v1 import command_pb2 as cpb
from gridfort.v1 import envelope_pb2 as epb
from gridfort.v1 import telemetry_pb2 as tpb
from security.audit_log import AuditLog
from security.clock import ManualClock
from security.envelope import EnvelopeSigner, generate_signing_key
from security.refusals import ConfigError, Reason
from security.signing_keys import load_signing_public_key

T0_MS = 1_800_000_000_000
HOUR_MS = 3_600_000
Q = tpb.Quantity
RATED_KW = 3.0


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(T0_MS)


@pytest.fixture
async def sim(clock: ManualClock) -> AsyncIterator[LoadSimulator]:
    simulator = LoadSimulator(
        clock=clock, config=LoadConfig(rated_kw=RATED_KW), e_imported_kwh=1234.5
    )
    await simulator.start()
    yield simulator
    await simulator.stop()


@pytest.fixture
async def load(sim: LoadSimulator) -> AsyncIterator[ModbusFlexibleLoad]:
    adapter = ModbusFlexibleLoad("heat-1", "127.0.0.1", sim.port, 1, timeout_s=0.5)
    await adapter.connect()
    yield adapter
    await adapter.close()


async def _values(load: ModbusFlexibleLoad, now_ms: int) -> dict[int, float]:
    readings = await load.read(now_ms)
    assert {r.ts_ms for r in readings} == {now_ms}  # sampled together, one timestamp
    return {r.quantity: r.value for r in readings}


# --- the pure parts ----------------------------------------------------------------------


def test_a_load_setpoint_is_a_draw_between_minus_rated_and_zero() -> None:
    limits, site = DeviceLimits(rated_p_kw=RATED_KW), SiteLimits()

    def check(p_kw: float) -> str | None:
        kind = AssetKind.FLEXIBLE_LOAD
        return check_active_power(kind, p_kw, limits, soc_pct=None, ev=None, site=site, now_ms=0)

    assert check(-3.0) is None and check(-1.2) is None and check(0.0) is None
    assert check(0.5) == "a flexible load cannot export (setpoint must be <= 0)"
    assert "exceeds the rated 3.000 kW" in (check(-3.5) or "")
    assert check(math.nan) == "setpoint is not a finite number"
    bounds = active_power_bounds(
        AssetKind.FLEXIBLE_LOAD, limits, soc_pct=None, ev=None, site=site, now_ms=0
    )
    assert bounds == (-3.0, 0.0)


def test_the_register_map_round_trips_and_refuses_not_implemented_values() -> None:
    cfg = LoadConfig(rated_kw=RATED_KW, w_sf=2)  # 0.1 kW resolution
    regs = input_registers(
        cfg, LoadState(p_draw_kw=1.2, e_imported_kwh=70_000.0, temperature_c=-4.5)
    )
    decoded = ml.decode_inputs(regs)
    assert (decoded.rated_kw, decoded.draw_w, decoded.temperature_c) == (3.0, 1200.0, -4.5)
    assert decoded.e_imported_wh == 70_000_000  # above 16 bits: both words used
    regs[ml.POINTS["TMP"].address] = 0x8000
    with pytest.raises(ml.LoadProfileError, match="TMP is not implemented"):
        ml.decode_inputs(regs)


def test_the_simulated_load_follows_its_limit_and_its_thermostat() -> None:
    cfg = LoadConfig(rated_kw=RATED_KW)
    cold = LoadState(0.0, 0.0, 40.0)
    after = step_load(cfg, cold, 2.0, 1800.0)
    assert after.p_draw_kw == 2.0 and after.e_imported_kwh == pytest.approx(1.0)
    assert after.temperature_c > cold.temperature_c
    assert step_load(cfg, cold, 9.0, 1.0).p_draw_kw == RATED_KW  # never above its rating
    hot = LoadState(0.0, 0.0, cfg.t_max_c)
    assert step_load(cfg, hot, 2.0, 60.0).p_draw_kw == 0.0  # tank hot: draws nothing


# --- against the simulator ---------------------------------------------------------------


async def test_adapter_is_a_flexible_load_device_adapter(
    sim: LoadSimulator, load: ModbusFlexibleLoad
) -> None:
    assert isinstance(load, DeviceAdapter) and load.kind is AssetKind.FLEXIBLE_LOAD
    assert (await load.connect()).rated_p_kw == RATED_KW  # reconnect re-reads the rating


async def test_read_reports_power_energy_and_temperature_in_canonical_units(
    sim: LoadSimulator, load: ModbusFlexibleLoad
) -> None:
    values = await _values(load, T0_MS)
    assert set(values) == {
        Q.QUANTITY_ACTIVE_POWER,
        Q.QUANTITY_ENERGY_IMPORTED,
        Q.QUANTITY_TEMPERATURE,
    }
    assert values[Q.QUANTITY_ACTIVE_POWER] == -RATED_KW  # unconstrained, cold tank: full draw
    assert values[Q.QUANTITY_ENERGY_IMPORTED] == 1234.5
    assert values[Q.QUANTITY_TEMPERATURE] == 45.0


async def test_a_setpoint_is_written_read_back_and_followed(
    sim: LoadSimulator, load: ModbusFlexibleLoad, clock: ManualClock
) -> None:
    applied = await load.apply_active_power(-1.5, T0_MS)
    assert (applied.asset_id, applied.p_kw, applied.ts_ms) == ("heat-1", -1.5, T0_MS)
    assert sim.limit_kw == 1.5
    clock.set(T0_MS + HOUR_MS)
    sim.step()
    values = await _values(load, T0_MS + HOUR_MS)
    assert values[Q.QUANTITY_ACTIVE_POWER] == -1.5
    assert values[Q.QUANTITY_ENERGY_IMPORTED] == pytest.approx(1236.0, abs=1e-3)  # +1.5 kWh
    assert values[Q.QUANTITY_TEMPERATURE] > 45.0
    rounded = await load.apply_active_power(-1.234, T0_MS)  # W_SF 1: 10 W resolution
    assert rounded.p_kw == -1.23
    assert (await load.apply_active_power(0.0, T0_MS)).p_kw == 0.0  # off


async def test_the_adapter_refuses_setpoints_outside_its_range(
    sim: LoadSimulator, load: ModbusFlexibleLoad
) -> None:
    await load.apply_active_power(-1.0, T0_MS)
    for p_kw in (0.5, -3.5, math.nan):
        with pytest.raises(DeviceError, match=r"load setpoint|not finite"):
            await load.apply_active_power(p_kw, T0_MS)
    assert sim.limit_kw == 1.0  # nothing was written


async def test_the_device_refuses_a_limit_above_its_rating(sim: LoadSimulator) -> None:
    client = AsyncModbusTcpClient("127.0.0.1", port=sim.port, timeout=0.5, retries=0)
    await client.connect()
    try:
        response = await client.write_register(ml.W_LIM_ADDRESS, 0xFFF0, device_id=1)
        assert response.isError() and response.exception_code == 3  # illegal value
        response = await client.write_register(1, 10, device_id=1)
        assert response.isError() and response.exception_code == 2  # illegal address
    finally:
        client.close()
    assert sim.limit_kw == RATED_KW


async def test_the_executor_refuses_an_unsafe_load_setpoint(
    sim: LoadSimulator, load: ModbusFlexibleLoad, clock: ManualClock, tmp_path: Path
) -> None:
    cp = EnvelopeSigner(generate_signing_key(), "spiffe://load.test/control-plane/cp")
    edge = EnvelopeSigner(generate_signing_key(), "spiffe://load.test/edge/s1")
    audit = AuditLog(tmp_path / "audit.jsonl", clock)
    store = CommandSeqStore(tmp_path / "outbox.db")
    executor = CommandExecutor(
        site_id="s1",
        controller=TrustedController(
            cp.signer, cp.key_id, load_signing_public_key(cp.public_key_raw)
        ),
        devices={"heat-1": DeviceState(load, await load.connect())},
        signer=edge,
        seq_store=store,
        audit=audit,
        clock=clock,
    )

    async def send(seq: int, p_kw: float) -> cpb.CommandResult:
        command = cpb.Command(
            command_id=uuid.uuid4().hex,
            site_id="s1",
            asset_id="heat-1",
            seq=seq,
            issued_ms=T0_MS,
            expires_ms=T0_MS + 30_000,
            set_active_power=cpb.SetActivePower(p_kw=p_kw),
        )
        envelope = cp.sign(epb.PAYLOAD_TYPE_COMMAND, command.SerializeToString(), T0_MS)
        answer = await asyncio.wait_for(executor.handle(envelope), 5.0)
        return cpb.CommandResult.FromString(answer.payload)

    try:
        applied = await send(1, -2.0)
        assert applied.status == cpb.COMMAND_STATUS_APPLIED and applied.applied_p_kw == -2.0
        for seq, p_kw, why in ((2, 1.0, "cannot export"), (3, -4.0, "exceeds the rated")):
            refused = await send(seq, p_kw)
            assert refused.status == cpb.COMMAND_STATUS_REFUSED
            assert refused.reason == Reason.COMMAND_UNSAFE.value and why in refused.message
        assert sim.limit_kw == 2.0  # the refused setpoints never reached the device
    finally:
        store.close()
        audit.close()


# --- broken and absent devices -----------------------------------------------------------


async def test_a_device_without_the_load_profile_is_refused(sim: LoadSimulator) -> None:
    sim.override_input("ID", 0x5375)  # "Su": something else lives here
    adapter = ModbusFlexibleLoad("heat-1", "127.0.0.1", sim.port, 1, timeout_s=0.5)
    with pytest.raises(DeviceError, match="not the load profile"):
        await adapter.connect()
    await adapter.close()


async def test_not_implemented_and_changed_ratings_are_device_errors(
    sim: LoadSimulator, load: ModbusFlexibleLoad
) -> None:
    sim.override_input("WH_IMP", 0xFFFF_FFFF)
    with pytest.raises(DeviceError, match="WH_IMP is not implemented"):
        await load.read(T0_MS)
    sim.override_input("WH_IMP", 1000)
    sim.override_input("W_SF", 2)  # every power now reads 10x larger
    with pytest.raises(DeviceError, match="changed since connect"):
        await load.read(T0_MS)


async def test_a_wrong_unit_id_is_device_error(sim: LoadSimulator) -> None:
    adapter = ModbusFlexibleLoad("heat-1", "127.0.0.1", sim.port, 7, timeout_s=0.5)
    with pytest.raises(DeviceError, match="unit 7: Modbus exception"):
        await adapter.connect()
    await adapter.close()


async def test_device_down_is_device_error_not_hang(clock: ManualClock) -> None:
    simulator = LoadSimulator(clock=clock)
    port = await simulator.start()
    adapter = ModbusFlexibleLoad("heat-1", "127.0.0.1", port, 1, timeout_s=0.3)
    await adapter.connect()
    await simulator.stop()
    started = time.monotonic()
    for _ in range(2):  # first the dead link, then the refused reconnect
        with pytest.raises(DeviceError, match=f"127.0.0.1:{port} unit 1"):
            await asyncio.wait_for(adapter.read(T0_MS), timeout=2.0)
        with pytest.raises(DeviceError):
            await asyncio.wait_for(adapter.apply_active_power(-1.0, T0_MS), timeout=2.0)
    assert time.monotonic() - started < 2.5
    await adapter.close()


async def test_a_silent_device_times_out_as_device_error() -> None:
    async def swallow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(-1)  # accept requests, never answer
        writer.close()

    server = await asyncio.start_server(swallow, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        adapter = ModbusFlexibleLoad("heat-1", "127.0.0.1", port, 1, timeout_s=0.3)
        with pytest.raises(DeviceError, match=r"no response within 0\.3 s reading 8 input"):
            await adapter.connect()
        await adapter.close()
    finally:
        server.close()
        await server.wait_closed()


async def test_connection_refused_and_use_before_connect_are_device_errors() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    adapter = ModbusFlexibleLoad("heat-1", "127.0.0.1", port, 1, timeout_s=0.5)
    with pytest.raises(DeviceError, match=f"127.0.0.1:{port} unit 1: cannot connect"):
        await adapter.connect()
    with pytest.raises(DeviceError, match="not connected"):
        await adapter.read(T0_MS)
    with pytest.raises(DeviceError, match="not connected"):
        await adapter.apply_active_power(-1.0, T0_MS)
    await adapter.close()


# --- configuration -----------------------------------------------------------------------


def test_config_names_the_protocol_and_the_factory_builds_the_adapter() -> None:
    device = DeviceConfig("heat-1", AssetKind.FLEXIBLE_LOAD, "modbus_load", "127.0.0.1:1502", 3)
    adapter = build_adapter(device)
    assert isinstance(adapter, ModbusFlexibleLoad) and adapter.asset_id == "heat-1"
    with pytest.raises(ConfigError, match="flexible_load speaks 'modbus_load'"):
        DeviceConfig("heat-1", AssetKind.FLEXIBLE_LOAD, "sunspec", "127.0.0.1:1502")
    with pytest.raises(ConfigError, match="flexible_load speaks 'modbus_load'"):
        DeviceConfig("bat-1", AssetKind.BATTERY, "modbus_load", "127.0.0.1:1502")
    with pytest.raises(ConfigError, match="expected HOST:PORT"):
        DeviceConfig("heat-1", AssetKind.FLEXIBLE_LOAD, "modbus_load", "127.0.0.1")
    with pytest.raises(ValueError, match="port"):
        ModbusFlexibleLoad("heat-1", "127.0.0.1", 0, 1)
