"""``gridfort control-plane ingest-worker``: one more process consuming the NATS telemetry stream.

Wire it into the ``control-plane`` sub-commands with
``ingest_worker.register(cp_subparsers)`` (done in ``control_plane/cli/run.py``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import tomllib
from pathlib import Path
from typing import Any

from control_plane.config import ControlPlaneConfig
from security.heap import HeapSettler
from security.refusals import GridfortError
from security.tasks import reap


def register(cp_sub: Any) -> None:
    p = cp_sub.add_parser(
        "ingest-worker",
        help="consume a share of the NATS telemetry stream (add one per core for throughput)",
        description=(
            "Join the control plane's ingest workers: take a share of the telemetry stream's "
            "partitions (the workers balance them among themselves), verify, authorize, "
            "validate and commit every batch to the control plane's store, and send the "
            "signed receipts. Uses the control plane's state directory, identity and keys; "
            "start the control plane (with NATS) first. Stop with SIGTERM or Ctrl-C: held "
            "messages go back to the other workers at once."
        ),
    )
    p.add_argument("--config", type=Path, help="control-plane TOML file ([control_plane] table)")
    p.add_argument("--state-dir", type=Path, help="overrides the config's state_dir")
    p.add_argument("--trust-domain")
    p.add_argument(
        "--nats-server",
        action="append",
        default=[],
        metavar="URL",
        help="broker URL, tls://host:port (repeatable; default: the URLs the control plane "
        "recorded in <state>/nats/client-urls.json)",
    )
    p.add_argument("--worker-id", default="", help="unique name of this worker (default: random)")
    p.set_defaults(handler=ingest_worker)


def _config(args: argparse.Namespace) -> ControlPlaneConfig:
    """The control plane's config (TOML), with --state-dir and --trust-domain applied."""
    raw: dict[str, Any] = {}
    base = Path.cwd()
    if args.config is not None:
        try:
            doc = tomllib.loads(args.config.read_text())
        except (OSError, tomllib.TOMLDecodeError) as e:
            raise GridfortError(f"{args.config}: {e}") from e
        raw = dict(doc.get("control_plane", doc))
        base = args.config.parent
    if args.state_dir is not None:
        raw["state_dir"] = str(args.state_dir.resolve())
    if args.trust_domain:
        raw["trust_domain"] = args.trust_domain
    if "state_dir" not in raw:
        raise GridfortError("state_dir: give --state-dir or a --config with state_dir")
    return ControlPlaneConfig.from_mapping(raw, base)


def ingest_worker(args: argparse.Namespace) -> int:
    from control_plane.transports.nats_ingest import NatsIngestSettings
    from control_plane.transports.nats_worker import IngestWorker

    config = _config(args)
    worker = IngestWorker(
        config,
        nats_urls=tuple(args.nats_server),
        settings=NatsIngestSettings(worker_id=args.worker_id),
    )

    async def go() -> None:
        done = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(sig, done.set)
        await worker.start()
        print(
            f"ingest worker {worker.worker_id}: {worker.ingest.partitions} partitions, "
            f"brokers {', '.join(worker.urls)}",
            flush=True,
        )
        settler = asyncio.ensure_future(HeapSettler().run())  # startup done: settle the heap
        try:
            await done.wait()
        finally:
            try:
                await reap(settler)
            finally:
                await worker.stop()

    try:
        asyncio.run(go())
    except OSError as e:
        raise GridfortError(f"ingest worker: {e}") from e
    return 0
