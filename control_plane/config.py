"""Control-plane configuration: typed, validated once at load, with errors naming the field."""

from __future__ import annotations

import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from detection.grid import GRID_NAMES
from security.refusals import ConfigError

if TYPE_CHECKING:
    from control_plane.markets.openadr_service import OpenAdrConfig
    from control_plane.markets.service import MarketConfig
    from control_plane.planning import PlanningConfig


@dataclass(frozen=True)
class ControlPlaneConfig:
    state_dir: Path
    trust_domain: str = "gridfort.local"
    name: str = "cp-1"
    link_addresses: tuple[str, ...] = ("127.0.0.1:7443",)
    bootstrap_address: str = "127.0.0.1:7444"
    replay_window_s: float = 30.0
    clock_skew_s: float = 5.0
    workload_ttl_s: int = 3600
    durable_sync: bool = True  # SQLite synchronous=FULL: ack only after fsync
    stream_idle_timeout_s: float = 30.0
    max_streams_per_identity: int = 2
    max_batch_bytes: int = 512 << 10
    handshake_timeout_ms: int = 5_000
    watch_interval_s: float = 1.0  # revocation/expiry/idle checks of open streams
    nats_port: int | None = None  # embedded NATS broker on 127.0.0.1 (0: random); None: off
    # REST API for SOC analysts and operators (HTTPS, mutual TLS); port 0: random; None/"": off
    api_address: str | None = "127.0.0.1:7445"
    nats_cluster_size: int = 1  # 1: one embedded nats-server; 3, 5, 7: a loopback cluster
    nats_partitions: int = 8  # partitions of the telemetry stream (fixed per deployment)
    nats_consume: bool = True  # consume telemetry in this process (else: ingest-worker only)
    # An operator-run NATS server or cluster (tls://host:port each, configured with
    # `gridfort nats config`) instead of the embedded one; exclusive with nats_port.
    nats_servers: tuple[str, ...] = field(default=())
    nats_stream_replicas: int = 1  # replicas of the telemetry stream on nats_servers
    # With NATS ingest: how often fleet state reads back the batches other processes
    # (ingest workers) committed to the shared store [s] (control_plane/store/follower.py)
    nats_follow_interval_s: float = 1.0
    extra_dns_names: tuple[str, ...] = field(default=())
    # Grids whose substation telemetry the FDI gate judges with the shipped deep model
    # (detection.grid.GRID_NAMES). Grid points of any other grid are quarantined.
    gate_grids: tuple[str, ...] = field(default=())
    # The market layer ([control_plane.markets]); absent: no market gateway runs.
    markets: MarketConfig | None = None
    # The OpenADR 2.0b VEN ([control_plane.openadr]); absent: no VEN runs.
    openadr: OpenAdrConfig | None = None
    # The planning cycle ([control_plane.planning]); absent: nothing is planned or dispatched.
    planning: PlanningConfig | None = None

    def __post_init__(self) -> None:
        if not self.link_addresses:
            raise ConfigError("link_addresses: at least one address is required")
        for a in (*self.link_addresses, self.bootstrap_address):
            _check_address(a)
        if not 1 <= self.replay_window_s <= 3600:
            raise ConfigError("replay_window_s: must be between 1 and 3600 seconds")
        if not 0 <= self.clock_skew_s <= self.replay_window_s:
            raise ConfigError("clock_skew_s: must be between 0 and replay_window_s")
        if not 1 <= self.max_streams_per_identity <= 64:
            raise ConfigError("max_streams_per_identity: must be between 1 and 64")
        if not 1024 <= self.max_batch_bytes < 1 << 20:
            raise ConfigError("max_batch_bytes: must be between 1 KiB and 1 MiB")
        if not 100 <= self.handshake_timeout_ms <= 60_000:
            raise ConfigError("handshake_timeout_ms: must be between 100 and 60000")
        if not 0.05 <= self.watch_interval_s <= 5:
            raise ConfigError("watch_interval_s: must be between 0.05 and 5 s (revocation latency)")
        if self.api_address:
            try:
                _check_address(self.api_address)
            except ConfigError as e:
                raise ConfigError(f"api_address: {e}") from None
        if self.nats_port is not None and not 0 <= self.nats_port <= 65535:
            raise ConfigError("nats_port: must be a TCP port (0 = pick one) or absent")
        if self.nats_servers and self.nats_port is not None:
            raise ConfigError("nats_servers: set either nats_port (embedded) or nats_servers")
        for url in self.nats_servers:
            host, sep, port = str(url).removeprefix("tls://").rpartition(":")
            if not str(url).startswith("tls://") or not sep or not host or not port.isdigit():
                raise ConfigError(f"nats_servers: {url!r} must be tls://HOST:PORT (mutual TLS)")
        if self.nats_stream_replicas not in (1, 3, 5):
            raise ConfigError("nats_stream_replicas: must be 1, 3 or 5")
        if self.nats_cluster_size not in (1, 3, 5, 7):
            raise ConfigError("nats_cluster_size: must be 1 (one server) or 3, 5 or 7 nodes")
        if not 1 <= self.nats_partitions <= 1024:
            raise ConfigError("nats_partitions: must be between 1 and 1024")
        if not 0.05 <= self.nats_follow_interval_s <= 60:
            raise ConfigError("nats_follow_interval_s: must be between 0.05 and 60 s")
        unknown_grids = sorted(set(self.gate_grids) - set(GRID_NAMES))
        if unknown_grids:
            raise ConfigError(
                f"gate_grids: unknown grid(s) {', '.join(unknown_grids)}; "
                f"known: {', '.join(GRID_NAMES)}"
            )
        if not 10 <= self.workload_ttl_s <= 30 * 86400:
            raise ConfigError("workload_ttl_s: must be between 10 s and 30 days")

    @classmethod
    def from_toml(cls, path: Path) -> ControlPlaneConfig:
        try:
            raw = tomllib.loads(path.read_text())
        except (OSError, tomllib.TOMLDecodeError) as e:
            raise ConfigError(f"{path}: {e}") from e
        return cls.from_mapping(raw.get("control_plane", raw), base=path.parent)

    @classmethod
    def from_mapping(cls, raw: dict[str, Any], base: Path) -> ControlPlaneConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(raw) - known
        if unknown:
            raise ConfigError(f"unknown field(s): {', '.join(sorted(unknown))}")
        if "state_dir" not in raw:
            raise ConfigError("state_dir: required")
        values = dict(raw)
        values["state_dir"] = (base / str(raw["state_dir"])).resolve()
        for name in ("link_addresses", "extra_dns_names", "gate_grids", "nats_servers"):
            if name in values:
                values[name] = tuple(values[name])
        # each section's module is imported only when the section is there (planning
        # pulls in the optimizer and cvxpy: not for a config without it)
        if "markets" in values:
            from control_plane.markets.service import MarketConfig

            _section(values, "markets", MarketConfig, lambda t: MarketConfig.from_mapping(t, base))
        if "openadr" in values:
            from control_plane.markets.openadr_service import OpenAdrConfig

            _section(
                values, "openadr", OpenAdrConfig, lambda t: OpenAdrConfig.from_mapping(t, base)
            )
        if "planning" in values:
            from control_plane.planning import PlanningConfig

            _section(values, "planning", PlanningConfig, PlanningConfig.from_mapping)
        try:
            return cls(**values)
        except TypeError as e:
            raise ConfigError(str(e)) from e


def _section(
    values: dict[str, Any], name: str, kind: type, parse: Callable[[dict[str, Any]], object]
) -> None:
    """Parse the optional table ``name`` of ``values`` in place: a dict becomes ``kind``
    (via ``parse``, whose errors name the field), None (e.g. copied from a loaded config
    without it) is dropped, an instance of ``kind`` is kept, anything else is refused."""
    raw = values[name]
    if raw is None:
        del values[name]
    elif isinstance(raw, dict):
        values[name] = parse(raw)
    elif not isinstance(raw, kind):
        raise ConfigError(f"{name}: must be a table")


def _check_address(address: str) -> None:
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"address {address!r}: expected HOST:PORT")
