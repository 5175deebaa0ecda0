"""Long-running services: ``control-plane run``, ``edge enroll``, ``edge run``."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
from pathlib import Path
from typing import Any

from control_plane.app import ControlPlane
from control_plane.cli import ingest_worker
from control_plane.config import ControlPlaneConfig
from edge_node.app import EdgeNode
from edge_node.config import EdgeConfig
from edge_node.credentials import enroll
from security.heap import HeapSettler
from security.refusals import GridfortError
from security.tasks import reap


def register(sub: Any) -> None:
    cp = sub.add_parser("control-plane", help="run the control plane")
    cp_sub = cp.add_subparsers(dest="cp_command", metavar="ACTION", required=True)
    p = cp_sub.add_parser("run", help="serve edges over gRPC with mutual TLS until Ctrl-C")
    p.add_argument("--config", type=Path, help="TOML file ([control_plane] table)")
    p.add_argument("--state-dir", type=Path, help="overrides the config's state_dir")
    p.add_argument("--listen", action="append", help="link address HOST:PORT (repeatable)")
    p.add_argument("--bootstrap-listen", help="enrollment address HOST:PORT")
    p.add_argument(
        "--api-listen", help="REST API address HOST:PORT for SOC and operators ('' = off)"
    )
    p.add_argument("--trust-domain")
    p.set_defaults(handler=control_plane_run)
    ingest_worker.register(cp_sub)

    edge = sub.add_parser("edge", help="run or enroll an edge node")
    edge_sub = edge.add_subparsers(dest="edge_command", metavar="ACTION", required=True)
    p = edge_sub.add_parser("enroll", help="enroll with a one-time bootstrap token")
    p.add_argument("--edge-dir", type=Path, required=True)
    p.add_argument("--site", required=True)
    p.add_argument("--token", required=True)
    p.add_argument("--bootstrap", required=True, help="control plane bootstrap HOST:PORT")
    p.add_argument("--trust-bundle", type=Path, required=True, help="root CA PEM (out of band)")
    p.add_argument("--trust-domain", default="gridfort.local")
    p.set_defaults(handler=edge_enroll)
    p = edge_sub.add_parser("run", help="sample devices and stream to the control plane")
    p.add_argument("--config", type=Path, required=True, help="edge TOML config")
    p.set_defaults(handler=edge_run)


def _cp_config(args: argparse.Namespace) -> ControlPlaneConfig:
    raw: dict[str, Any] = {}
    base = Path.cwd()
    if args.config is not None:
        loaded = ControlPlaneConfig.from_toml(args.config)
        raw = {k: getattr(loaded, k) for k in loaded.__dataclass_fields__}
    if args.state_dir is not None:
        raw["state_dir"] = args.state_dir
    if args.listen:
        raw["link_addresses"] = tuple(args.listen)
    if args.bootstrap_listen:
        raw["bootstrap_address"] = args.bootstrap_listen
    if args.api_listen is not None:
        raw["api_address"] = args.api_listen or None
    if args.trust_domain:
        raw["trust_domain"] = args.trust_domain
    if "state_dir" not in raw:
        raise GridfortError("state_dir: give --state-dir or a --config with state_dir")
    raw["state_dir"] = str(raw["state_dir"])
    return ControlPlaneConfig.from_mapping(raw, base)


async def _serve_until_signal(start: Any, stop: Any) -> None:
    done = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, done.set)
    await start()
    settler = asyncio.ensure_future(HeapSettler().run())  # startup done: settle the heap
    try:
        await done.wait()
    finally:
        try:
            await reap(settler)
        finally:
            await stop()


def control_plane_run(args: argparse.Namespace) -> int:
    config = _cp_config(args)

    async def go() -> None:
        cp = ControlPlane(config)
        print(
            f"control plane {cp.spiffe_id}: link ports {cp.link_ports}, "
            f"bootstrap port {cp.bootstrap_port}",
            flush=True,
        )
        await _serve_until_signal(cp.start, cp.stop)

    asyncio.run(go())
    return 0


def edge_enroll(args: argparse.Namespace) -> int:
    bundle = args.trust_bundle.read_bytes()
    creds = asyncio.run(
        enroll(
            directory=args.edge_dir,
            site_id=args.site,
            token=args.token,
            bootstrap_address=args.bootstrap,
            bundle_pem=bundle,
            trust_domain=args.trust_domain,
        )
    )
    print(f"enrolled as {creds.spiffe_id}; credentials in {args.edge_dir}")
    return 0


def edge_run(args: argparse.Namespace) -> int:
    config = EdgeConfig.from_toml(args.config)

    async def go() -> None:
        node = EdgeNode(config)
        await _serve_until_signal(node.start, node.stop)

    asyncio.run(go())
    return 0
