"""Edge-node configuration: typed, validated at load, errors name the field."""

from __future__ import annotations

import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from detection.grid import GRID_NAMES
from edge_node.devices.base import AssetKind
from edge_node.safety_limits import SiteLimits
from security.refusals import ConfigError


@dataclass(frozen=True)
class DeviceConfig:
    """One device. ``protocol`` is ``sunspec`` (address ``host:port``, ``unit_id``),
    ``modbus_load`` (a ``flexible_load`` speaking the Gridfort load profile over Modbus
    TCP, see ``edge_node/devices/modbus_load.py``; ``host:port``, ``unit_id``) or
    ``opcua`` (address ``opc.tcp://host:port/...``). A substation RTU is kind
    ``grid_rtu`` over ``opcua`` and names the ``grid`` model it measures."""

    asset_id: str
    kind: AssetKind
    protocol: str
    address: str
    unit_id: int = 1
    # OPC UA Basic256Sha256 SignAndEncrypt: the edge's application certificate and key,
    # and the device's pinned server certificate. Unset = no security (loopback only).
    opcua_client_cert: Path | None = None
    opcua_client_key: Path | None = None
    opcua_server_cert: Path | None = None
    opcua_application_uri: str = "urn:gridfort:edge:opcua-client"
    grid: str = ""  # grid_rtu only: one of detection.grid.GRID_NAMES

    def __post_init__(self) -> None:
        if self.protocol not in ("sunspec", "modbus_load", "opcua"):
            raise ConfigError(
                f"devices.{self.asset_id}.protocol: must be 'sunspec', 'modbus_load' or 'opcua'"
            )
        if self.protocol == "opcua" and not self.address.startswith("opc.tcp://"):
            raise ConfigError(f"devices.{self.asset_id}.address: expected opc.tcp://HOST:PORT")
        if (self.protocol == "modbus_load") != (self.kind is AssetKind.FLEXIBLE_LOAD):
            raise ConfigError(
                f"devices.{self.asset_id}.protocol: a flexible_load speaks 'modbus_load', "
                "and only a flexible_load does"
            )
        if self.protocol in ("sunspec", "modbus_load"):
            host, _, port = self.address.rpartition(":")
            if not host or not port.isdigit():
                raise ConfigError(f"devices.{self.asset_id}.address: expected HOST:PORT")
            if not 1 <= self.unit_id <= 247:
                raise ConfigError(f"devices.{self.asset_id}.unit_id: must be 1..247")
        if self.kind is AssetKind.GRID_RTU:
            if self.protocol != "opcua":
                raise ConfigError(f"devices.{self.asset_id}.protocol: a grid_rtu speaks 'opcua'")
            if self.grid not in GRID_NAMES:
                raise ConfigError(
                    f"devices.{self.asset_id}.grid: must be one of {', '.join(GRID_NAMES)}"
                )
        elif self.grid:
            raise ConfigError(f"devices.{self.asset_id}.grid: only for kind 'grid_rtu'")
        tls = (self.opcua_client_cert, self.opcua_client_key, self.opcua_server_cert)
        if any(tls) and not all(tls):
            raise ConfigError(
                f"devices.{self.asset_id}: give opcua_client_cert, opcua_client_key and "
                "opcua_server_cert together"
            )


@dataclass(frozen=True)
class EdgeConfig:
    site_id: str
    edge_dir: Path
    endpoints: tuple[str, ...]
    devices: tuple[DeviceConfig, ...]
    sample_interval_s: float = 1.0
    uplink_window: int = 256
    site_limits: SiteLimits = field(default_factory=SiteLimits)
    transport: str = "grpc"  # "grpc", "nats", or "both" (gRPC primary, NATS on failure)
    nats_servers: tuple[str, ...] = ()  # e.g. ("tls://127.0.0.1:4222",)
    nats_server_name: str = ""  # TLS name on the broker's certificate (default: dialled host)
    frequency_poll_s: float = 0.02  # how often armed frequency response reads the frequency

    def __post_init__(self) -> None:
        if not self.endpoints:
            raise ConfigError("endpoints: at least one control-plane endpoint is required")
        if not 0.05 <= self.sample_interval_s <= 3600:
            raise ConfigError("sample_interval_s: must be between 0.05 and 3600")
        ids = [d.asset_id for d in self.devices]
        if len(set(ids)) != len(ids):
            raise ConfigError("devices: asset ids must be unique")
        if not self.devices:
            raise ConfigError("devices: at least one device is required")
        if self.transport not in ("grpc", "nats", "both"):
            raise ConfigError("transport: must be 'grpc', 'nats' or 'both'")
        if not 0.005 <= self.frequency_poll_s <= 1.0:
            raise ConfigError("frequency_poll_s: must be between 0.005 and 1 s")
        if self.transport != "grpc" and not self.nats_servers:
            raise ConfigError(f"nats_servers: required for transport {self.transport!r}")

    @classmethod
    def from_toml(cls, path: Path) -> EdgeConfig:
        try:
            raw = tomllib.loads(path.read_text())
        except (OSError, tomllib.TOMLDecodeError) as e:
            raise ConfigError(f"{path}: {e}") from e
        return cls.from_mapping(raw, base=path.parent)

    @classmethod
    def from_mapping(cls, raw: dict[str, Any], base: Path) -> EdgeConfig:
        try:
            devices = tuple(
                DeviceConfig(
                    asset_id=str(d["asset_id"]),
                    kind=AssetKind(d["kind"]),
                    protocol=str(d["protocol"]),
                    address=str(d["address"]),
                    unit_id=int(d.get("unit_id", 1)),
                    opcua_client_cert=_path(base, d.get("opcua_client_cert")),
                    opcua_client_key=_path(base, d.get("opcua_client_key")),
                    opcua_server_cert=_path(base, d.get("opcua_server_cert")),
                    grid=str(d.get("grid", "")),
                )
                for d in raw.get("devices", [])
            )
            limits = raw.get("site_limits", {})
            return cls(
                site_id=str(raw["site_id"]),
                edge_dir=(base / str(raw["edge_dir"])).resolve(),
                endpoints=tuple(str(e) for e in raw["endpoints"]),
                devices=devices,
                sample_interval_s=float(raw.get("sample_interval_s", 1.0)),
                uplink_window=int(raw.get("uplink_window", 256)),
                transport=str(raw.get("transport", "grpc")),
                nats_servers=tuple(str(u) for u in raw.get("nats_servers", ())),
                nats_server_name=str(raw.get("nats_server_name", "")),
                frequency_poll_s=float(raw.get("frequency_poll_s", 0.02)),
                site_limits=SiteLimits(
                    max_export_kw=float(limits.get("max_export_kw", math.inf)),
                    max_import_kw=float(limits.get("max_import_kw", math.inf)),
                ),
            )
        except KeyError as e:
            raise ConfigError(f"{e.args[0]}: required") from e
        except ValueError as e:
            raise ConfigError(str(e)) from e


def _path(base: Path, value: object) -> Path | None:
    return None if value is None else (base / str(value)).resolve()
