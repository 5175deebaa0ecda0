"""OPC UA EV charger adapter: one subscription keeps the latest values; writes are read back.

Information model (namespace ``urn:gridfort:sim:ev-charger``, object ``EVCharger``
under ``Objects``; every variable's unit is in its name and in ``EV_CHARGER_MODEL``):

========================  ========  =====  ==================================================
browse name               type      unit   meaning
========================  ========  =====  ==================================================
ActivePower_kW            Double    kW     active power, generator sign: charging is negative
Connected                 Boolean   -      true while a vehicle is plugged in
VehicleSoC_pct            Double    %      vehicle state of charge, 0..100
TargetSoC_pct             Double    %      the owner's target state of charge, 0..100
Departure                 DateTime  UTC    the owner's departure; 1601-01-01 (null) if unknown
VehicleCapacity_kWh       Double    kWh    usable battery capacity of the vehicle
MaxChargePower_kW         Double    kW     highest charging power the charger allows, > 0
ChargePowerSetpoint_kW    Double    kW     the ONLY writable node; 0..MaxChargePower_kW
========================  ========  =====  ==================================================

The four vehicle variables carry status ``BadNoCommunication`` while no vehicle is
plugged in. ``ChargePowerSetpoint_kW`` is ``BadWaitingForInitialData`` until first
written (the charger then charges at full power up to the target, like a dumb
charger); writes outside 0..MaxChargePower_kW are refused with a Bad status.

Every failure of the OPC UA stack (status codes, timeouts, dropped connections,
handshake errors) leaves this module as a ``DeviceError`` whose message names the
asset, the operation and a status-code name or error category, never a raw
exception text.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import math
import time
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlparse

from asyncua import ua
from asyncua.client.client import Client
from asyncua.client.ua_client import UaClientState
from asyncua.common.node import Node
from asyncua.common.subscription import DataChangeNotif, Subscription
from asyncua.crypto.security_policies import SecurityPolicyBasic256Sha256
from asyncua.ua.attribute_ids import AttributeIds
from asyncua.ua.uaerrors import UaError

from edge_node.devices.base import (
    AppliedSetpoint,
    AssetKind,
    DeviceError,
    DeviceLimits,
    EvSession,
    Reading,
)
from gridfort.v1 import telemetry_pb2 as tpb

_log = logging.getLogger(__name__)
_T = TypeVar("_T")

NAMESPACE_URI = "urn:gridfort:sim:ev-charger"
OBJECT_NAME = "EVCharger"


@dataclass(frozen=True, slots=True)
class ModelVariable:
    """One variable of the EV charger information model."""

    browse_name: str
    variant_type: ua.VariantType
    unit: str
    description: str
    writable: bool = False


ACTIVE_POWER = ModelVariable(
    "ActivePower_kW", ua.VariantType.Double, "kW", "Active power, generator sign: charging < 0"
)
CONNECTED = ModelVariable(
    "Connected", ua.VariantType.Boolean, "-", "True while a vehicle is plugged in"
)
VEHICLE_SOC = ModelVariable(
    "VehicleSoC_pct", ua.VariantType.Double, "%", "Vehicle state of charge, 0..100"
)
TARGET_SOC = ModelVariable(
    "TargetSoC_pct", ua.VariantType.Double, "%", "Owner's target state of charge, 0..100"
)
DEPARTURE = ModelVariable(
    "Departure", ua.VariantType.DateTime, "UTC", "Owner's departure time; null if unknown"
)
VEHICLE_CAPACITY = ModelVariable(
    "VehicleCapacity_kWh", ua.VariantType.Double, "kWh", "Usable vehicle battery capacity"
)
MAX_CHARGE_POWER = ModelVariable(
    "MaxChargePower_kW", ua.VariantType.Double, "kW", "Highest charging power allowed, > 0"
)
CHARGE_SETPOINT = ModelVariable(
    "ChargePowerSetpoint_kW",
    ua.VariantType.Double,
    "kW",
    "Charging power setpoint, 0..MaxChargePower_kW",
    writable=True,
)

EV_CHARGER_MODEL: tuple[ModelVariable, ...] = (
    ACTIVE_POWER,
    CONNECTED,
    VEHICLE_SOC,
    TARGET_SOC,
    DEPARTURE,
    VEHICLE_CAPACITY,
    MAX_CHARGE_POWER,
    CHARGE_SETPOINT,
)
# Variables that only have a value while a vehicle is plugged in.
VEHICLE_VARIABLES: tuple[ModelVariable, ...] = (
    VEHICLE_SOC,
    TARGET_SOC,
    DEPARTURE,
    VEHICLE_CAPACITY,
)
# What the subscription monitors: everything but the setpoint (written and read back).
MEASURED_VARIABLES: tuple[ModelVariable, ...] = tuple(v for v in EV_CHARGER_MODEL if not v.writable)

_STALE_INTERVALS = 5  # no publish for this many publishing intervals: verify by a direct read
_KEEPALIVE_INTERVALS = 3  # the server sends a keep-alive after this many empty intervals
_LIFETIME_INTERVALS = 60
_SESSION_TIMEOUT_MS = 60_000  # the server drops an abandoned session after a minute


@dataclass(frozen=True, slots=True)
class OpcUaClientSecurity:
    """Basic256Sha256 SignAndEncrypt settings for the client side.

    ``client_cert_path`` / ``client_key_path``: this edge's application instance
    certificate (DER or PEM) and private key (PEM); the certificate's URI SAN must
    equal ``application_uri``. ``server_cert_path``: the charger's certificate,
    pinned: a server presenting any other certificate is refused.
    """

    client_cert_path: Path
    client_key_path: Path
    server_cert_path: Path
    application_uri: str = "urn:gridfort:edge:opcua-client"


@dataclass(frozen=True, slots=True)
class _Sample:
    value: object
    status: ua.StatusCode


def _sample(dv: ua.DataValue) -> _Sample:
    status = dv.StatusCode if dv.StatusCode is not None else ua.StatusCode()
    value = dv.Value.Value if dv.Value is not None else None
    return _Sample(value, status)


class _LatestValues:
    """Subscription handler: the latest DataValue of each measured variable."""

    def __init__(self, names: Mapping[ua.NodeId, str]) -> None:
        self._names = dict(names)
        self.samples: dict[str, _Sample] = {}
        self.last_update_s: float | None = None  # monotonic [s]
        self.lost_status: str | None = None
        self.complete = asyncio.Event()

    def update(self, name: str, dv: ua.DataValue) -> None:
        self.samples[name] = _sample(dv)
        self.last_update_s = time.monotonic()
        if len(self.samples) == len(self._names):
            self.complete.set()

    def datachange_notification(self, node: Node, val: object, data: DataChangeNotif) -> None:
        name = self._names.get(node.nodeid)
        if name is not None and data.monitored_item.Value is not None:
            self.update(name, data.monitored_item.Value)

    def status_change_notification(self, status: ua.StatusChangeNotification) -> None:
        if status.Status.is_bad():
            self.lost_status = status.Status.name


def _reason(exc: BaseException) -> str:
    """A short, safe description of an OPC UA stack failure (no exception text)."""
    code = getattr(exc, "code", None)
    if isinstance(exc, UaError) and isinstance(code, int):
        return ua.StatusCode(ua.UInt32(code)).name
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, ConnectionError):
        return "connection lost"
    if isinstance(exc, FileNotFoundError | PermissionError | IsADirectoryError):
        return "file not readable"
    if isinstance(exc, OSError):
        return "network error"
    if isinstance(exc, UaError):
        return f"OPC UA error ({type(exc).__name__})"
    return f"unexpected {type(exc).__name__}"


def _is_builtin_type(datatype: object, expected: ua.VariantType) -> bool:
    return (
        isinstance(datatype, ua.NodeId)
        and datatype.NamespaceIndex == 0
        and datatype.Identifier == expected.value
    )


def _type_name(datatype: object) -> str:
    if isinstance(datatype, ua.NodeId) and datatype.NamespaceIndex == 0:
        ident = datatype.Identifier
        if isinstance(ident, int) and 0 < ident <= 25:
            return ua.VariantType(ident).name
    return str(datatype)


async def _set_security(client: Client, security: OpcUaClientSecurity) -> None:
    await client.set_security(
        SecurityPolicyBasic256Sha256,
        str(security.client_cert_path),
        str(security.client_key_path),
        server_certificate=str(security.server_cert_path),
        mode=ua.MessageSecurityMode.SignAndEncrypt,
    )


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class OpcUaIo:
    """The error mapping every OPC UA client adapter shares: set ``_asset_id``,
    ``_where`` (host:port) and ``_timeout_s``; ``_io`` bounds one operation and turns
    any stack failure into a :class:`DeviceError` with a short, safe reason."""

    _asset_id: str
    _where: str
    _timeout_s: float

    def _error(self, what: str, reason: str) -> DeviceError:
        return DeviceError(f"{self._asset_id}: {what} at {self._where} failed: {reason}")

    async def _io(self, what: str, call: Awaitable[_T]) -> _T:
        """Await one OPC UA operation under the timeout; any failure becomes DeviceError."""
        try:
            async with asyncio.timeout(self._timeout_s):
                return await call
        except DeviceError:
            raise
        except Exception as exc:
            _log.debug("%s: %s failed", self._asset_id, what, exc_info=True)
            raise self._error(what, _reason(exc)) from None


class OpcUaEvCharger(OpcUaIo):
    """``DeviceAdapter`` for an EV charger that presents the model above over OPC UA.

    Parameters
    ----------
    asset_id : str
        Gridfort asset id stamped on every reading.
    endpoint_url : str
        ``opc.tcp://host:port/path`` of the charger.
    timeout_s : float
        Budget for each request and for every step of ``connect`` [s].
    security : OpcUaClientSecurity | None
        SignAndEncrypt settings; None means an unencrypted session, refused for
        non-loopback endpoints unless ``allow_insecure`` is set.
    publishing_interval_ms : float
        Requested publishing interval of the one subscription [ms].
    """

    def __init__(
        self,
        asset_id: str,
        endpoint_url: str,
        timeout_s: float = 2.0,
        *,
        security: OpcUaClientSecurity | None = None,
        allow_insecure: bool = False,
        publishing_interval_ms: float = 200.0,
    ) -> None:
        url = urlparse(endpoint_url)
        if url.scheme != "opc.tcp" or not url.hostname:
            raise ValueError("endpoint_url must look like opc.tcp://host:port/path")
        if security is None and not allow_insecure and not _is_loopback(url.hostname):
            raise ValueError("an unencrypted OPC UA session needs allow_insecure=True off loopback")
        if not (math.isfinite(timeout_s) and timeout_s > 0.0):
            raise ValueError("timeout_s must be > 0")
        if not 50.0 <= publishing_interval_ms <= 5_000.0:
            raise ValueError("publishing_interval_ms must be within 50..5000 ms")
        self._asset_id = asset_id
        self._endpoint_url = endpoint_url
        self._where = f"{url.hostname}:{url.port or 4840}"
        self._timeout_s = timeout_s
        self._security = security
        self._interval_ms = publishing_interval_ms
        self._client: Client | None = None
        self._subscription: Subscription | None = None
        self._latest: _LatestValues | None = None
        self._nodes: dict[str, Node] = {}
        self._last_direct_read_s = 0.0

    @property
    def asset_id(self) -> str:
        return self._asset_id

    @property
    def kind(self) -> AssetKind:
        return AssetKind.EV_CHARGER

    # -- error mapping -------------------------------------------------------

    # -- connect -------------------------------------------------------------

    async def connect(self) -> DeviceLimits:
        await self.close()
        client = Client(self._endpoint_url, timeout=self._timeout_s)
        client.name = client.description = f"Gridfort edge {self._asset_id}"
        client.session_timeout = _SESSION_TIMEOUT_MS
        try:
            if self._security is not None:
                client.application_uri = self._security.application_uri
                await self._io("loading certificates", _set_security(client, self._security))
            await self._io("connect", client.connect())
            self._client = client
            self._nodes = await self._resolve_model(client)
            latest = await self._subscribe(client)
            return self._limits(latest)
        except BaseException:
            await self._teardown(client, self._subscription)
            self._forget()
            raise

    async def _resolve_model(self, client: Client) -> dict[str, Node]:
        """Find every model variable by browse path and check its class, type and access."""
        uris = await self._io("namespace lookup", client.get_namespace_array())
        if NAMESPACE_URI not in uris:
            raise DeviceError(
                f"{self._asset_id}: device model mismatch: namespace {NAMESPACE_URI} not offered"
            )
        ns = uris.index(NAMESPACE_URI)
        paths = [[f"{ns}:{OBJECT_NAME}", f"{ns}:{v.browse_name}"] for v in EV_CHARGER_MODEL]
        found = await self._io(
            "browse", client.nodes.objects.get_children_by_path(paths, raise_on_partial_error=False)
        )
        nodes = {
            var.browse_name: hits[0]
            for var, hits in zip(EV_CHARGER_MODEL, found, strict=True)
            if hits and hits[0] is not None
        }
        missing = [v.browse_name for v in EV_CHARGER_MODEL if v.browse_name not in nodes]
        if missing:
            names = ", ".join(f"{OBJECT_NAME}/{name}" for name in missing)
            raise DeviceError(f"{self._asset_id}: device model mismatch: missing node(s) {names}")
        await self._check_types(client, nodes)
        return nodes

    async def _check_types(self, client: Client, nodes: Mapping[str, Node]) -> None:
        ordered = [nodes[v.browse_name] for v in EV_CHARGER_MODEL]
        classes = await self._io(
            "reading node classes", client.read_attributes(ordered, AttributeIds.NodeClass)
        )
        types = await self._io(
            "reading data types", client.read_attributes(ordered, AttributeIds.DataType)
        )
        access = await self._io(
            "reading access levels", client.read_attributes(ordered, AttributeIds.UserAccessLevel)
        )
        for var, cls_dv, type_dv, access_dv in zip(
            EV_CHARGER_MODEL, classes, types, access, strict=True
        ):
            where = f"{OBJECT_NAME}/{var.browse_name}"
            mismatch = f"{self._asset_id}: device model mismatch: {where}"
            if _sample(cls_dv).value != ua.NodeClass.Variable.value:
                raise DeviceError(f"{mismatch} is not a variable")
            datatype = _sample(type_dv).value
            if not _is_builtin_type(datatype, var.variant_type):
                raise DeviceError(
                    f"{mismatch} has type {_type_name(datatype)}, expected {var.variant_type.name}"
                )
            level = _sample(access_dv).value
            writable = isinstance(level, int) and bool(level & ua.AccessLevel.CurrentWrite.mask)
            if var.writable and not writable:
                raise DeviceError(f"{mismatch} is not writable")

    async def _subscribe(self, client: Client) -> _LatestValues:
        measured = [self._nodes[v.browse_name] for v in MEASURED_VARIABLES]
        pairs = zip(measured, MEASURED_VARIABLES, strict=True)
        latest = _LatestValues({node.nodeid: var.browse_name for node, var in pairs})
        params = ua.CreateSubscriptionParameters()
        params.RequestedPublishingInterval = self._interval_ms
        params.RequestedMaxKeepAliveCount = _KEEPALIVE_INTERVALS
        params.RequestedLifetimeCount = _LIFETIME_INTERVALS
        params.MaxNotificationsPerPublish = 1000
        params.PublishingEnabled = True
        params.Priority = 0
        self._latest = latest
        sub = await self._io("create subscription", client.create_subscription(params, latest))
        self._subscription = sub
        handles = await self._io(
            "monitor variables",
            sub.subscribe_data_change(measured, sampling_interval=ua.Double(self._interval_ms)),
        )
        for var, handle in zip(MEASURED_VARIABLES, handles, strict=True):
            if isinstance(handle, ua.StatusCode):
                raise self._error(f"monitoring {OBJECT_NAME}/{var.browse_name}", handle.name)
        await self._io("waiting for initial values", latest.complete.wait())
        return latest

    def _limits(self, latest: _LatestValues) -> DeviceLimits:
        samples = latest.samples
        max_kw = self._good_float(samples, MAX_CHARGE_POWER)
        if max_kw <= 0.0:
            raise DeviceError(f"{self._asset_id}: charger reports MaxChargePower_kW <= 0")
        connected = self._good_bool(samples, CONNECTED)
        e_kwh = self._good_float(samples, VEHICLE_CAPACITY) if connected else 0.0
        return DeviceLimits(rated_p_kw=max_kw, e_kwh=e_kwh, soc_min_pct=0.0, soc_max_pct=100.0)

    # -- latest values -------------------------------------------------------

    def _live(self) -> tuple[Client, _LatestValues]:
        client, latest = self._client, self._latest
        if client is None or latest is None:
            raise DeviceError(f"{self._asset_id}: not connected")
        if latest.lost_status is not None:
            raise self._error("subscription", latest.lost_status)
        if client.state is not UaClientState.CONNECTED:
            raise self._error("session", "connection lost")
        return client, latest

    async def _fresh_samples(self) -> dict[str, _Sample]:
        """The latest values, verified by a direct read when the subscription went quiet."""
        client, latest = self._live()
        if not latest.complete.is_set():
            raise DeviceError(f"{self._asset_id}: no data received from the subscription yet")
        sub = self._subscription
        heard_s = max(
            latest.last_update_s or 0.0,
            (sub.last_publish_at if sub is not None else None) or 0.0,
            self._last_direct_read_s,
        )
        if time.monotonic() - heard_s > _STALE_INTERVALS * self._interval_ms / 1000.0:
            await self._read_directly(client, latest)
        samples = dict(latest.samples)
        if self._vehicle_values_missing(samples):
            # Connected and the vehicle values arrive in one publish but are handed
            # over one by one; read them together once before calling it an error.
            await self._read_directly(client, latest)
            samples = dict(latest.samples)
        return samples

    def _vehicle_values_missing(self, samples: Mapping[str, _Sample]) -> bool:
        connected = samples.get(CONNECTED.browse_name)
        if connected is None or connected.value is not True or not connected.status.is_good():
            return False
        return any(
            v.browse_name not in samples or not samples[v.browse_name].status.is_good()
            for v in VEHICLE_VARIABLES
        )

    async def _read_directly(self, client: Client, latest: _LatestValues) -> None:
        nodes = [self._nodes[v.browse_name] for v in MEASURED_VARIABLES]
        values = await self._io("direct read", client.read_attributes(nodes))
        for var, dv in zip(MEASURED_VARIABLES, values, strict=True):
            latest.update(var.browse_name, dv)
        self._last_direct_read_s = time.monotonic()

    def _good(self, samples: Mapping[str, _Sample], var: ModelVariable) -> object:
        sample = samples.get(var.browse_name)
        if sample is None:
            raise DeviceError(f"{self._asset_id}: no value for {var.browse_name} yet")
        if not sample.status.is_good():
            raise DeviceError(f"{self._asset_id}: {var.browse_name} is {sample.status.name}")
        return sample.value

    def _good_float(self, samples: Mapping[str, _Sample], var: ModelVariable) -> float:
        value = self._good(samples, var)
        if isinstance(value, bool) or not isinstance(value, float | int):
            raise DeviceError(f"{self._asset_id}: {var.browse_name} is not a number")
        if not math.isfinite(value):
            raise DeviceError(f"{self._asset_id}: {var.browse_name} is not finite")
        return float(value)

    def _good_pct(self, samples: Mapping[str, _Sample], var: ModelVariable) -> float:
        value = self._good_float(samples, var)
        if not 0.0 <= value <= 100.0:
            raise DeviceError(f"{self._asset_id}: {var.browse_name} = {value} is outside 0..100 %")
        return value

    def _good_bool(self, samples: Mapping[str, _Sample], var: ModelVariable) -> bool:
        value = self._good(samples, var)
        if not isinstance(value, bool):
            raise DeviceError(f"{self._asset_id}: {var.browse_name} is not a boolean")
        return value

    def _departure_ms(self, samples: Mapping[str, _Sample]) -> int:
        value = self._good(samples, DEPARTURE)
        if not isinstance(value, datetime):
            raise DeviceError(f"{self._asset_id}: {DEPARTURE.browse_name} is not a DateTime")
        aware = value if value.tzinfo is not None else value.replace(tzinfo=UTC)
        epoch_ms = round(aware.timestamp() * 1000)
        return max(epoch_ms, 0)  # OPC UA null DateTime (1601) and pre-1970: unknown

    # -- DeviceAdapter -------------------------------------------------------

    async def read(self, now_ms: int) -> list[Reading]:
        samples = await self._fresh_samples()
        p_kw = self._good_float(samples, ACTIVE_POWER)
        connected = self._good_bool(samples, CONNECTED)
        readings = [
            Reading(self._asset_id, tpb.QUANTITY_ACTIVE_POWER, tpb.UNIT_KW, p_kw, now_ms),
            Reading(
                self._asset_id,
                tpb.QUANTITY_EV_CONNECTED,
                tpb.UNIT_BOOL,
                1.0 if connected else 0.0,
                now_ms,
            ),
        ]
        if connected:
            soc_pct = self._good_pct(samples, VEHICLE_SOC)
            target_pct = self._good_pct(samples, TARGET_SOC)
            aid = self._asset_id
            readings += [
                Reading(aid, tpb.QUANTITY_STATE_OF_CHARGE, tpb.UNIT_PCT, soc_pct, now_ms),
                Reading(aid, tpb.QUANTITY_EV_TARGET_SOC, tpb.UNIT_PCT, target_pct, now_ms),
            ]
        return readings

    async def session(self) -> EvSession:
        """The plugged-in vehicle as the charger reports it (zeros when none is)."""
        samples = await self._fresh_samples()
        max_kw = self._good_float(samples, MAX_CHARGE_POWER)
        if max_kw <= 0.0:
            raise DeviceError(f"{self._asset_id}: charger reports MaxChargePower_kW <= 0")
        if not self._good_bool(samples, CONNECTED):
            return EvSession(False, 0.0, 0.0, 0, 0.0, max_kw)
        return EvSession(
            connected=True,
            soc_pct=self._good_pct(samples, VEHICLE_SOC),
            target_soc_pct=self._good_pct(samples, TARGET_SOC),
            departure_ms=self._departure_ms(samples),
            e_kwh=self._good_float(samples, VEHICLE_CAPACITY),
            max_charge_kw=max_kw,
        )

    async def apply_active_power(self, p_kw: float, now_ms: int) -> AppliedSetpoint:
        """Write ``ChargePowerSetpoint_kW = -p_kw`` and return the value read back.

        ``p_kw`` [kW] is the charging power in generator sign, <= 0.
        """
        if not math.isfinite(p_kw) or p_kw > 0.0:
            raise DeviceError(f"{self._asset_id}: an EV charger only charges; p_kw must be <= 0")
        self._live()
        node = self._nodes[CHARGE_SETPOINT.browse_name]
        setpoint_kw = -p_kw if p_kw < 0.0 else 0.0
        what = f"writing {CHARGE_SETPOINT.browse_name} = {setpoint_kw:.3f} kW"
        value = ua.DataValue(ua.Variant(setpoint_kw, ua.VariantType.Double))
        await self._io(what, node.write_value(value))
        dv = await self._io("reading back the setpoint", node.read_data_value())
        readback_kw = self._good_float({CHARGE_SETPOINT.browse_name: _sample(dv)}, CHARGE_SETPOINT)
        return AppliedSetpoint(self._asset_id, 0.0 - readback_kw, now_ms)

    async def close(self) -> None:
        """Delete the subscription and disconnect; safe to call any number of times."""
        client, sub = self._client, self._subscription
        self._forget()
        if client is not None:
            await self._teardown(client, sub)

    def _forget(self) -> None:
        self._client = None
        self._subscription = None
        self._latest = None
        self._nodes = {}
        self._last_direct_read_s = 0.0

    async def _teardown(self, client: Client, sub: Subscription | None) -> None:
        try:
            if sub is not None:
                await self._io("delete subscription", sub.delete())
        except DeviceError as exc:
            _log.debug("%s: %s during close", self._asset_id, exc)
        try:
            await self._io("disconnect", client.disconnect())
        except DeviceError as exc:
            _log.debug("%s: %s during close", self._asset_id, exc)
