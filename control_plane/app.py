"""Composition root of the control plane: builds every object from config and starts it.

State directory layout::

    ca/              root and issuing CA (keys 0600)
    registry.db      sites and assets, bootstrap tokens, signing keys, revocations
    telemetry.db     committed batches, measurements, quarantine
    commands.db      issued commands and the edges' results
    alerts.db        the FDI gate's alert episodes (SOC analysts)
    gate_state.db    the temporal judge's last accepted levels (restored at start)
    openadr.db       accepted demand-response events (when OpenADR is configured)
    audit.jsonl      hash-chained audit log (``gridfort audit verify``)
    control-plane/   the control plane's Ed25519 command/receipt signing key
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from control_plane.alerts import AlertBook
from control_plane.api.operations import ApiOperations, ApiSources
from control_plane.api.rest import RestApi, RestSettings
from control_plane.assets.registry import AssetRegistry
from control_plane.commands.command_log import CommandLog
from control_plane.commands.dispatcher import CommandDispatcher
from control_plane.commands.group_dispatcher import GroupDispatcher
from control_plane.config import ControlPlaneConfig
from control_plane.gate.gate import FdiGate
from control_plane.gate.state_file import load_levels, save_levels
from control_plane.ingest.pipeline import IngestPipeline
from control_plane.store.commit_ledger import CommitLedger
from control_plane.store.follower import StoreFollower
from control_plane.store.telemetry_store import TelemetryStore
from control_plane.tls_identity import ServerIdentity, control_plane_dns_name
from control_plane.transports.grpc_server import (
    EdgeLinkService,
    EnrollmentService,
    GrpcSettings,
    GrpcTransport,
    RenewalService,
)
from control_plane.transports.streams import StreamRegistry
from security.audit_log import AuditLog
from security.bootstrap_tokens import BootstrapTokens
from security.ca import CertificateAuthority
from security.clock import Clock, SystemClock
from security.enrollment import EnrollmentAuthority
from security.envelope import (
    EnvelopeSigner,
    generate_signing_key,
    load_signing_key,
    save_signing_key,
)
from security.identity import Role, SpiffeId
from security.refusals import ConfigError, GridfortError, Reason, Refusal
from security.replay_guard import ReplayPolicy
from security.revocation import RevocationList
from security.signing_keys import SigningKeyRegistry
from security.tasks import reap

if TYPE_CHECKING:
    from control_plane.assets.grid_limits import GridLimits
    from control_plane.forecast.history import GatedHistory
    from control_plane.forecast.weather_feed import WeatherForecasts
    from control_plane.markets.actions import Product
    from control_plane.markets.service import MarketService
    from control_plane.planning import PlanningCycle, PvForecastSource
    from control_plane.transports.nats_client import ControlPlaneClientTls
    from control_plane.transports.nats_cluster import EmbeddedNatsCluster
    from control_plane.transports.nats_ingest import NatsIngest
    from control_plane.transports.nats_server import EmbeddedNats, PermissionViolation

log = logging.getLogger(__name__)
#: How often the gate's temporal tracks are saved for the next start [s].
GATE_SAVE_S = 30.0
#: How often completed quarter-hours of gated PV power are written to history.db [s].
HISTORY_FLUSH_S = 60.0


@dataclass(frozen=True)
class StatePaths:
    root: Path

    @property
    def ca(self) -> Path:
        return self.root / "ca"

    @property
    def registry_db(self) -> Path:
        return self.root / "registry.db"

    @property
    def telemetry_db(self) -> Path:
        return self.root / "telemetry.db"

    @property
    def commands_db(self) -> Path:
        return self.root / "commands.db"

    @property
    def alerts_db(self) -> Path:
        return self.root / "alerts.db"

    @property
    def gate_state_db(self) -> Path:
        return self.root / "gate_state.db"

    @property
    def audit_log(self) -> Path:
        return self.root / "audit.jsonl"

    @property
    def signing_key(self) -> Path:
        return self.root / "control-plane" / "signing.key"


def _build_gate(grids: tuple[str, ...]) -> FdiGate:
    """The FDI gate with the shipped, signature-checked model of each configured grid."""
    try:
        return FdiGate.with_grids(grids)
    except GridfortError as e:  # e.g. a tampered or missing model (ModelArtifactError)
        raise ConfigError(f"gate_grids: the detection model cannot be loaded: {e}") from e
    except ImportError as e:
        raise ConfigError(
            f"gate_grids: {', '.join(grids)} needs the detection extra "
            f"(pip install 'gridfort[detection]'): {e}"
        ) from e


def init_state(state_dir: Path, trust_domain: str, clock: Clock) -> CertificateAuthority:
    """Create a new state directory with a fresh CA (refuses to overwrite one)."""
    paths = StatePaths(state_dir)
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    ca = CertificateAuthority.init(paths.ca, trust_domain, clock)
    AssetRegistry(paths.registry_db).close()
    return ca


def load_or_create_signer(path: Path, signer: str) -> EnvelopeSigner:
    if path.exists():
        return EnvelopeSigner(load_signing_key(path), signer)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    key = generate_signing_key()
    save_signing_key(path, key)
    return EnvelopeSigner(key, signer)


class ControlPlane:
    """A running control plane: gRPC listeners, pipeline, store, command dispatcher."""

    def __init__(
        self,
        config: ControlPlaneConfig,
        clock: Clock | None = None,
        *,
        pipeline_cls: type[IngestPipeline] = IngestPipeline,
    ) -> None:
        self.config = config
        self.clock = clock or SystemClock()
        self.paths = StatePaths(config.state_dir)
        if not self.paths.ca.exists():
            raise ConfigError(
                f"state_dir {config.state_dir}: no CA found; run 'gridfort ca init' first"
            )
        clock_ = self.clock
        self.ca = CertificateAuthority.load(self.paths.ca, clock_)
        if self.ca.trust_domain != config.trust_domain:
            raise ConfigError(
                f"trust_domain {config.trust_domain!r} does not match the CA's "
                f"{self.ca.trust_domain!r}"
            )
        self.spiffe_id = SpiffeId(config.trust_domain, Role.CONTROL_PLANE, config.name)
        self.audit = AuditLog(self.paths.audit_log, clock_)
        self.registry = AssetRegistry(self.paths.registry_db)
        self.keys = SigningKeyRegistry(self.paths.registry_db)
        self.revocations = RevocationList(self.paths.registry_db, clock_)
        self.tokens = BootstrapTokens(self.paths.registry_db, clock_)
        self.store = TelemetryStore(
            self.paths.telemetry_db, clock_, synchronous="FULL" if config.durable_sync else "NORMAL"
        )
        self.signer = load_or_create_signer(self.paths.signing_key, str(self.spiffe_id))
        self.gate = _build_gate(config.gate_grids)
        restored = self.gate.temporal.restore_levels(load_levels(self.paths.gate_state_db))
        if restored:
            log.info("gate: %d temporal tracks restored from the last run", restored)
        self._gate_saver: asyncio.Task[None] | None = None
        # written by its own thread: a flood of quarantines must not stall the event loop
        self.alerts = AlertBook(self.paths.alerts_db, clock_, self.audit, background=True)
        self.pipeline = pipeline_cls(
            trust_domain=config.trust_domain,
            registry=self.registry,
            keys=self.keys,
            revocations=self.revocations,
            store=self.store,
            audit=self.audit,
            clock=clock_,
            replay_policy=ReplayPolicy(
                window_ms=int(config.replay_window_s * 1000),
                skew_ms=int(config.clock_skew_s * 1000),
            ),
            gate=self.gate,
            on_gate_quarantine=self.alerts.raise_from,
        )
        self.markets: MarketService | None = None
        if config.markets is not None:
            from control_plane.markets.service import MarketService, RegistryAssets

            self.markets = MarketService(
                config.markets,
                trust_domain=config.trust_domain,
                state=self.pipeline.state,  # gated state only: verified flexibility
                assets=RegistryAssets(self.registry),
                audit=self.audit,
                clock=clock_,
            )
            loaded = self.markets.load_policy()  # audited; until loaded every action is denied
            if not loaded.loaded:
                log.warning("market policy not loaded: %s", loaded.reason)
        # --- OpenADR 2.0b VEN (issue #6): demand-response events -> planner constraints ---
        from control_plane.markets.openadr_service import OpenAdrService

        self.openadr: OpenAdrService | None = None  # started/stopped in start()/stop()
        if config.openadr is not None:
            from control_plane.markets.service import RegistryAssets

            self.openadr = OpenAdrService(
                config.openadr,
                db_path=self.paths.root / "openadr.db",  # accepted events survive a restart
                state=self.pipeline.state,  # gated state only: opt-in and the baseline
                assets=RegistryAssets(self.registry),
                audit=self.audit,
                clock=clock_,
            )
        # --- end OpenADR ---
        self.authority = EnrollmentAuthority(
            self.ca,
            self.tokens,
            self.keys,
            self.revocations,
            self.audit,
            self.registry.site_exists,
            clock_,
            workload_ttl_s=config.workload_ttl_s,
        )
        settings = GrpcSettings(
            link_addresses=config.link_addresses,
            bootstrap_address=config.bootstrap_address,
            stream_idle_timeout_s=config.stream_idle_timeout_s,
            max_streams_per_identity=config.max_streams_per_identity,
            max_batch_bytes=config.max_batch_bytes,
            handshake_timeout_ms=config.handshake_timeout_ms,
            watch_interval_s=config.watch_interval_s,
        )
        self.streams = StreamRegistry(settings.max_streams_per_identity)
        self.command_log = CommandLog(self.paths.commands_db)
        self.dispatcher = CommandDispatcher(
            signer=self.signer,
            trust_domain=config.trust_domain,
            log=self.command_log,
            streams=self.streams,
            audit=self.audit,
            clock=clock_,
        )
        self.groups = GroupDispatcher(
            commands=self.dispatcher,
            signer=self.signer,
            log=self.command_log,
            audit=self.audit,
            clock=clock_,
        )
        self.planning: PlanningCycle | None = None  # gated state -> plan -> dispatch
        self.grid_limits: GridLimits | None = None
        self._planning_task: asyncio.Task[None] | None = None
        # the live PV forecast's inputs: gated PV history and the submitted weather feed
        self.history: GatedHistory | None = None
        self.weather: WeatherForecasts | None = None
        self.planning_pv_source: PvForecastSource | None = None
        self._history_task: asyncio.Task[None] | None = None
        self._pv_train_task: asyncio.Future[None] | None = None
        if config.planning is not None:
            from control_plane.assets.grid_limits import GridLimits
            from control_plane.dispatch.plan_dispatcher import PlanDispatcher
            from control_plane.planning import PlanningCycle

            self.grid_limits = GridLimits(self.paths.registry_db)
            if config.planning.pv_forecast and config.planning.pv_live_model:
                from control_plane.forecast.history import GatedHistory
                from control_plane.forecast.weather_feed import WeatherForecasts

                self.history = GatedHistory(self.paths.root / "history.db")
                self.weather = WeatherForecasts(
                    self.paths.root / "weather.db", config.planning.forecast_site()
                )
                self.pipeline.add_commit_observer(self.history.observe)
            self.planning_pv_source = config.planning.pv_source(self.history, self.weather)
            self.planning = PlanningCycle(
                config.planning,
                pv_forecast=self.planning_pv_source,
                constraints=None if self.openadr is None else self.openadr.active_constraints,
                markets=self.markets,
                trust_domain=config.trust_domain,
                grid_limits=self.grid_limits,
                arming=self.dispatcher,
                positions=None if self.markets is None else self._sold_kw,
                registry=self.registry,
                state=self.pipeline.state,
                audit=self.audit,
                clock=clock_,
                identity=str(self.spiffe_id),
                dispatcher=PlanDispatcher(
                    groups=self.groups,
                    state=self.pipeline.state,
                    audit=self.audit,
                    clock=clock_,
                    identity=str(self.spiffe_id),
                ),
            )
        # With NATS, ingest workers in other processes commit batches too: fleet state
        # (and the PV history) follow the shared store; the ledger keeps the batches this
        # process committed (and applied) from being applied twice.
        self.follower: StoreFollower | None = None
        if config.nats_port is not None or config.nats_servers:
            self.pipeline.commit_ledger = CommitLedger()
            self.follower = StoreFollower(
                self.store,
                self.pipeline.state,
                ledger=self.pipeline.commit_ledger,
                interval_s=config.nats_follow_interval_s,
            )
            if self.history is not None:
                self.follower.add_observer(self.history.observe)
            # a worker has no alert book: the gate's verdicts in its commits alert here
            self.follower.add_gate_observer(self.alerts.raise_for_site)
        dns = (control_plane_dns_name(config.trust_domain), "localhost", *config.extra_dns_names)
        self.server_identity = ServerIdentity(
            self.ca, self.spiffe_id, clock_, dns_names=dns, ttl_s=config.workload_ttl_s
        )
        renewal = RenewalService(self.pipeline, self.authority, self.ca)
        enrollment = EnrollmentService(
            self.authority, self.keys, self.pipeline, self.signer, self.command_log.next_seq
        )
        renewal.deadline_s = enrollment.deadline_s = settings.unary_deadline_s
        self.transport = GrpcTransport(
            settings=settings,
            pipeline=self.pipeline,
            streams=self.streams,
            link=EdgeLinkService(
                self.pipeline, self.streams, self.dispatcher, self.signer, clock_, settings
            ),
            renewal=renewal,
            enrollment=enrollment,
            link_credentials=self.server_identity.credentials(require_client_cert=True),
            bootstrap_credentials=self.server_identity.credentials(require_client_cert=False),
            clock=clock_,
        )

        self.nats: EmbeddedNats | EmbeddedNatsCluster | None = None
        self.nats_ingest: NatsIngest | None = None
        self._nats_sites: frozenset[str] = frozenset()
        self._nats_sync: asyncio.Task[None] | None = None
        self.api: RestApi | None = None  # the REST API for SOC analysts and operators
        if config.api_address:
            self.api = RestApi(
                RestSettings(config.api_address),
                identity=self.server_identity,
                trust_bundle_pem=self.ca.trust_bundle_pem(),
                trust_domain=config.trust_domain,
                revocations=self.revocations,
                audit=self.audit,
                clock=clock_,
                operations=ApiOperations(
                    ApiSources(
                        control_plane_id=str(self.spiffe_id),
                        alerts=self.alerts,
                        pipeline=self.pipeline,
                        gate=self.gate,
                        streams=self.streams,
                        transports=self,
                        telemetry_db=self.paths.telemetry_db,
                        audit_log=self.paths.audit_log,
                        clock=clock_,
                        planning=self.planning,
                        weather=None if self.weather is None else self.submit_weather,
                        follower=self.follower,
                    )
                ),
            )

    async def save_gate_state(self) -> None:
        """Write the temporal judge's last accepted levels (off the event loop)."""
        levels = self.gate.temporal.export_levels()
        try:
            await asyncio.to_thread(save_levels, self.paths.gate_state_db, levels)
        except (OSError, sqlite3.Error) as e:  # costs the restart protection, not the run
            log.warning("gate state not saved: %s", e)

    async def _save_gate_state_every(self, interval_s: float) -> None:
        while True:
            await asyncio.sleep(interval_s)
            await self.save_gate_state()

    def _is_pv(self, asset_id: str) -> bool:
        """The history keeps PV plants only (what the live forecast reads)."""
        from control_plane.assets.model import AssetKind

        asset = self.pipeline.registry_snapshot.assets.get(asset_id)
        return asset is not None and asset.kind is AssetKind.PV_INVERTER

    async def flush_history(self, everything: bool = False) -> None:
        """Write completed quarter-hours (``everything``: all, at stop) of the gated PV
        history to history.db, off the event loop."""
        if self.history is None:
            return
        now = self.clock.now_ms()
        if everything:
            rows = self.history.detach_all(self._is_pv)
        else:
            rows = self.history.detach_completed(now, self._is_pv)
        try:
            await asyncio.to_thread(self.history.write, rows, now)
        except (OSError, sqlite3.Error) as e:  # costs forecast inputs, not the run
            log.warning("history: %d quarter-hours not written: %s", len(rows), e)

    def _sold_kw(self, product: Product, delivery_start_ms: int) -> float:
        """Reserve capacity the market gateway has sold for one block [kW] (fills)."""
        assert self.markets is not None
        return max(0.0, 1000.0 * self.markets.gateway.position_mw(product, delivery_start_ms))

    def ensure_pv_model(self) -> None:
        """Train the live PV model (a few seconds in a worker thread; the climatology
        serves until it is done) unless it is loaded, trained or training. Called at start
        when the weather store holds forecasts and after each accepted weather forecast:
        without a weather feed the model is never used, so it is not trained."""
        from control_plane.forecast.live import ModelPvForecastSource

        source = self.planning_pv_source
        if not isinstance(source, ModelPvForecastSource) or source.model is not None:
            return
        if self._pv_train_task is None or (
            self._pv_train_task.done() and source.training_error is not None
        ):
            self._pv_train_task = asyncio.ensure_future(asyncio.to_thread(source.train))

    async def submit_weather(
        self, document: Mapping[str, Any], submitted_by: str
    ) -> dict[str, Any]:
        """A day-ahead weather forecast for the live PV model (``PUT /v1/weather``) from
        ``submitted_by`` (SPIFFE ID): the store's answer (accepted, or the refusal's code
        and message), audited either way."""
        if self.weather is None:
            raise GridfortError("no weather feed here (planning pv_forecast/pv_live_model off)")
        now = self.clock.now_ms()
        result = await asyncio.to_thread(self.weather.submit, document, now)
        answer = result.to_json()
        self.audit.append(
            "weather_forecast",
            decision="allow" if result.accepted else "deny",
            identity=submitted_by,
            reason="" if result.reason is None else result.reason.value,
            details={k: v for k, v in answer.items() if k != "accepted"},
        )
        if result.accepted:
            self.ensure_pv_model()
        return answer

    async def _flush_history_every(self, interval_s: float) -> None:
        while True:
            await asyncio.sleep(interval_s)
            await self.flush_history()

    @property
    def api_port(self) -> int | None:
        """The REST API's bound port (useful with port 0), or None when the API is off."""
        return None if self.api is None else self.api.port

    @property
    def link_ports(self) -> list[int]:
        return self.transport.link_ports

    @property
    def bootstrap_port(self) -> int:
        return int(self.transport.bootstrap_port)

    async def start(self) -> None:
        await self.transport.start()
        if self.api is not None:
            await self.api.start()
        if self.config.nats_port is not None:
            await self._start_nats(self.config.nats_port)
        elif self.config.nats_servers:
            await self._connect_nats(self.config.nats_servers)
        if self.follower is not None:  # NATS ingest: follow the workers' commits
            await self.follower.start()
        if self.planning is not None:
            self._planning_task = asyncio.ensure_future(self.planning.run())
        self._gate_saver = asyncio.ensure_future(self._save_gate_state_every(GATE_SAVE_S))
        if self.history is not None:
            self._history_task = asyncio.ensure_future(self._flush_history_every(HISTORY_FLUSH_S))
        if self.weather is not None and self.weather.stored_steps() > 0:
            self.ensure_pv_model()  # a weather feed is connected: the model will be used
        if self.openadr is not None:  # OpenADR VEN: registers in the background
            await self.openadr.start()
        self.audit.append(
            "control_plane_started",
            decision="info",
            identity=str(self.spiffe_id),
            details={
                "link_ports": ",".join(map(str, self.link_ports)),
                "bootstrap_port": self.bootstrap_port,
            },
        )
        log.info(
            "control plane %s listening on %s (bootstrap %s)",
            self.spiffe_id,
            self.link_ports,
            self.bootstrap_port,
        )

    async def _start_nats(self, port: int) -> None:
        """The NATS transport (issue #3): embedded broker (or loopback cluster) + consumer."""
        from control_plane.transports.nats_client import ControlPlaneClientTls
        from control_plane.transports.nats_cluster import EmbeddedNatsCluster
        from control_plane.transports.nats_server import EmbeddedNats

        c = self.config
        sites = self.pipeline.registry_snapshot.sites
        if c.nats_cluster_size > 1:
            self.nats = EmbeddedNatsCluster(
                c.state_dir,
                self.ca,
                c.trust_domain,
                sites,
                size=c.nats_cluster_size,
                ports=[port + i if port else 0 for i in range(c.nats_cluster_size)],
                control_planes=(c.name,),
                partitions=c.nats_partitions,
                clock=self.clock,
                on_violation=self._on_nats_violation,
            )
        else:
            self.nats = EmbeddedNats(
                c.state_dir,
                self.ca,
                c.trust_domain,
                sites,
                port=port,
                control_planes=(c.name,),
                partitions=c.nats_partitions,
                clock=self.clock,
                on_violation=self._on_nats_violation,
            )
        await self.nats.start()
        await self._consume_nats(self.nats.urls, ControlPlaneClientTls(self.ca, c.name, self.clock))
        self._nats_sites = self.pipeline.registry_snapshot.sites
        self._nats_sync = asyncio.ensure_future(self._sync_loop())

    async def _connect_nats(self, urls: tuple[str, ...]) -> None:
        """An operator-run NATS server or cluster (``nats_servers``): create or reconcile the
        telemetry stream as this control plane, then consume as with the embedded one. The
        servers' users come from ``gridfort nats config``; adding a site means re-running it
        and reloading them (Gridfort cannot reload a server it did not start)."""
        import nats.errors

        from control_plane.transports.nats_client import (
            ControlPlaneClientTls,
            connect_control_plane,
        )
        from control_plane.transports.nats_stream import ensure_stream, telemetry_stream_config

        c = self.config
        tls = ControlPlaneClientTls(self.ca, c.name, self.clock)
        try:
            nc = await connect_control_plane(urls, tls.context, tls.spiffe_id)
        except (OSError, TimeoutError, nats.errors.Error) as e:
            raise GridfortError(
                f"nats_servers: cannot connect to {', '.join(urls)} with this control plane's "
                f"certificate ({type(e).__name__}: {e}); is the server configured with "
                "'gridfort nats config' and running?"
            ) from e
        try:
            config = telemetry_stream_config(
                partitions=c.nats_partitions, replicas=c.nats_stream_replicas
            )
            await ensure_stream(nc, config, timeout_s=5.0)
        finally:
            await nc.close()
        await self._consume_nats(urls, tls)
        log.info("consuming telemetry from the operator-run NATS at %s", ", ".join(urls))

    async def _consume_nats(self, urls: tuple[str, ...], tls: ControlPlaneClientTls) -> None:
        """Consume telemetry from ``urls`` into the pipeline (the same for every broker)."""
        from control_plane.transports.nats_ingest import NatsIngest, NatsIngestSettings
        from control_plane.transports.nats_server import write_client_urls

        c = self.config
        write_client_urls(c.state_dir, urls)  # for ingest-worker processes
        self.nats_ingest = NatsIngest(
            urls=urls,
            tls=tls,
            pipeline=self.pipeline,
            store=self.store,
            dispatcher=self.dispatcher,
            signer=self.signer,
            clock=self.clock,
            settings=NatsIngestSettings(name=c.name, consume=c.nats_consume),
        )
        await self.nats_ingest.start()

    def _on_nats_violation(self, violation: PermissionViolation) -> None:
        """The broker refused a publish/subscribe: the same refusal path as every other."""
        self.pipeline.refuse(
            Refusal(
                Reason.ROLE_NOT_ALLOWED,
                f"NATS permissions violation: {violation.action} on {violation.subject[:128]}",
                violation.identity,
            ),
            event="nats_permission",
        )

    async def sync_transports(self) -> None:
        """Apply registry and revocation changes to the transports: the NATS users list
        holds every registered site except revoked edges (their connections are cut)."""
        self.pipeline.refresh()
        sites = frozenset(
            site
            for site in self.pipeline.registry_snapshot.sites
            if self.pipeline.edge_allowed(site)
        )
        if self.nats is not None and sites != self._nats_sites:
            await self.nats.set_sites(sites)
            self._nats_sites = sites

    async def _sync_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.watch_interval_s)
            try:
                await self.sync_transports()
            except Exception:  # never let the watcher die
                log.exception("transport sync failed")

    @property
    def nats_url(self) -> str | None:
        if self.nats is None:
            return self.config.nats_servers[0] if self.config.nats_servers else None
        return self.nats.url

    @property
    def nats_urls(self) -> tuple[str, ...]:
        """Every broker URL (one per cluster node); empty without NATS."""
        return self.config.nats_servers if self.nats is None else self.nats.urls

    async def stop(self) -> None:
        if self.openadr is not None:  # OpenADR VEN
            await self.openadr.stop()
        if self.api is not None:
            await self.api.stop()
        await reap(self._planning_task)
        await reap(self._gate_saver)
        await reap(self._history_task)
        await reap(self._pv_train_task)
        await self.save_gate_state()
        await reap(self._nats_sync)
        if self.follower is not None:
            await self.follower.stop()
        if self.nats_ingest is not None:
            await self.nats_ingest.stop()
        if self.nats is not None:
            await self.nats.stop()
        await self.transport.stop()
        await self.flush_history(everything=True)  # no more ingest: write the open ones
        self.dispatcher.release_held_results()  # results held behind a fan-out: record them
        self.store.close()
        self.groups.close()
        self.command_log.close()
        self.alerts.close()
        if self.grid_limits is not None:
            self.grid_limits.close()
        if self.history is not None:
            self.history.close()
        if self.weather is not None:
            self.weather.close()
        self.audit.close()
        self.registry.close()
