"""Substation RTU: the grid simulator served over real OPC UA on loopback, read by the adapter."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from asyncua import ua
from asyncua.client.client import Client
from asyncua.server.server import Server
from asyncua.ua.status_codes import StatusCodes
from asyncua.ua.uaerrors import UaStatusCodeError

from detection.points import grid_points
from edge_node.commands import DeviceState
from edge_node.config import DeviceConfig, EdgeConfig
from edge_node.devices.base import AssetKind, DeviceAdapter, DeviceError, DeviceLimits
from edge_node.devices.factory import build_adapter
from edge_node.devices.grid_rtu import (
    NAMESPACE_URI,
    OBJECT_NAME,
    STATUS_VARIABLES,
    GridRtu,
    layout_columns,
)
from edge_node.devices.opcua import OpcUaClientSecurity
from edge_node.outbox import Outbox
from edge_node.sampler import Sampler
from edge_node.simulators.grid_sim import GridSimulator
from edge_node.simulators.opcua_server import generate_application_certificate
from edge_node.simulators.rtu_server import GridRtuSimulator
from gridfort.v1 import telemetry_pb2 as tpb
from security.clock import ManualClock, SystemClock
from security.envelope import EnvelopeSigner, generate_signing_key
from security.refusals import ConfigError

pytestmark = pytest.mark.asyncio(loop_scope="module")

WALL_MS = SystemClock().now_ms()
CLIENT_URI = "urn:gridfort:edge:test-rtu-client"
COLUMNS = layout_columns("cigre_mv")
HOUR_S = 3600.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


# -- fixtures ------------------------------------------------------------------


class Site:
    """A DER site's export [kW] the test can change."""

    p_kw = 5.0

    def __call__(self) -> float:
        return self.p_kw


@pytest.fixture(scope="module")
def site() -> Site:
    return Site()


@pytest.fixture(scope="module")
def clock() -> ManualClock:
    return ManualClock(WALL_MS)


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def rtu(site: Site, clock: ManualClock) -> AsyncIterator[GridRtuSimulator]:
    """One unencrypted RTU shared by the module; tests step it by hand (``step_now``)."""
    grid = GridSimulator("cigre_mv", seed=1)
    grid.attach_site("site-1", 5, site)
    server = GridRtuSimulator(grid, clock=clock, interval_s=HOUR_S, security="none")
    await server.start()
    yield server
    await server.stop()


@pytest_asyncio.fixture(loop_scope="module")
async def adapter(rtu: GridRtuSimulator) -> AsyncIterator[GridRtu]:
    device = GridRtu("rtu-1", rtu.endpoint_url, "cigre_mv", timeout_s=1.0)
    await device.connect()
    yield device
    await device.close()


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path]]:
    root = tmp_path_factory.mktemp("rtu-certs")
    return {
        name: generate_application_certificate(
            root / name, name=name, application_uri=CLIENT_URI, role="client", now_ms=WALL_MS
        )
        for name in ("edge", "intruder")
    }


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def secure_rtu(
    certs: dict[str, tuple[Path, Path]], tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[GridRtuSimulator]:
    server = GridRtuSimulator(
        GridSimulator("cigre_mv", seed=2),
        clock=SystemClock(),  # asyncua checks certificate validity on the wall clock
        interval_s=HOUR_S,
        security="sign_encrypt",
        trusted_client_certs=[certs["edge"][0]],
        state_dir=tmp_path_factory.mktemp("secure-rtu"),
    )
    await server.start()
    yield server
    await server.stop()


def client_security(
    certs: dict[str, tuple[Path, Path]], who: str, server_cert: Path
) -> OpcUaClientSecurity:
    cert, key = certs[who]
    return OpcUaClientSecurity(cert, key, server_cert, application_uri=CLIENT_URI)


def served_values(rtu: GridRtuSimulator, seq: int | None) -> list[float]:
    """What the RTU published as ``seq``, in telemetry units."""
    assert seq is not None
    snapshot = rtu.served(seq)
    assert snapshot is not None
    points = grid_points("cigre_mv", list(COLUMNS))
    return [float(v) * p.scale for p, v in zip(points, snapshot.values, strict=True)]


# -- the simulated RTU ---------------------------------------------------------------


async def test_adapter_satisfies_the_device_interface(adapter: GridRtu) -> None:
    assert isinstance(adapter, DeviceAdapter)
    assert adapter.kind is AssetKind.GRID_RTU
    assert adapter.columns == COLUMNS and len(COLUMNS) == 79


async def test_a_snapshot_arrives_whole_with_its_time_and_units(
    adapter: GridRtu, rtu: GridRtuSimulator, clock: ManualClock
) -> None:
    clock.advance(1_000)
    snapshot = await rtu.step_now()
    assert snapshot is not None
    readings = await adapter.read(clock.now_ms())
    assert adapter.last_seq == rtu.seq
    assert len(readings) == 79
    assert {r.ts_ms for r in readings} == {snapshot.ts_ms} == {clock.now_ms()}
    points = grid_points("cigre_mv", list(COLUMNS))
    assert [(r.asset_id, r.quantity, r.unit) for r in readings] == [
        (p.asset_id, p.quantity, p.unit) for p in points
    ]
    assert [r.value for r in readings] == served_values(rtu, rtu.seq)  # exact, kW and kvar
    by_point = {(r.asset_id, r.quantity): r for r in readings}
    vm = by_point[("cigre_mv.bus3", tpb.QUANTITY_VOLTAGE_PU)]
    assert vm.unit == tpb.UNIT_PU and 0.9 < vm.value < 1.1
    assert by_point[("cigre_mv.trafo0", tpb.QUANTITY_ACTIVE_POWER)].unit == tpb.UNIT_KW


async def test_each_snapshot_is_returned_once(
    adapter: GridRtu, rtu: GridRtuSimulator, clock: ManualClock
) -> None:
    await rtu.step_now()
    assert len(await adapter.read(clock.now_ms())) == 79
    assert await adapter.read(clock.now_ms()) == []  # the same snapshot: nothing new
    assert adapter.stats.repeats == 1
    await rtu.step_now()
    assert len(await adapter.read(clock.now_ms())) == 79
    assert adapter.last_seq == rtu.seq


async def test_a_stale_snapshot_is_an_error(
    adapter: GridRtu, rtu: GridRtuSimulator, clock: ManualClock
) -> None:
    await rtu.step_now()
    with pytest.raises(DeviceError, match=r"rtu-1: the RTU's latest snapshot .* is 31\.0 s old"):
        await adapter.read(clock.now_ms() + 31_000)


async def test_one_snapshot_lands_in_one_signed_batch(
    rtu: GridRtuSimulator, clock: ManualClock, tmp_path: Path
) -> None:
    device = GridRtu("rtu-1", rtu.endpoint_url, "cigre_mv", timeout_s=1.0)
    outbox = Outbox(tmp_path / "outbox.db")
    signer = EnvelopeSigner(generate_signing_key(), "spiffe://gridfort.test/edge/substation-1")
    sampler = Sampler(
        site_id="substation-1",
        devices={"rtu-1": DeviceState(device, await device.connect())},
        outbox=outbox,
        signer=signer,
        clock=clock,
        interval_s=1.0,
    )
    try:
        await rtu.step_now()
        assert await sampler.sample_once() == 79
        assert await sampler.sample_once() == 0  # no new snapshot, no batch
        await rtu.step_now()
        assert await sampler.sample_once() == 79
        entries = outbox.pending()
        assert [e.n_measurements for e in entries] == [79, 79]
        for entry in entries:
            batch = tpb.TelemetryBatch.FromString(entry.envelope.payload)
            assert len({m.ts_ms for m in batch.measurements}) == 1
            assert batch.measurements[0].asset_id == "cigre_mv.bus0"
    finally:
        await device.close()
        outbox.close()


async def test_reads_during_fast_stepping_are_whole_snapshots() -> None:
    """The RTU publishes every 30 ms while the adapter reads: every snapshot read is one
    that was published, value for value (no mix of two snapshots)."""
    server = GridRtuSimulator(
        GridSimulator(seed=5), clock=SystemClock(), interval_s=0.03, security="none"
    )
    await server.start()
    device = GridRtu("rtu-2", server.endpoint_url, "cigre_mv", timeout_s=1.0)
    try:
        await device.connect()
        seen = set()
        for _ in range(40):
            readings = await device.read(SystemClock().now_ms())
            if readings:
                assert [r.value for r in readings] == served_values(server, device.last_seq)
                seen.add(device.last_seq)
            await asyncio.sleep(0.011)
        assert len(seen) >= 5
    finally:
        await device.close()
        await server.stop()


async def test_a_failed_power_flow_reaches_the_edge_as_a_clear_error(
    adapter: GridRtu, rtu: GridRtuSimulator, site: Site, clock: ManualClock
) -> None:
    site.p_kw = -400_000.0  # 400 MW at a 20 kV bus: no operating point exists
    try:
        assert await rtu.step_now() is None
        assert rtu.last_error is not None and "did not converge" in rtu.last_error
        with pytest.raises(
            DeviceError,
            match=r"rtu-1: the RTU has no valid snapshot \(SnapshotSeq is BadSensorFailure\)",
        ):
            await adapter.read(clock.now_ms())
    finally:
        site.p_kw = 5.0
    assert await rtu.step_now() is not None
    assert rtu.last_error is None
    assert len(await adapter.read(clock.now_ms())) == 79


async def test_setpoints_are_refused_and_measurements_are_read_only(
    adapter: GridRtu, rtu: GridRtuSimulator
) -> None:
    with pytest.raises(DeviceError, match="takes no setpoint"):
        await adapter.apply_active_power(0.0, WALL_MS)
    client = Client(rtu.endpoint_url, timeout=1.0)
    await client.connect()
    try:
        ns = await client.get_namespace_index(NAMESPACE_URI)
        for name in ("bus3.p_mw", "SnapshotSeq"):
            node = await client.nodes.objects.get_child([f"{ns}:{OBJECT_NAME}", f"{ns}:{name}"])
            with pytest.raises(UaStatusCodeError) as refused:
                await node.write_value(ua.DataValue(ua.Variant(None, ua.VariantType.Null)))
            assert type(refused.value).__name__ == "BadUserAccessDenied"
    finally:
        await client.disconnect()


async def test_rtu_restart_is_survived_by_reconnecting(clock: ManualClock) -> None:
    server = GridRtuSimulator(
        GridSimulator(seed=6), clock=clock, interval_s=HOUR_S, security="none"
    )
    port = await server.start()
    device = GridRtu("rtu-3", server.endpoint_url, "cigre_mv", timeout_s=1.0)
    try:
        await device.connect()
        assert len(await device.read(clock.now_ms())) == 79
        await server.stop()
        started = time.monotonic()
        with pytest.raises(DeviceError, match="rtu-3"):
            await device.read(clock.now_ms())
        assert time.monotonic() - started < 1.0
        assert await server.start() == port
        await device.connect()
        assert len(await device.read(clock.now_ms())) == 79
    finally:
        await device.close()
        await server.stop()


async def test_unreachable_rtu_raises_device_error() -> None:
    device = GridRtu("rtu-4", f"opc.tcp://127.0.0.1:{free_port()}/", "cigre_mv", timeout_s=0.5)
    with pytest.raises(DeviceError, match=r"rtu-4: connect .* connection refused"):
        await device.connect()
    with pytest.raises(DeviceError, match="not connected"):
        await device.read(WALL_MS)


# -- Basic256Sha256 SignAndEncrypt ---------------------------------------------------


async def test_sign_encrypt_round_trip(
    secure_rtu: GridRtuSimulator, certs: dict[str, tuple[Path, Path]]
) -> None:
    security = client_security(certs, "edge", secure_rtu.server_cert_path)
    device = GridRtu("rtu-5", secure_rtu.endpoint_url, "cigre_mv", timeout_s=2.0, security=security)
    try:
        assert (await device.connect()).rated_p_kw == 0.0
        readings = await device.read(SystemClock().now_ms())
        assert [r.value for r in readings] == served_values(secure_rtu, device.last_seq)
    finally:
        await device.close()


async def test_client_with_an_untrusted_certificate_is_refused(
    secure_rtu: GridRtuSimulator, certs: dict[str, tuple[Path, Path]]
) -> None:
    security = client_security(certs, "intruder", secure_rtu.server_cert_path)
    device = GridRtu("rtu-6", secure_rtu.endpoint_url, "cigre_mv", timeout_s=2.0, security=security)
    with pytest.raises(DeviceError, match="BadCertificateUntrusted"):
        await device.connect()
    await device.close()


async def test_plaintext_client_is_refused_by_a_sign_encrypt_rtu(
    secure_rtu: GridRtuSimulator,
) -> None:
    device = GridRtu("rtu-7", secure_rtu.endpoint_url, "cigre_mv", timeout_s=1.0)
    with pytest.raises(DeviceError, match="rtu-7: connect"):
        await device.connect()
    await device.close()


async def test_unencrypted_sessions_are_refused_off_loopback() -> None:
    with pytest.raises(ValueError, match="allow_insecure"):
        GridRtu("rtu-8", "opc.tcp://192.0.2.10:4840/", "cigre_mv")


# -- an RTU that is not ours: model checks and torn reads -----------------------------


def seq_value(seq: int, status: int = StatusCodes.Good) -> ua.DataValue:
    code = ua.StatusCode(ua.UInt32(status))
    if code.is_bad():
        return ua.DataValue(StatusCode=code)
    return ua.DataValue(ua.Variant(seq, ua.VariantType.UInt64), StatusCode=code)


class ForeignRtu:
    """A plain asyncua server presenting a GridRTU model that each test shapes.

    ``SnapshotSeq`` answers from a script: one DataValue per read of the node (the
    adapter reads it twice per request), then ``steady`` forever.
    """

    def __init__(self, server: Server, ns: int) -> None:
        self.server = server
        self.url = server.endpoint.geturl()
        self._ns = ns
        self._obj: object = None
        self.script: list[ua.DataValue] = []
        self.steady = seq_value(1)

    def _next_seq(self, _nodeid: ua.NodeId, _attr: object) -> ua.DataValue:
        return self.script.pop(0) if self.script else self.steady

    async def present(
        self,
        *,
        drop: str = "",
        retype: tuple[str, ua.VariantType] | None = None,
        grid_name: str = "cigre_mv",
    ) -> None:
        if self._obj is not None:
            await self.server.delete_nodes([self._obj], recursive=True)  # type: ignore[list-item]
        ns = self._ns
        obj = await self.server.nodes.objects.add_object(
            f"ns={ns};s=R", ua.QualifiedName(OBJECT_NAME, ns)
        )
        wanted = [*STATUS_VARIABLES, *((c, ua.VariantType.Double) for c in COLUMNS)]
        values: dict[str, object] = {"GridName": grid_name, "SnapshotTimeMs": WALL_MS}
        for name, vtype in wanted:
            if name == drop:
                continue
            if retype is not None and retype[0] == name:
                vtype = retype[1]
            value = values.get(name, 0 if name == "SnapshotSeq" else 1.0)
            if vtype == ua.VariantType.Float:
                value = 1.0
            node = await obj.add_variable(
                f"ns={ns};s=R.{name}", ua.QualifiedName(name, ns), ua.Variant(value, vtype), vtype
            )
            if name == "SnapshotSeq":
                self.server.set_attribute_value_callback(node.nodeid, self._next_seq)
        self._obj = obj
        self.script, self.steady = [], seq_value(1)


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def foreign() -> AsyncIterator[ForeignRtu]:
    server = Server()
    await server.init()
    server.disable_clock(True)
    server.set_endpoint(f"opc.tcp://127.0.0.1:{free_port()}/foreign-rtu/")
    server.set_security_policy([ua.SecurityPolicyType.NoSecurity])
    ns = await server.register_namespace(NAMESPACE_URI)
    await server.start()
    yield ForeignRtu(server, ns)
    await server.stop()


async def connected(foreign: ForeignRtu, name: str) -> GridRtu:
    device = GridRtu(name, foreign.url, "cigre_mv", timeout_s=1.0)
    await device.connect()
    return device


async def test_a_torn_read_is_retried(foreign: ForeignRtu) -> None:
    await foreign.present()
    device = await connected(foreign, "rtu-10")
    try:
        # the RTU published seq 6 between the two reads of SnapshotSeq in one request
        foreign.script = [seq_value(5), seq_value(6)]
        foreign.steady = seq_value(6)
        readings = await device.read(WALL_MS)
        assert len(readings) == 79 and device.last_seq == 6
        assert device.stats.torn_reads == 1
        # an update in progress (SnapshotSeq Uncertain) is waited out the same way
        foreign.script = [seq_value(6, StatusCodes.UncertainLastUsableValue)] * 2
        foreign.steady = seq_value(7)
        assert len(await device.read(WALL_MS)) == 79 and device.last_seq == 7
        assert device.stats.torn_reads == 2
    finally:
        await device.close()


async def test_a_snapshot_that_never_settles_is_an_error(foreign: ForeignRtu) -> None:
    await foreign.present()
    device = await connected(foreign, "rtu-11")
    counter = iter(range(1000))
    foreign.steady = seq_value(0)
    try:
        foreign.script = [seq_value(next(counter)) for _ in range(20)]
        with pytest.raises(DeviceError, match="rtu-11: the snapshot kept changing during 4 reads"):
            await device.read(WALL_MS)
    finally:
        await device.close()


async def test_missing_node_is_named(foreign: ForeignRtu) -> None:
    await foreign.present(drop="bus3.p_mw")
    device = GridRtu("rtu-12", foreign.url, "cigre_mv", timeout_s=1.0)
    with pytest.raises(
        DeviceError, match=r"rtu-12: device model mismatch: missing node\(s\) GridRTU/bus3\.p_mw$"
    ):
        await device.connect()
    await device.close()


async def test_node_of_the_wrong_type_is_named(foreign: ForeignRtu) -> None:
    await foreign.present(retype=("line4.q_from_mvar", ua.VariantType.Float))
    device = GridRtu("rtu-13", foreign.url, "cigre_mv", timeout_s=1.0)
    with pytest.raises(
        DeviceError, match=r"GridRTU/line4\.q_from_mvar has type Float, expected Double"
    ):
        await device.connect()
    await device.close()


async def test_an_rtu_of_another_grid_is_refused(foreign: ForeignRtu) -> None:
    await foreign.present(grid_name="case14")
    device = GridRtu("rtu-14", foreign.url, "cigre_mv", timeout_s=1.0)
    with pytest.raises(DeviceError, match="measures grid 'case14', configured 'cigre_mv'"):
        await device.connect()
    await device.close()


async def test_a_bad_measurement_is_named(foreign: ForeignRtu) -> None:
    await foreign.present()
    node = foreign.server.get_node(f"ns={foreign._ns};s=R.bus7.q_mvar")
    bad = ua.StatusCode(ua.UInt32(StatusCodes.BadSensorFailure))
    await foreign.server.write_attribute_value(node.nodeid, ua.DataValue(StatusCode=bad))
    device = await connected(foreign, "rtu-15")
    try:
        with pytest.raises(DeviceError, match=r"rtu-15: GridRTU/bus7\.q_mvar is BadSensorFailure"):
            await device.read(WALL_MS)
    finally:
        await device.close()


# -- configuration -----------------------------------------------------------------------


def edge_mapping(device: dict[str, object]) -> dict[str, object]:
    return {
        "site_id": "substation-1",
        "edge_dir": "edge",
        "endpoints": ["127.0.0.1:1"],
        "devices": [device],
    }


async def test_config_and_factory_build_the_rtu_adapter(tmp_path: Path) -> None:
    raw: dict[str, object] = {
        "asset_id": "rtu-1",
        "kind": "grid_rtu",
        "protocol": "opcua",
        "address": "opc.tcp://127.0.0.1:4841/gridfort/grid-rtu/",
        "grid": "cigre_mv",
        "opcua_client_cert": "edge.der",
        "opcua_client_key": "edge.key.pem",
        "opcua_server_cert": "rtu.der",
    }
    config = EdgeConfig.from_mapping(edge_mapping(raw), base=tmp_path)
    device = config.devices[0]
    assert (device.kind, device.grid) == (AssetKind.GRID_RTU, "cigre_mv")
    adapter = build_adapter(device)
    assert isinstance(adapter, GridRtu) and adapter.columns == COLUMNS

    bad: list[tuple[dict[str, object], str]] = [
        ({"grid": "atlantis"}, "devices.rtu-1.grid: must be one of"),
        ({"grid": ""}, "devices.rtu-1.grid"),
        ({"protocol": "sunspec", "address": "127.0.0.1:502"}, "a grid_rtu speaks 'opcua'"),
    ]
    for change, message in bad:
        with pytest.raises(ConfigError, match=message):
            EdgeConfig.from_mapping(edge_mapping({**raw, **change}), base=tmp_path)
    with pytest.raises(ConfigError, match="only for kind 'grid_rtu'"):
        DeviceConfig("ev-1", AssetKind.EV_CHARGER, "opcua", "opc.tcp://h:1/", grid="cigre_mv")


async def test_limits_of_an_rtu_allow_no_setpoint() -> None:
    from edge_node.safety_limits import SiteLimits, check_active_power

    problem = check_active_power(
        AssetKind.GRID_RTU,
        1.0,
        DeviceLimits(rated_p_kw=0.0),
        soc_pct=None,
        ev=None,
        site=SiteLimits(),
        now_ms=WALL_MS,
    )
    assert problem is not None and "exceeds the rated" in problem
