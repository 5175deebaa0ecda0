"""OPC UA EV charger adapter against real asyncua servers on loopback (random ports)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

import pytest
import pytest_asyncio
from asyncua import ua
from asyncua.client.client import Client
from asyncua.common.node import Node
from asyncua.crypto.validator import CertificateValidator
from asyncua.server.server import Server
from asyncua.ua.object_ids import ObjectIds
from asyncua.ua.uaerrors import UaStatusCodeError

from edge_node.devices.base import DeviceAdapter, DeviceError, Reading
from edge_node.devices.opcua import (
    EV_CHARGER_MODEL,
    NAMESPACE_URI,
    OBJECT_NAME,
    OpcUaClientSecurity,
    OpcUaEvCharger,
)
from edge_node.simulators.ev_model import Vehicle, Visit
from edge_node.simulators.opcua_server import (
    OpcUaEvChargerSimulator,
    generate_application_certificate,
)
from gridfort.v1 import telemetry_pb2 as tpb
from security.clock import ManualClock, SystemClock

pytestmark = pytest.mark.asyncio(loop_scope="module")

T0_MS = 1_700_000_000_000
HOUR_MS = 3_600_000
WALL_MS = SystemClock().now_ms()
DEPARTURE = datetime(2023, 11, 15, 6, 0, tzinfo=UTC)
CLIENT_URI = "urn:gridfort:edge:test-client"
_T = TypeVar("_T")


def by_quantity(readings: Sequence[Reading]) -> dict[int, Reading]:
    return {r.quantity: r for r in readings}


async def eventually(probe: Callable[[], Awaitable[_T]], ok: Callable[[_T], bool]) -> _T:
    """Poll ``probe`` until ``ok`` holds (the simulator steps every 150 ms); 3 s budget."""
    deadline = time.monotonic() + 3.0
    while True:
        value = await probe()
        if ok(value) or time.monotonic() > deadline:
            return value
        await asyncio.sleep(0.05)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


# -- fixtures ------------------------------------------------------------------


@pytest.fixture(scope="module")
def clock() -> ManualClock:
    return ManualClock(T0_MS)


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def sim(clock: ManualClock) -> AsyncIterator[OpcUaEvChargerSimulator]:
    """One unencrypted simulator shared by the module (tests only assert relative changes)."""
    simulator = OpcUaEvChargerSimulator(clock=clock, security="none", departure_in_s=8 * 3600)
    await simulator.start()
    yield simulator
    await simulator.stop()


@pytest_asyncio.fixture(loop_scope="module")
async def charger(sim: OpcUaEvChargerSimulator) -> AsyncIterator[OpcUaEvCharger]:
    adapter = OpcUaEvCharger("ev-1", sim.endpoint_url, timeout_s=1.0)
    await adapter.connect()
    yield adapter
    await adapter.close()


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path]]:
    root = tmp_path_factory.mktemp("opcua-certs")
    return {
        name: generate_application_certificate(
            root / name, name=name, application_uri=CLIENT_URI, role="client", now_ms=WALL_MS
        )
        for name in ("edge", "intruder")
    }


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def secure_sim(
    certs: dict[str, tuple[Path, Path]], tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[OpcUaEvChargerSimulator]:
    simulator = OpcUaEvChargerSimulator(
        clock=ManualClock(WALL_MS),  # asyncua checks certificate validity on the wall clock
        security="sign_encrypt",
        trusted_client_certs=[certs["edge"][0]],
        state_dir=tmp_path_factory.mktemp("secure-sim"),
    )
    await simulator.start()
    yield simulator
    await simulator.stop()


def client_security(
    certs: dict[str, tuple[Path, Path]], who: str, server_cert: Path
) -> OpcUaClientSecurity:
    cert, key = certs[who]
    return OpcUaClientSecurity(cert, key, server_cert, application_uri=CLIENT_URI)


SAMPLE_VALUES: dict[ua.VariantType, object] = {
    ua.VariantType.Boolean: True,
    ua.VariantType.DateTime: DEPARTURE,
}


class ForeignServer:
    """A plain asyncua server whose EVCharger model each test replaces."""

    def __init__(self, server: Server, ns: int) -> None:
        self.server = server
        self.url = server.endpoint.geturl()
        self._ns = ns
        self._obj: Node | None = None

    async def present(
        self, variables: Sequence[tuple[str, ua.VariantType]], namespace: str = NAMESPACE_URI
    ) -> None:
        if self._obj is not None:
            await self.server.delete_nodes([self._obj], recursive=True)
        ns_array = self.server.get_node(ObjectIds.Server_NamespaceArray)
        uris = await ns_array.read_value()
        uris[self._ns] = namespace
        await ns_array.write_value(uris)
        objects = self.server.nodes.objects
        obj = await objects.add_object(
            f"ns={self._ns};s=X", ua.QualifiedName(OBJECT_NAME, self._ns)
        )
        for name, vtype in variables:
            value = SAMPLE_VALUES.get(vtype, 1.0)
            nodeid, qname = f"ns={self._ns};s=X.{name}", ua.QualifiedName(name, self._ns)
            await (await obj.add_variable(nodeid, qname, value, vtype)).set_writable()
        self._obj = obj


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def foreign() -> AsyncIterator[ForeignServer]:
    server = Server()
    await server.init()
    server.disable_clock(True)
    server.set_endpoint(f"opc.tcp://127.0.0.1:{free_port()}/foreign/")
    server.set_security_policy([ua.SecurityPolicyType.NoSecurity])
    ns = await server.register_namespace(NAMESPACE_URI)
    await server.start()
    yield ForeignServer(server, ns)
    await server.stop()


GOOD_MODEL = [(v.browse_name, v.variant_type) for v in EV_CHARGER_MODEL]


class FreezableProxy:
    """TCP relay that can stop forwarding while keeping both sockets open (a hung server)."""

    def __init__(self, target_port: int) -> None:
        self._target_port = target_port
        self.frozen = asyncio.Event()
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: list[asyncio.StreamWriter] = []

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, asyncio.CancelledError):
            while data := await reader.read(65536):
                if self.frozen.is_set():
                    await asyncio.Event().wait()  # swallow everything from now on
                writer.write(data)
                await writer.drain()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self._target_port)
        self._writers += [writer, up_writer]
        for task in (self._pipe(reader, up_writer), self._pipe(up_reader, writer)):
            t = asyncio.create_task(task)
            self._tasks.add(t)

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for w in self._writers:
            w.close()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


# -- the shared, unencrypted simulator ----------------------------------------------


async def test_adapter_satisfies_the_device_interface(charger: OpcUaEvCharger) -> None:
    assert isinstance(charger, DeviceAdapter)
    assert charger.kind.value == "ev_charger"


async def test_connect_reports_the_chargers_ratings(sim: OpcUaEvChargerSimulator) -> None:
    adapter = OpcUaEvCharger("ev-1", sim.endpoint_url, timeout_s=1.0)
    try:
        limits = await adapter.connect()
    finally:
        await adapter.close()
    assert limits.rated_p_kw == 11.0
    assert limits.e_kwh == 60.0
    assert (limits.soc_min_pct, limits.soc_max_pct) == (0.0, 100.0)


async def test_read_returns_plausible_values_from_the_subscription(
    charger: OpcUaEvCharger, sim: OpcUaEvChargerSimulator
) -> None:
    readings = await charger.read(now_ms=T0_MS + 1)
    values = by_quantity(readings)
    assert set(values) == {
        tpb.QUANTITY_ACTIVE_POWER,
        tpb.QUANTITY_EV_CONNECTED,
        tpb.QUANTITY_STATE_OF_CHARGE,
        tpb.QUANTITY_EV_TARGET_SOC,
    }
    assert all(r.asset_id == "ev-1" and r.ts_ms == T0_MS + 1 for r in readings)
    power = values[tpb.QUANTITY_ACTIVE_POWER]
    assert power.unit == tpb.UNIT_KW
    assert -11.0 <= power.value <= 0.0  # generator sign: charging is negative
    assert power.value == pytest.approx(-sim.snapshot().charge_kw)
    assert values[tpb.QUANTITY_EV_CONNECTED].unit == tpb.UNIT_BOOL
    assert values[tpb.QUANTITY_EV_CONNECTED].value == 1.0
    assert values[tpb.QUANTITY_STATE_OF_CHARGE].unit == tpb.UNIT_PCT
    assert 35.0 <= values[tpb.QUANTITY_STATE_OF_CHARGE].value <= 100.0
    assert values[tpb.QUANTITY_EV_TARGET_SOC].value == 80.0


async def test_session_reports_the_vehicle_and_the_owners_constraint(
    charger: OpcUaEvCharger,
) -> None:
    session = await charger.session()
    assert session.connected
    assert session.target_soc_pct == 80.0
    assert session.departure_ms == T0_MS + 8 * HOUR_MS
    assert session.e_kwh == 60.0
    assert session.max_charge_kw == 11.0
    assert 35.0 <= session.soc_pct <= 100.0


async def test_soc_updates_arrive_through_the_subscription(
    charger: OpcUaEvCharger, clock: ManualClock
) -> None:
    await charger.apply_active_power(-11.0, now_ms=clock.now_ms())
    before = by_quantity(await charger.read(clock.now_ms()))[tpb.QUANTITY_STATE_OF_CHARGE].value
    clock.advance(10 * 60_000)  # ten simulated minutes at 11 kW: +2.8 %

    async def soc() -> float:
        readings = await charger.read(clock.now_ms())
        return by_quantity(readings)[tpb.QUANTITY_STATE_OF_CHARGE].value

    after = await eventually(soc, lambda v: v > before)
    assert after == pytest.approx(before + 11.0 * 0.92 / 6 / 60.0 * 100.0, abs=0.01)


async def test_setpoint_write_changes_the_simulated_power_and_is_read_back(
    charger: OpcUaEvCharger, sim: OpcUaEvChargerSimulator
) -> None:
    applied = await charger.apply_active_power(-4.2, now_ms=T0_MS + 5)
    assert applied.asset_id == "ev-1"
    assert applied.p_kw == pytest.approx(-4.2)
    assert applied.ts_ms == T0_MS + 5
    assert sim.snapshot().setpoint_kw == pytest.approx(4.2)

    async def power() -> float:
        return by_quantity(await charger.read(T0_MS))[tpb.QUANTITY_ACTIVE_POWER].value

    assert await eventually(power, lambda p: p == pytest.approx(-4.2)) == pytest.approx(-4.2)

    paused = await charger.apply_active_power(0.0, now_ms=T0_MS + 6)
    assert paused.p_kw == 0.0
    assert await eventually(power, lambda p: p == 0.0) == 0.0


async def test_out_of_range_setpoint_is_refused_by_the_server(
    charger: OpcUaEvCharger, sim: OpcUaEvChargerSimulator
) -> None:
    await charger.apply_active_power(-3.0, now_ms=T0_MS)
    with pytest.raises(DeviceError, match="BadOutOfRange"):
        await charger.apply_active_power(-11.5, now_ms=T0_MS)
    assert sim.snapshot().setpoint_kw == pytest.approx(3.0)  # not clamped, not applied


async def test_discharge_request_is_refused_without_touching_the_charger(
    charger: OpcUaEvCharger, sim: OpcUaEvChargerSimulator
) -> None:
    await charger.apply_active_power(-2.0, now_ms=T0_MS)
    for bad in (1.0, float("nan")):
        with pytest.raises(DeviceError, match="only charges"):
            await charger.apply_active_power(bad, now_ms=T0_MS)
    assert sim.snapshot().setpoint_kw == pytest.approx(2.0)


async def test_measurement_nodes_refuse_writes(sim: OpcUaEvChargerSimulator) -> None:
    client = Client(sim.endpoint_url, timeout=1.0)
    await client.connect()
    try:
        ns = await client.get_namespace_index(NAMESPACE_URI)
        for var in EV_CHARGER_MODEL:
            if var.writable:
                continue
            node = await client.nodes.objects.get_child(
                [f"{ns}:{OBJECT_NAME}", f"{ns}:{var.browse_name}"]
            )
            value = ua.DataValue(ua.Variant(None, ua.VariantType.Null))
            with pytest.raises(UaStatusCodeError) as refused:
                await node.write_value(value)
            assert type(refused.value).__name__ == "BadUserAccessDenied", var.browse_name
    finally:
        await client.disconnect()


async def test_reading_before_connect_or_after_close_raises(sim: OpcUaEvChargerSimulator) -> None:
    adapter = OpcUaEvCharger("ev-1", sim.endpoint_url, timeout_s=1.0)
    with pytest.raises(DeviceError, match="not connected"):
        await adapter.read(T0_MS)
    await adapter.connect()
    await adapter.close()
    await adapter.close()  # idempotent
    with pytest.raises(DeviceError, match="not connected"):
        await adapter.read(T0_MS)
    with pytest.raises(DeviceError, match="not connected"):
        await adapter.apply_active_power(-1.0, T0_MS)


async def test_unencrypted_sessions_are_refused_off_loopback() -> None:
    with pytest.raises(ValueError, match="allow_insecure"):
        OpcUaEvCharger("ev-1", "opc.tcp://192.0.2.10:4840/")
    OpcUaEvCharger("ev-1", "opc.tcp://192.0.2.10:4840/", allow_insecure=True)
    with pytest.raises(ValueError, match=r"opc\.tcp"):
        OpcUaEvCharger("ev-1", "http://127.0.0.1:4840/")


# -- a fresh simulator per test ----------------------------------------------------


async def test_departure_and_arrival_are_reported() -> None:
    clock = ManualClock(T0_MS)
    arriving = Vehicle(40.0, 20.0, 90.0, departure_ms=T0_MS + 3 * HOUR_MS)
    simulator = OpcUaEvChargerSimulator(
        clock=clock,
        security="none",
        departure_in_s=600,
        schedule=[Visit(T0_MS + HOUR_MS, arriving)],
    )
    await simulator.start()
    adapter = OpcUaEvCharger("ev-2", simulator.endpoint_url, timeout_s=1.0)
    try:
        await adapter.connect()
        clock.advance(30 * 60_000)  # the first vehicle has left
        readings = await eventually(lambda: adapter.read(clock.now_ms()), lambda r: len(r) == 2)
        values = by_quantity(readings)
        assert values[tpb.QUANTITY_EV_CONNECTED].value == 0.0
        assert values[tpb.QUANTITY_ACTIVE_POWER].value == 0.0
        assert tpb.QUANTITY_STATE_OF_CHARGE not in values
        session = await adapter.session()
        assert not session.connected
        assert session.max_charge_kw == 11.0

        clock.advance(HOUR_MS)  # the scheduled vehicle arrived 30 minutes ago
        session = await eventually(adapter.session, lambda s: s.connected)
        assert session.e_kwh == 40.0
        assert session.target_soc_pct == 90.0
        assert session.departure_ms == T0_MS + 3 * HOUR_MS
        assert session.soc_pct == pytest.approx(20.0 + 11.0 * 0.92 * 0.5 / 40.0 * 100.0)
    finally:
        await adapter.close()
        await simulator.stop()


async def test_server_stopped_mid_session_fails_fast() -> None:
    simulator = OpcUaEvChargerSimulator(clock=ManualClock(T0_MS), security="none")
    port = await simulator.start()
    adapter = OpcUaEvCharger("ev-3", simulator.endpoint_url, timeout_s=1.0)
    try:
        await adapter.connect()
        await adapter.read(T0_MS)
        await simulator.stop()
        await simulator.stop()  # idempotent
        started = time.monotonic()
        with pytest.raises(DeviceError, match="ev-3"):
            await adapter.read(T0_MS)
        with pytest.raises(DeviceError):
            await adapter.session()
        with pytest.raises(DeviceError):
            await adapter.apply_active_power(-1.0, T0_MS)
        assert time.monotonic() - started < 1.0

        assert await simulator.start() == port  # the port was released and is reused
        limits = await adapter.connect()  # a new session after the drop
        assert limits.rated_p_kw == 11.0
        assert by_quantity(await adapter.read(T0_MS))[tpb.QUANTITY_EV_CONNECTED].value == 1.0
    finally:
        await adapter.close()
        await adapter.close()
        await simulator.stop()


async def test_hung_server_is_detected_without_hanging(sim: OpcUaEvChargerSimulator) -> None:
    port = int(sim.endpoint_url.rsplit(":", 1)[1].split("/", 1)[0])
    proxy = FreezableProxy(port)  # the shared simulator, seen through a link that can hang
    proxy_port = await proxy.start()
    adapter = OpcUaEvCharger("ev-4", f"opc.tcp://127.0.0.1:{proxy_port}/", timeout_s=0.5)
    try:
        await adapter.connect()
        await adapter.read(T0_MS)
        proxy.frozen.set()
        started = time.monotonic()
        async with asyncio.timeout(5.0):
            with pytest.raises(DeviceError, match="ev-4"):
                while True:  # fresh until 5 publishing intervals pass, then a direct read fails
                    await adapter.read(T0_MS)
                    await asyncio.sleep(0.1)
            with pytest.raises(DeviceError):
                await adapter.apply_active_power(-1.0, T0_MS)
        assert time.monotonic() - started < 3.0
    finally:
        async with asyncio.timeout(5.0):
            await adapter.close()
        await proxy.stop()


async def test_unreachable_endpoint_raises_device_error() -> None:
    adapter = OpcUaEvCharger("ev-5", f"opc.tcp://127.0.0.1:{free_port()}/", timeout_s=0.5)
    with pytest.raises(DeviceError, match="connection refused"):
        await adapter.connect()
    await adapter.close()


async def test_silent_endpoint_times_out_as_device_error() -> None:
    async def mute(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # accept and never answer
        writer.close()

    listener = await asyncio.start_server(mute, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    adapter = OpcUaEvCharger("ev-6", f"opc.tcp://127.0.0.1:{port}/", timeout_s=0.3)
    started = time.monotonic()
    try:
        with pytest.raises(DeviceError, match="timed out"):
            await adapter.connect()
        assert time.monotonic() - started < 2.0
    finally:
        await adapter.close()
        listener.close()
        await listener.wait_closed()


# -- servers that present a different model -----------------------------------------


async def test_missing_node_is_named(foreign: ForeignServer) -> None:
    await foreign.present([(n, t) for n, t in GOOD_MODEL if n != "VehicleSoC_pct"])
    adapter = OpcUaEvCharger("ev-7", foreign.url, timeout_s=1.0)
    with pytest.raises(DeviceError, match=r"missing node.*EVCharger/VehicleSoC_pct"):
        await adapter.connect()
    await adapter.close()


async def test_node_of_the_wrong_type_is_named(foreign: ForeignServer) -> None:
    await foreign.present(
        [(n, ua.VariantType.Double if n == "Connected" else t) for n, t in GOOD_MODEL]
    )
    adapter = OpcUaEvCharger("ev-8", foreign.url, timeout_s=1.0)
    with pytest.raises(DeviceError, match="EVCharger/Connected has type Double, expected Boolean"):
        await adapter.connect()
    await adapter.close()


async def test_missing_namespace_is_reported(foreign: ForeignServer) -> None:
    await foreign.present(GOOD_MODEL, namespace="urn:someone-else:charger")
    adapter = OpcUaEvCharger("ev-14", foreign.url, timeout_s=1.0)
    with pytest.raises(DeviceError, match=f"namespace {NAMESPACE_URI} not offered"):
        await adapter.connect()
    await adapter.close()


async def test_foreign_server_with_the_right_model_is_accepted(foreign: ForeignServer) -> None:
    """The checks above refuse the differences, not the foreign server itself."""
    await foreign.present(GOOD_MODEL)
    adapter = OpcUaEvCharger("ev-16", foreign.url, timeout_s=1.0)
    try:
        limits = await adapter.connect()
        assert limits.rated_p_kw == 1.0
        session = await adapter.session()
        assert session.departure_ms == int(DEPARTURE.timestamp() * 1000)
    finally:
        await adapter.close()


async def test_unreadable_certificate_files_raise_device_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope.der"
    security = OpcUaClientSecurity(missing, tmp_path / "nope.pem", missing)
    adapter = OpcUaEvCharger("ev-15", f"opc.tcp://127.0.0.1:{free_port()}/", security=security)
    with pytest.raises(DeviceError, match=r"loading certificates .* file not readable"):
        await adapter.connect()


# -- Basic256Sha256 SignAndEncrypt -----------------------------------------------------


async def test_sign_encrypt_round_trip(
    secure_sim: OpcUaEvChargerSimulator, certs: dict[str, tuple[Path, Path]]
) -> None:
    security = client_security(certs, "edge", secure_sim.server_cert_path)
    adapter = OpcUaEvCharger("ev-9", secure_sim.endpoint_url, timeout_s=1.0, security=security)
    try:
        limits = await adapter.connect()
        assert limits.rated_p_kw == 11.0
        values = by_quantity(await adapter.read(T0_MS))
        assert values[tpb.QUANTITY_EV_CONNECTED].value == 1.0
        applied = await adapter.apply_active_power(-6.0, T0_MS)
        assert applied.p_kw == pytest.approx(-6.0)
        assert secure_sim.snapshot().setpoint_kw == pytest.approx(6.0)
    finally:
        await adapter.close()


async def test_client_with_an_untrusted_certificate_is_refused(
    secure_sim: OpcUaEvChargerSimulator, certs: dict[str, tuple[Path, Path]]
) -> None:
    security = client_security(certs, "intruder", secure_sim.server_cert_path)
    adapter = OpcUaEvCharger("ev-10", secure_sim.endpoint_url, timeout_s=1.0, security=security)
    with pytest.raises(DeviceError, match="BadCertificateUntrusted"):
        await adapter.connect()
    await adapter.close()


async def test_untrusted_channel_is_refused_even_if_the_session_check_is_bypassed(
    secure_sim: OpcUaEvChargerSimulator,
    certs: dict[str, tuple[Path, Path]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def accept_anything(*_: object) -> None:
        return None

    monkeypatch.setattr(CertificateValidator, "validate", accept_anything)
    security = client_security(certs, "intruder", secure_sim.server_cert_path)
    adapter = OpcUaEvCharger("ev-11", secure_sim.endpoint_url, timeout_s=1.0, security=security)
    with pytest.raises(DeviceError, match="BadUserAccessDenied"):
        await adapter.connect()
    await adapter.close()


async def test_plaintext_client_is_refused_by_a_sign_encrypt_server(
    secure_sim: OpcUaEvChargerSimulator,
) -> None:
    adapter = OpcUaEvCharger("ev-12", secure_sim.endpoint_url, timeout_s=1.0)
    with pytest.raises(DeviceError, match="ev-12: connect"):
        await adapter.connect()
    await adapter.close()


async def test_impostor_server_certificate_is_refused(
    secure_sim: OpcUaEvChargerSimulator,
    certs: dict[str, tuple[Path, Path]],
    tmp_path: Path,
) -> None:
    impostor_cert, _ = generate_application_certificate(
        tmp_path, name="impostor", application_uri="urn:impostor", role="server", now_ms=WALL_MS
    )
    security = client_security(certs, "edge", impostor_cert)
    adapter = OpcUaEvCharger("ev-13", secure_sim.endpoint_url, timeout_s=0.5, security=security)
    with pytest.raises(DeviceError, match="ev-13: connect"):
        await adapter.connect()
    await adapter.close()
