"""Operator commands for the NATS transport: ``nats config``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from control_plane.app import StatePaths
from control_plane.assets.registry import AssetRegistry
from control_plane.transports.nats_config import (
    DEFAULT_MAX_PAYLOAD_BYTES,
    DEFAULT_SYNC_INTERVAL,
    ClusterSettings,
    NatsServerSettings,
    render_config,
    users_for,
)
from control_plane.transports.nats_server import (
    SERVER_WORKLOAD_NAME,
    nats_dir,
    write_server_identity,
)
from security.ca import CertificateAuthority
from security.clock import SystemClock
from security.identity import Role, SpiffeId
from security.refusals import GridfortError

DEFAULT_STATE = Path(".gridfort/state")


def register(sub: Any) -> None:
    nats = sub.add_parser("nats", help="the NATS transport (JetStream, per-identity permissions)")
    nats_sub = nats.add_subparsers(dest="nats_command", metavar="ACTION", required=True)
    p = nats_sub.add_parser(
        "config",
        help="print the nats-server config for this deployment (users = SPIFFE IDs)",
        description=(
            "Print the nats-server config Gridfort generates: TLS with verify_and_map, one "
            "user per site and control plane with its permissions, JetStream. Run it on your "
            "own NATS server or cluster; the TLS and store paths point into the state dir."
        ),
    )
    p.add_argument(
        "--state-dir", type=Path, default=DEFAULT_STATE, help="control-plane state directory"
    )
    p.add_argument("--host", default="127.0.0.1", help="client listen address")
    p.add_argument("--port", type=int, default=4222, help="client port")
    p.add_argument(
        "--monitor-port", type=int, default=None, help="HTTP monitoring port (127.0.0.1 only)"
    )
    p.add_argument(
        "--control-plane",
        action="append",
        default=None,
        metavar="NAME",
        help="control-plane instance that consumes telemetry (repeatable; default cp-1)",
    )
    p.add_argument("--sync-interval", default=DEFAULT_SYNC_INTERVAL, help="e.g. 2m, 1s, always")
    p.add_argument("--max-payload-bytes", type=int, default=DEFAULT_MAX_PAYLOAD_BYTES)
    p.add_argument(
        "--write-tls",
        action="store_true",
        help="also issue the broker's certificate (spiffe://<domain>/control-plane/nats, "
        "DNS nats.<domain>) and write the TLS files the config names",
    )
    p.add_argument("--dns-name", action="append", default=[], help="extra DNS SAN (repeatable)")
    p.add_argument("--ip", action="append", default=[], help="extra IP SAN (repeatable)")
    p.add_argument(
        "--ttl-s", type=int, default=7 * 86400, help="broker certificate lifetime; re-run to renew"
    )
    p.add_argument(
        "--server-name", default="gridfort-nats", help="this node's name (unique per cluster node)"
    )
    p.add_argument(
        "--cluster-port",
        type=int,
        default=None,
        help="cluster mode: accept routes on this port (mutual TLS, only the brokers' identity)",
    )
    p.add_argument("--cluster-name", default="gridfort", help="cluster mode: the cluster's name")
    p.add_argument(
        "--route",
        action="append",
        default=[],
        metavar="URL",
        help="cluster mode: another node, tls://host:port (repeatable)",
    )
    p.set_defaults(handler=nats_config)


def nats_config(args: argparse.Namespace) -> int:
    paths = StatePaths(args.state_dir)
    ca = CertificateAuthority.load(paths.ca, SystemClock())
    if not paths.registry_db.exists():
        raise GridfortError(f"no asset registry in {args.state_dir}: run 'gridfort ca init'")
    registry = AssetRegistry(paths.registry_db)
    try:
        sites = registry.snapshot().sites
    finally:
        registry.close()
    directory = nats_dir(args.state_dir).resolve()
    cluster = None
    if args.cluster_port is not None:
        cluster = ClusterSettings(
            name=args.cluster_name,
            host=args.host,
            port=args.cluster_port,
            routes=tuple(args.route),
            route_user=SpiffeId(ca.trust_domain, Role.CONTROL_PLANE, SERVER_WORKLOAD_NAME).uri,
        )
    elif args.route:
        raise GridfortError("--route needs --cluster-port")
    settings = NatsServerSettings(
        host=args.host,
        port=args.port,
        server_cert_file=directory / "server.cert.pem",
        server_key_file=directory / "server.key.pem",
        ca_file=directory / "bundle.pem",
        store_dir=directory / "jetstream",
        users=users_for(ca.trust_domain, sites, args.control_plane or ["cp-1"]),
        monitor_port=args.monitor_port,
        max_payload_bytes=args.max_payload_bytes,
        sync_interval=args.sync_interval,
        server_name=args.server_name,
        cluster=cluster,
    )
    if args.write_tls:
        cert = write_server_identity(
            directory,
            ca,
            dns_names=("localhost", *args.dns_name),
            ip_addresses=("127.0.0.1", *args.ip),
            ttl_s=args.ttl_s,
        )
        print(
            f"wrote the broker's TLS files into {directory} (valid until "
            f"{cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC)",
            file=sys.stderr,
        )
    sys.stdout.write(render_config(settings))
    return 0
