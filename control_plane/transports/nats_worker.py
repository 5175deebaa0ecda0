"""Composition root of an ingest worker: ``gridfort control-plane ingest-worker``.

A worker is a second kind of control-plane process next to ``control-plane run``:
same state directory, same identity and keys, no gRPC listener. It builds the
ingest pipeline exactly as :class:`~control_plane.app.ControlPlane` does (registry,
enrolled keys, revocations, replay guard, validation, the telemetry store, the
audit log) and consumes its share of the telemetry stream's partitions over NATS
(:class:`~control_plane.transports.nats_ingest.NatsIngest`). Receipts are signed
with the control plane's own key (``<state>/control-plane/signing.key``), the one
edges learned at enrollment; a worker never creates a key.

Several workers (and the control plane's own consumer) share the partitions; all
write to the same store. With SQLite (the embedded default) that means processes on
one host sharing ``telemetry.db`` in WAL mode: each process's writer thread takes
the write lock with ``BEGIN IMMEDIATE`` (waiting up to the 5 s busy timeout), so
group commits from different processes are serialized, never interleaved; the
``(site, seq)`` primary key makes a commit that another process already made a
duplicate, not a second copy. Reads see other processes' commits (WAL snapshots
per statement). A worker re-reads registry, keys and revocations every
``watch_interval_s`` (and at once when a batch names a key it does not know yet).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import replace

from control_plane.app import StatePaths
from control_plane.assets.registry import AssetRegistry
from control_plane.commands.command_log import CommandLog
from control_plane.commands.dispatcher import CommandDispatcher
from control_plane.config import ControlPlaneConfig
from control_plane.ingest.pipeline import IngestPipeline
from control_plane.store.telemetry_store import TelemetryStore
from control_plane.transports.nats_client import ControlPlaneClientTls
from control_plane.transports.nats_ingest import NatsIngest, NatsIngestSettings
from control_plane.transports.nats_server import read_client_urls
from control_plane.transports.streams import StreamRegistry
from security.audit_log import AuditLog
from security.ca import CertificateAuthority
from security.clock import Clock, SystemClock
from security.envelope import EnvelopeSigner, load_signing_key
from security.identity import Role, SpiffeId
from security.refusals import ConfigError
from security.replay_guard import ReplayPolicy
from security.revocation import RevocationList
from security.signing_keys import SigningKeyRegistry
from security.tasks import reap

log = logging.getLogger(__name__)


class IngestWorker:
    """One ingest-worker process: the pipeline of ``config``'s control plane, fed by NATS."""

    def __init__(
        self,
        config: ControlPlaneConfig,
        *,
        nats_urls: Sequence[str] = (),
        settings: NatsIngestSettings | None = None,
        clock: Clock | None = None,
        pipeline_cls: type[IngestPipeline] = IngestPipeline,
    ) -> None:
        self.config = config
        self.clock = clock or SystemClock()
        paths = StatePaths(config.state_dir)
        if not paths.signing_key.is_file():
            raise ConfigError(
                f"state_dir {config.state_dir}: no control-plane signing key; start the control "
                "plane once before its ingest workers"
            )
        self.urls = tuple(nats_urls) or read_client_urls(config.state_dir)
        self.ca = CertificateAuthority.load(paths.ca, self.clock)
        if self.ca.trust_domain != config.trust_domain:
            raise ConfigError(
                f"trust_domain {config.trust_domain!r} does not match the CA's "
                f"{self.ca.trust_domain!r}"
            )
        spiffe_id = SpiffeId(config.trust_domain, Role.CONTROL_PLANE, config.name)
        self.audit = AuditLog(paths.audit_log, self.clock)
        self.registry = AssetRegistry(paths.registry_db)
        self.store = TelemetryStore(
            paths.telemetry_db,
            self.clock,
            synchronous="FULL" if config.durable_sync else "NORMAL",
        )
        self.signer = EnvelopeSigner(load_signing_key(paths.signing_key), str(spiffe_id))
        self.pipeline = pipeline_cls(
            trust_domain=config.trust_domain,
            registry=self.registry,
            keys=SigningKeyRegistry(paths.registry_db),
            revocations=RevocationList(paths.registry_db, self.clock),
            store=self.store,
            audit=self.audit,
            clock=self.clock,
            replay_policy=ReplayPolicy(
                window_ms=int(config.replay_window_s * 1000),
                skew_ms=int(config.clock_skew_s * 1000),
            ),
        )
        self.command_log = CommandLog(paths.commands_db)
        dispatcher = CommandDispatcher(  # records the edges' signed command results
            signer=self.signer,
            trust_domain=config.trust_domain,
            log=self.command_log,
            streams=StreamRegistry(),
            audit=self.audit,
            clock=self.clock,
        )
        settings = replace(settings or NatsIngestSettings(), name=config.name, consume=True)
        self.ingest = NatsIngest(
            urls=self.urls,
            tls=ControlPlaneClientTls(self.ca, config.name, self.clock),
            pipeline=self.pipeline,
            store=self.store,
            dispatcher=dispatcher,
            signer=self.signer,
            clock=self.clock,
            settings=settings,
        )
        self._watch: asyncio.Task[None] | None = None

    @property
    def worker_id(self) -> str:
        return self.ingest.worker_id

    async def start(self) -> None:
        await self.ingest.start()
        self._watch = asyncio.ensure_future(self._refresh_loop())
        log.info("ingest worker %s consuming from %s", self.worker_id, ", ".join(self.urls))

    async def _refresh_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.watch_interval_s)
            try:
                self.pipeline.refresh()
            except Exception:  # never let the watcher die
                log.exception("ingest worker: refreshing registry and keys failed")

    async def stop(self) -> None:
        await reap(self._watch)
        self._watch = None
        await self.ingest.stop()
        self.store.close()
        self.command_log.close()
        self.audit.close()
        self.registry.close()
