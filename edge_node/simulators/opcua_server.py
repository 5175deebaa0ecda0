"""A real OPC UA server that simulates one EV charge point (asyncua).

It publishes the information model declared in ``edge_node.devices.opcua``
(namespace ``urn:gridfort:sim:ev-charger``, object ``EVCharger``) and drives it
with the pure physics of ``edge_node.simulators.ev_model`` every ~150 ms, on
simulated time derived from the injected clock.

Security modes:

* ``"none"``: one endpoint without security (loopback tests, demos).
* ``"sign_encrypt"`` (default): one Basic256Sha256 SignAndEncrypt endpoint. The
  server certificate is generated with ``cryptography`` unless given. A client is
  admitted only if its application certificate is one of ``trusted_client_certs``:
  checked when the session is created (asyncua's CertificateValidator over a
  TrustStore) and again, against the certificate that secured the channel, when
  the session is activated.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import logging
import os
import shutil
import socket
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from asyncua import ua
from asyncua.common.node import Node
from asyncua.common.utils import ServiceError
from asyncua.crypto.permission_rules import User, UserRole
from asyncua.crypto.truststore import TrustStore
from asyncua.crypto.validator import CertificateValidator, CertificateValidatorOptions
from asyncua.server.address_space import NodeData
from asyncua.server.internal_server import InternalServer
from asyncua.server.server import Server
from asyncua.server.user_managers import UserManager
from asyncua.ua.attribute_ids import AttributeIds
from asyncua.ua.object_ids import ObjectIds
from asyncua.ua.status_codes import StatusCodes
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from edge_node.devices.opcua import (
    ACTIVE_POWER,
    CHARGE_SETPOINT,
    CONNECTED,
    DEPARTURE,
    EV_CHARGER_MODEL,
    MAX_CHARGE_POWER,
    NAMESPACE_URI,
    OBJECT_NAME,
    TARGET_SOC,
    VEHICLE_CAPACITY,
    VEHICLE_SOC,
    ModelVariable,
)
from edge_node.simulators.ev_model import (
    ChargerSpec,
    ChargerState,
    SimulatedTime,
    Vehicle,
    Visit,
    advance,
    with_setpoint,
)
from security.clock import Clock
from security.tasks import reap

_log = logging.getLogger(__name__)

SERVER_APPLICATION_URI = "urn:gridfort:sim:ev-charger:server"
ENDPOINT_PATH = "/gridfort/ev-charger/"
SecurityMode = Literal["none", "sign_encrypt"]

_NULL_DATETIME = dt.datetime(1601, 1, 1, tzinfo=dt.UTC)  # OPC UA "no value" DateTime
_NO_VEHICLE = ua.StatusCode(ua.UInt32(StatusCodes.BadNoCommunication))


def generate_application_certificate(
    directory: Path,
    *,
    name: str,
    application_uri: str,
    role: Literal["server", "client"],
    now_ms: int,
    valid_for_s: int = 30 * 24 * 3600,
) -> tuple[Path, Path]:
    """Write a self-signed OPC UA application instance certificate and its key.

    The certificate (DER, ``<name>.der``) carries ``application_uri`` as URI SAN,
    ``localhost``, this host name and 127.0.0.1, and the key usages OPC UA
    Part 6 asks for. The RSA-2048 key (PEM, ``<name>.key.pem``, mode 0600) is
    written next to it. Validity starts 5 minutes before ``now_ms`` [ms, Unix
    epoch] and lasts ``valid_for_s`` [s]. Returns ``(cert_path, key_path)``.
    """
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    start = dt.datetime.fromtimestamp(now_ms / 1000, tz=dt.UTC) - dt.timedelta(minutes=5)
    usage = ExtendedKeyUsageOID.SERVER_AUTH if role == "server" else ExtendedKeyUsageOID.CLIENT_AUTH
    san = x509.SubjectAlternativeName(
        [
            x509.UniformResourceIdentifier(application_uri),
            x509.DNSName("localhost"),
            x509.DNSName(socket.gethostname()),
            x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        ]
    )
    key_usage = x509.KeyUsage(
        digital_signature=True,
        content_commitment=True,
        key_encipherment=True,
        data_encipherment=True,
        key_agreement=False,
        key_cert_sign=False,
        crl_sign=False,
        encipher_only=False,
        decipher_only=False,
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + dt.timedelta(seconds=valid_for_s))
        .add_extension(san, critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(key_usage, critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True)
    cert_path = directory / f"{name}.der"
    key_path = directory / f"{name}.key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.DER))
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        os.fchmod(out.fileno(), 0o600)  # also when the file already existed
        out.write(pem)
    return cert_path, key_path


def _load_der(path: Path) -> bytes:
    """The DER bytes of a certificate file in DER or PEM."""
    data = path.read_bytes()
    cert = (
        x509.load_pem_x509_certificate(data)
        if data.lstrip().startswith(b"-----BEGIN")
        else x509.load_der_x509_certificate(data)
    )
    return cert.public_bytes(serialization.Encoding.DER)


class _TrustedCertificateUsers(UserManager):
    """Admits a session only if its channel was secured with a trusted certificate."""

    def __init__(self, trusted_der: frozenset[bytes]) -> None:
        self._trusted = trusted_der

    def get_user(
        self,
        iserver: InternalServer,
        username: str | None = None,
        password: str | None = None,
        certificate: object = None,
    ) -> User | None:
        if isinstance(certificate, bytes) and certificate in self._trusted:
            return User(role=UserRole.User)
        return None


_DEFAULTS: dict[ua.VariantType, object] = {
    ua.VariantType.Double: 0.0,
    ua.VariantType.Boolean: False,
    ua.VariantType.DateTime: _NULL_DATETIME,
}


def _published(state: ChargerState) -> dict[str, ua.DataValue]:
    """What the address space shows for ``state`` (all but the setpoint)."""
    source_ts = ua.DateTime.fromtimestamp(state.ts_ms / 1000, tz=dt.UTC)

    def _datavalue(var: ModelVariable, value: object) -> ua.DataValue:
        return ua.DataValue(ua.Variant(value, var.variant_type), SourceTimestamp=source_ts)

    vehicle = state.vehicle
    values = {
        ACTIVE_POWER.browse_name: _datavalue(ACTIVE_POWER, 0.0 - state.charge_kw),
        CONNECTED.browse_name: _datavalue(CONNECTED, vehicle is not None),
        MAX_CHARGE_POWER.browse_name: _datavalue(MAX_CHARGE_POWER, state.spec.max_charge_kw),
    }
    if vehicle is None:
        for var in (VEHICLE_SOC, TARGET_SOC, DEPARTURE, VEHICLE_CAPACITY):
            values[var.browse_name] = ua.DataValue(StatusCode=_NO_VEHICLE)
        return values
    departure = (
        dt.datetime.fromtimestamp(vehicle.departure_ms / 1000, tz=dt.UTC)
        if vehicle.departure_ms
        else _NULL_DATETIME
    )
    values[VEHICLE_SOC.browse_name] = _datavalue(VEHICLE_SOC, vehicle.soc_pct)
    values[TARGET_SOC.browse_name] = _datavalue(TARGET_SOC, vehicle.target_soc_pct)
    values[DEPARTURE.browse_name] = _datavalue(DEPARTURE, departure)
    values[VEHICLE_CAPACITY.browse_name] = _datavalue(VEHICLE_CAPACITY, vehicle.e_kwh)
    return values


def _same(a: ua.DataValue | None, b: ua.DataValue) -> bool:
    return a is not None and a.StatusCode == b.StatusCode and a.Value == b.Value


class OpcUaSimulatorServer(ABC):
    """The lifecycle Gridfort's OPC UA simulators share (the EV charger, the grid RTU):
    the listening endpoint, the certificate clients pin, start and stop, and the scratch
    directory for a generated certificate and the trust store.

    A subclass sets the class constants, calls :meth:`_init_server` from its
    ``__init__`` and implements ``_build_address_space`` (nodes into ``self._nodes``)
    and ``_run`` (its periodic task); ``_before_listen`` runs after the address space is
    built and before the port opens (e.g. to publish a first value).
    """

    SERVER_NAME = ""
    APPLICATION_URI = ""
    ENDPOINT_PATH = ""
    CERT_NAME = ""
    TASK_NAME = ""
    WHAT = "OPC UA simulator"

    def _init_server(
        self,
        *,
        clock: Clock,
        host: str,
        port: int,
        security: SecurityMode,
        server_cert_path: Path | None,
        server_key_path: Path | None,
        trusted_client_certs: Sequence[Path],
        state_dir: Path | None,
    ) -> None:
        if security not in ("none", "sign_encrypt"):
            raise ValueError(f"unknown security mode {security!r}")
        if (server_cert_path is None) != (server_key_path is None):
            raise ValueError("give both server_cert_path and server_key_path, or neither")
        self._clock = clock
        self._host = host
        self._port = port
        self._security: SecurityMode = security
        self._server_cert_path = server_cert_path
        self._server_key_path = server_key_path
        self._generated_cert = False
        self._trusted_client_certs = tuple(trusted_client_certs)
        self._state_dir = state_dir
        self._own_state_dir: Path | None = None
        self._server: Server | None = None
        self._task: asyncio.Task[None] | None = None
        self._nodes: dict[str, Node] = {}

    # -- lifecycle -----------------------------------------------------------

    @property
    def endpoint_url(self) -> str:
        """``opc.tcp://host:port<ENDPOINT_PATH>`` once started."""
        if self._server is None:
            raise RuntimeError(f"{self.WHAT} not started")
        return f"opc.tcp://{self._host}:{self._port}{self.ENDPOINT_PATH}"

    @property
    def server_cert_path(self) -> Path:
        """The server certificate clients pin (sign_encrypt mode, after ``start``)."""
        if self._server_cert_path is None:
            raise RuntimeError("no server certificate: not started, or security is 'none'")
        return self._server_cert_path

    async def start(self) -> int:
        """Build the address space, listen and start the periodic task; returns the real
        port. A failure on the way releases everything it made."""
        if self._server is not None:
            return self._port
        self._nodes = {}
        try:
            server = await self._build_server()
            await self._build_address_space(server)
            self._server = server
            await self._before_listen()
            await server.start()
        except BaseException:
            self._server = None
            await self._cleanup_files()
            raise
        if server.bserver is None:
            raise RuntimeError("asyncua server did not open a listener")
        self._port = server.bserver.port
        self._task = asyncio.create_task(self._run(), name=self.TASK_NAME)
        _log.info("%s listening on %s", self.WHAT, self.endpoint_url)
        return self._port

    async def stop(self) -> None:
        """Stop the periodic task and the server, release the port; idempotent."""
        task, server = self._task, self._server
        self._task, self._server = None, None
        await reap(task)
        if server is not None:
            await server.stop()
        await self._cleanup_files()

    async def _cleanup_files(self) -> None:
        if self._own_state_dir is not None:
            await asyncio.to_thread(shutil.rmtree, self._own_state_dir, True)
            self._own_state_dir = None
            if self._generated_cert:  # it lived in the removed directory
                self._server_cert_path = self._server_key_path = None
                self._generated_cert = False

    # -- server construction -------------------------------------------------

    def _files_dir(self) -> Path:
        if self._state_dir is not None:
            return self._state_dir
        if self._own_state_dir is None:
            self._own_state_dir = Path(tempfile.mkdtemp(prefix=f"gridfort-{self.CERT_NAME}-"))
        return self._own_state_dir

    async def _build_server(self) -> Server:
        built = await build_simulator_server(
            server_name=self.SERVER_NAME,
            application_uri=self.APPLICATION_URI,
            endpoint=f"opc.tcp://{self._host}:{self._port}{self.ENDPOINT_PATH}",
            security=self._security,
            trusted_client_certs=self._trusted_client_certs,
            files_dir=self._files_dir,
            cert=_cert_pair(self._server_cert_path, self._server_key_path),
            cert_name=self.CERT_NAME,
            now_ms=self._clock.now_ms(),
        )
        if built.generated_cert is not None:
            self._server_cert_path, self._server_key_path = built.generated_cert
            self._generated_cert = True
        return built.server

    # -- the subclass's part -------------------------------------------------

    @abstractmethod
    async def _build_address_space(self, server: Server) -> None:
        """Add the simulator's nodes to ``server`` (and to ``self._nodes``)."""

    async def _before_listen(self) -> None:
        """Runs after the address space is built, before the port opens (default: nothing)."""
        return None

    @abstractmethod
    async def _run(self) -> None:
        """The periodic task, started once the server listens; runs until cancelled."""


class OpcUaEvChargerSimulator(OpcUaSimulatorServer):
    """An OPC UA server simulating one EV charge point with one vehicle plugged in.

    Parameters
    ----------
    clock : Clock
        Injected time; simulated time runs ``time_scale`` times as fast.
    max_charge_kw : float
        Charger rating [kW].
    e_kwh, soc_pct, target_soc_pct : float
        The initial vehicle: capacity [kWh], state of charge [%], target [%].
    departure_in_s : float | None
        Simulated seconds until the initial vehicle leaves [s]; None: unknown.
    time_scale : float
        Simulated seconds per clock second [-].
    schedule : Sequence[Visit]
        Later arrivals (simulated time).
    host, port : str, int
        Where to listen; port 0 picks a free port (see ``start``).
    security : "none" | "sign_encrypt"
        Endpoint security (see the module docstring).
    server_cert_path, server_key_path : Path | None
        The server's certificate and key; generated into ``state_dir`` if None
        (without a ``state_dir``, every start generates a fresh certificate).
    trusted_client_certs : Sequence[Path]
        Client application certificates (DER or PEM) admitted in sign_encrypt mode.
    state_dir : Path | None
        Where generated files go; a temporary directory (removed on stop) if None.
    step_interval_s : float
        Wall-clock pause between physics steps [s].
    """

    SERVER_NAME = "Gridfort EV charger simulator"
    APPLICATION_URI = SERVER_APPLICATION_URI
    ENDPOINT_PATH = ENDPOINT_PATH
    CERT_NAME = "ev-charger-sim"
    TASK_NAME = "ev-charger-physics"
    WHAT = "EV charger simulator"

    def __init__(
        self,
        *,
        clock: Clock,
        max_charge_kw: float = 11.0,
        e_kwh: float = 60.0,
        soc_pct: float = 35.0,
        target_soc_pct: float = 80.0,
        departure_in_s: float | None = 8 * 3600.0,
        efficiency: float = 0.92,
        time_scale: float = 1.0,
        schedule: Sequence[Visit] = (),
        host: str = "127.0.0.1",
        port: int = 0,
        security: SecurityMode = "sign_encrypt",
        server_cert_path: Path | None = None,
        server_key_path: Path | None = None,
        trusted_client_certs: Sequence[Path] = (),
        state_dir: Path | None = None,
        step_interval_s: float = 0.15,
    ) -> None:
        self._init_server(
            clock=clock,
            host=host,
            port=port,
            security=security,
            server_cert_path=server_cert_path,
            server_key_path=server_key_path,
            trusted_client_certs=trusted_client_certs,
            state_dir=state_dir,
        )
        if not 0.01 <= step_interval_s <= 1.0:
            raise ValueError("step_interval_s must be within 0.01..1 s")
        now_ms = clock.now_ms()
        departure_ms = 0 if departure_in_s is None else now_ms + round(departure_in_s * 1000)
        vehicle = Vehicle(e_kwh, soc_pct, target_soc_pct, departure_ms)
        self._time = SimulatedTime(origin_ms=now_ms, time_scale=time_scale)
        self._state = ChargerState(ChargerSpec(max_charge_kw, efficiency), now_ms, vehicle)
        self._schedule = tuple(schedule)
        self._step_interval_s = step_interval_s
        self._shown: dict[str, ua.DataValue] = {}

    def snapshot(self) -> ChargerState:
        """The simulated charge point as of the last physics step."""
        return self._state

    # -- server construction -------------------------------------------------

    async def _build_address_space(self, server: Server) -> None:
        self._shown = {}
        ns = await server.register_namespace(NAMESPACE_URI)
        charger = await server.nodes.objects.add_object(
            ua.NodeId(ua.String(OBJECT_NAME), ua.Int16(ns)), ua.QualifiedName(OBJECT_NAME, ns)
        )
        for var in EV_CHARGER_MODEL:
            node = await charger.add_variable(
                ua.NodeId(ua.String(f"{OBJECT_NAME}.{var.browse_name}"), ua.Int16(ns)),
                ua.QualifiedName(var.browse_name, ns),
                ua.Variant(_DEFAULTS[var.variant_type], var.variant_type),
                var.variant_type,
            )
            description = f"{var.description} [{var.unit}]"
            await node.write_attribute(
                AttributeIds.Description, ua.DataValue(ua.Variant(ua.LocalizedText(description)))
            )
            self._nodes[var.browse_name] = node
        setpoint = self._nodes[CHARGE_SETPOINT.browse_name]
        waiting = ua.StatusCode(ua.UInt32(StatusCodes.BadWaitingForInitialData))
        await server.write_attribute_value(setpoint.nodeid, ua.DataValue(StatusCode=waiting))
        await setpoint.set_writable(True)
        server.set_attribute_value_setter(setpoint.nodeid, self._on_setpoint_write)
        await self._show(server, self._state)

    # -- physics -------------------------------------------------------------

    def _advance_to_now(self) -> ChargerState:
        sim_ms = self._time.at(self._clock.now_ms())
        if sim_ms > self._state.ts_ms:
            self._state = advance(self._state, sim_ms, self._schedule)
        return self._state

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._step_interval_s)
            server = self._server
            if server is None:
                return
            try:
                await self._show(server, self._advance_to_now())
            except Exception:
                _log.exception("EV charger simulator step failed")

    async def _show(self, server: Server, state: ChargerState) -> None:
        """Write every published value that changed, and the server's CurrentTime."""
        for name, dv in _published(state).items():
            if not _same(self._shown.get(name), dv):
                await server.write_attribute_value(self._nodes[name].nodeid, dv)
                self._shown[name] = dv
        now = dt.datetime.fromtimestamp(state.ts_ms / 1000, tz=dt.UTC)
        await server.write_attribute_value(
            ua.NodeId(ua.Int32(ObjectIds.Server_ServerStatus_CurrentTime)),
            ua.DataValue(ua.Variant(now, ua.VariantType.DateTime)),
        )

    def _on_setpoint_write(self, node: NodeData, attr: AttributeIds, dv: ua.DataValue) -> None:
        """Validate a client's setpoint; out of range is refused with BadOutOfRange."""
        value = dv.Value.Value if dv.Value is not None else None
        if isinstance(value, bool) or not isinstance(value, float):
            raise ServiceError(StatusCodes.BadTypeMismatch)
        try:
            self._state = with_setpoint(self._advance_to_now(), value)
        except ValueError:
            raise ServiceError(StatusCodes.BadOutOfRange) from None
        node.attributes[attr].value = dv


def _cert_pair(cert: Path | None, key: Path | None) -> tuple[Path, Path] | None:
    return None if cert is None or key is None else (cert, key)


@dataclass(frozen=True, slots=True)
class BuiltServer:
    """A configured, not yet started simulator server; ``generated_cert`` if one was made."""

    server: Server
    generated_cert: tuple[Path, Path] | None


async def build_simulator_server(
    *,
    server_name: str,
    application_uri: str,
    endpoint: str,
    security: str,
    trusted_client_certs: Sequence[Path],
    files_dir: Callable[[], Path],
    cert: tuple[Path, Path] | None,
    cert_name: str,
    now_ms: int,
) -> BuiltServer:
    """An asyncua server as Gridfort's simulators run it (the EV charger, the grid RTU).

    ``security`` ``"sign_encrypt"``: Basic256Sha256 SignAndEncrypt only, anonymous
    identity, and exactly the ``trusted_client_certs`` (PEM or DER) accepted: both as
    application certificates (the validator's trust store, rebuilt in ``files_dir()``)
    and as the session's users. Without ``cert`` (certificate, key) one is generated
    in ``files_dir()`` with ``cert_name``. ``"none"``: no security, for tests only.
    """
    if security == "none":
        server = Server()
    else:
        trusted = frozenset(_load_der(p) for p in trusted_client_certs)
        server = Server(user_manager=_TrustedCertificateUsers(trusted))
    await server.init()
    server.disable_clock(True)  # CurrentTime is written from the injected clock instead
    server.set_server_name(server_name)
    await server.set_application_uri(application_uri)
    server.set_endpoint(endpoint)
    if security == "none":
        server.set_security_policy([ua.SecurityPolicyType.NoSecurity])
        return BuiltServer(server, None)
    files = files_dir()
    generated = None
    if cert is None:
        cert = generated = await asyncio.to_thread(
            generate_application_certificate,
            files / "server",
            name=cert_name,
            application_uri=application_uri,
            role="server",
            now_ms=now_ms,
        )
    await server.load_certificate(str(cert[0]))
    await server.load_private_key(str(cert[1]))
    server.set_security_policy([ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt])
    server.set_identity_tokens([ua.AnonymousIdentityToken])
    trusted_dir = files / "trusted"
    shutil.rmtree(trusted_dir, ignore_errors=True)  # trust exactly the configured list
    trusted_dir.mkdir(parents=True)
    for i, path in enumerate(trusted_client_certs):
        (trusted_dir / f"client-{i}.der").write_bytes(_load_der(path))
    store = TrustStore([trusted_dir], [])
    await store.load()
    options = (
        CertificateValidatorOptions.TRUSTED_VALIDATION | CertificateValidatorOptions.PEER_CLIENT
    )
    server.set_certificate_validator(CertificateValidator(options, store))
    return BuiltServer(server, generated)
