"""An embedded NATS cluster: ``size`` nats-server children on one host, routed over mutual TLS.

``gridfort demo --transport nats --nats-cluster 3`` and the cluster tests run this;
in production the same config (``gridfort nats config --cluster-*``) runs one node
per host. Each node is an :class:`~control_plane.transports.nats_server.EmbeddedNats`
with its own directory ``<state>/nats/node-<i>/`` (config, TLS files, JetStream
store), its own ``server_name`` (``gridfort-nats-<i>``) and a ``cluster`` block:

* routes to every other node (``tls://host:port``), authenticated with mutual TLS
  from the deployment's CA and ``verify_and_map`` to the brokers' own SPIFFE ID
  (``spiffe://<domain>/control-plane/nats``): an edge or control-plane certificate
  from the same CA cannot join the cluster as a route;
* the cluster name ``gridfort``; JetStream in clustered mode (a Raft meta group
  across the nodes).

Start-up: route ports are chosen first (routes must know each other), every node
is started concurrently, then the cluster waits until JetStream has elected its
meta leader and creates the telemetry stream with 3 replicas (R3; on 5 or 7 nodes
JetStream places them): a message is acknowledged to the edge once 2 of 3 stored it,
so losing any one node loses no acknowledged message and the stream elects a new
leader within seconds. Clients get every node's URL and reconnect to a surviving
node on their own.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Callable, Iterable
from pathlib import Path

import nats
from nats.aio.client import Client as NatsClient

from control_plane.transports.nats_client import connect_control_plane
from control_plane.transports.nats_config import (
    DEFAULT_MAX_MSGS_PER_SITE,
    DEFAULT_PARTITIONS,
    DEFAULT_SYNC_INTERVAL,
    ClusterSettings,
)
from control_plane.transports.nats_server import (
    SERVER_WORKLOAD_NAME,
    EmbeddedNats,
    PermissionViolation,
    nats_dir,
)
from control_plane.transports.nats_stream import ensure_stream
from security.ca import CertificateAuthority
from security.clock import Clock
from security.identity import Role, SpiffeId
from security.refusals import GridfortError

log = logging.getLogger(__name__)

CLUSTER_NAME = "gridfort"
#: The telemetry stream (and its consumers) are stored on 3 nodes, whatever the size.
STREAM_REPLICAS = 3
#: Attempts at choosing free route ports (another process may take one in between).
_PORT_ATTEMPTS = 3


def free_ports(host: str, count: int) -> list[int]:
    """``count`` distinct TCP ports that are free on ``host`` right now."""
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
            s.bind((host, 0))
            sockets.append(s)
        return [int(s.getsockname()[1]) for s in sockets]
    finally:
        for s in sockets:
            s.close()


class EmbeddedNatsCluster:
    """``size`` :class:`EmbeddedNats` nodes forming one JetStream cluster on ``host``.

    The same interface as a single :class:`EmbeddedNats` where the control plane
    needs it (``urls``, ``connect_control_plane``, ``set_sites``, ``start``/``stop``,
    ``violations``). ``ports``: client ports per node (0 or empty: random).
    """

    def __init__(
        self,
        state_dir: Path,
        ca: CertificateAuthority,
        trust_domain: str,
        sites: Iterable[str],
        *,
        size: int = 3,
        host: str = "127.0.0.1",
        ports: Iterable[int] = (),
        control_planes: Iterable[str] = ("cp-1",),
        partitions: int = DEFAULT_PARTITIONS,
        max_msgs_per_site: int = DEFAULT_MAX_MSGS_PER_SITE,
        sync_interval: str = DEFAULT_SYNC_INTERVAL,
        start_timeout_s: float = 20.0,
        stop_grace_s: float = 5.0,
        clock: Clock | None = None,
        on_violation: Callable[[PermissionViolation], None] | None = None,
    ) -> None:
        if not 3 <= size <= 7 or size % 2 == 0:
            raise GridfortError("a NATS cluster needs an odd number of nodes, 3 to 7")
        self.size = size
        self.host = host
        self.trust_domain = trust_domain
        self._state_dir = Path(state_dir)
        self._ca = ca
        self._sites = frozenset(sites)
        self._control_planes = tuple(control_planes)
        self._ports = list(ports) or [0] * size
        if len(self._ports) != size:
            raise GridfortError(f"give one client port per node ({size}), or none")
        self.partitions = partitions
        self.max_msgs_per_site = max_msgs_per_site
        self.sync_interval = sync_interval
        self._start_timeout_s = start_timeout_s
        self._stop_grace_s = stop_grace_s
        self._clock = clock
        self._on_violation = on_violation
        self.nodes: list[EmbeddedNats] = []

    # -- addresses -------------------------------------------------------------------------------

    @property
    def urls(self) -> tuple[str, ...]:
        """Client URLs of the nodes that are running, node order."""
        return tuple(n.url for n in self.nodes if n.port)

    @property
    def url(self) -> str:
        urls = self.urls
        if not urls:
            raise GridfortError("the embedded NATS cluster is not running")
        return urls[0]

    @property
    def sites(self) -> frozenset[str]:
        return self._sites

    @property
    def violations(self) -> list[PermissionViolation]:
        return [v for n in self.nodes for v in n.violations]

    def node_dir(self, index: int) -> Path:
        return nats_dir(self._state_dir) / f"node-{index + 1}"

    # -- lifecycle -------------------------------------------------------------------------------

    async def start(self) -> None:
        """Start every node, wait for the JetStream meta leader, create the R3 stream."""
        if self.nodes:
            raise GridfortError("the embedded NATS cluster is already running")
        for attempt in range(1, _PORT_ATTEMPTS + 1):
            self.nodes = self._make_nodes(free_ports(self.host, self.size))
            try:
                await asyncio.gather(*(n.start() for n in self.nodes))
                break
            except GridfortError as e:
                await self.stop()
                if "already in use" not in str(e) or attempt == _PORT_ATTEMPTS:
                    raise
                log.warning("NATS cluster: a route port was taken meanwhile; choosing others")
        try:
            await self._create_stream()
        except BaseException:
            await self.stop()
            raise
        log.info("NATS cluster of %d nodes up: %s", self.size, ", ".join(self.urls))

    def _make_nodes(self, route_ports: list[int]) -> list[EmbeddedNats]:
        route_user = SpiffeId(self.trust_domain, Role.CONTROL_PLANE, SERVER_WORKLOAD_NAME).uri
        nodes = []
        for i in range(self.size):
            cluster = ClusterSettings(
                name=CLUSTER_NAME,
                host=self.host,
                port=route_ports[i],
                routes=tuple(f"tls://{self.host}:{p}" for j, p in enumerate(route_ports) if j != i),
                route_user=route_user,
            )
            nodes.append(
                EmbeddedNats(
                    self._state_dir,
                    self._ca,
                    self.trust_domain,
                    self._sites,
                    host=self.host,
                    port=self._ports[i],
                    control_planes=self._control_planes,
                    sync_interval=self.sync_interval,
                    start_timeout_s=self._start_timeout_s,
                    stop_grace_s=self._stop_grace_s,
                    clock=self._clock,
                    on_violation=self._on_violation,
                    directory=self.node_dir(i),
                    server_name=f"gridfort-nats-{i + 1}",
                    cluster=cluster,
                    create_stream=False,
                    partitions=self.partitions,
                    max_msgs_per_site=self.max_msgs_per_site,
                )
            )
        return nodes

    async def _create_stream(self) -> None:
        """Retry until JetStream has a meta leader (elected within seconds of the routes)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._start_timeout_s
        nc = await self.connect_control_plane(self._control_planes[0], allow_reconnect=True)
        try:
            config = self.nodes[0].stream_config(replicas=STREAM_REPLICAS)
            while True:
                try:
                    await ensure_stream(nc, config, timeout_s=2.0)
                    return
                except (nats.errors.Error, TimeoutError) as e:
                    if loop.time() > deadline:
                        raise GridfortError(
                            f"the NATS cluster did not accept the telemetry stream within "
                            f"{self._start_timeout_s:g} s: {e or type(e).__name__}"
                        ) from None
                    await asyncio.sleep(0.2)
        finally:
            await nc.close()

    async def stop(self) -> None:
        """Stop every node (SIGTERM, then SIGKILL after the grace). Idempotent."""
        nodes, self.nodes = self.nodes, []
        await asyncio.gather(*(n.stop() for n in nodes), return_exceptions=True)

    async def restart_node(self, index: int) -> None:
        """Start node ``index`` again (after a crash) on its previous client port."""
        node = self.nodes[index]
        port = node.port or self._ports[index]
        await node.stop()
        self._ports[index] = port
        replacement = self._make_nodes([n.cluster.port for n in self.nodes if n.cluster])[index]
        self.nodes[index] = replacement
        await replacement.start()

    async def __aenter__(self) -> EmbeddedNatsCluster:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- clients and config ----------------------------------------------------------------------

    async def connect_control_plane(self, name: str = "cp-1", **options: object) -> NatsClient:
        """A nats-py client as control plane ``name`` with every node's URL (see EmbeddedNats)."""
        if not self.nodes:
            raise GridfortError("the embedded NATS cluster is not running")
        spiffe_id = SpiffeId(self.trust_domain, Role.CONTROL_PLANE, name)
        return await connect_control_plane(
            self.urls, self.nodes[0].control_plane_tls(name), spiffe_id, **options
        )

    async def set_sites(self, sites: Iterable[str]) -> bool:
        """Give exactly ``sites`` an edge user on every running node (reloads them)."""
        new = frozenset(sites)
        if new == self._sites:
            return False
        self._sites = new
        results = await asyncio.gather(
            *(n.set_sites(new) for n in self.nodes if n.running), return_exceptions=True
        )
        errors = [r for r in results if isinstance(r, BaseException)]
        for e in errors:
            log.error("NATS cluster: reloading a node failed: %s", e)
        if errors and len(errors) == len(results):
            raise GridfortError(f"no NATS node accepted the new users list: {errors[0]}")
        return True

    @property
    def running(self) -> bool:
        return any(n.running for n in self.nodes)

    async def wait_stream_leader(self, timeout_s: float = 20.0, name: str = "cp-1") -> str:
        """The name of the node leading the telemetry stream (waits for an election)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        nc = await self.connect_control_plane(name, allow_reconnect=True)
        try:
            while True:
                with contextlib.suppress(nats.errors.Error, TimeoutError):
                    info = await nc.jetstream(timeout=1.0).stream_info(
                        self.nodes[0].stream_config().name or ""
                    )
                    if info.cluster is not None and info.cluster.leader:
                        return info.cluster.leader
                if loop.time() > deadline:
                    raise GridfortError("the telemetry stream has no leader")
                await asyncio.sleep(0.1)
        finally:
            await nc.close()

    def node_named(self, server_name: str) -> EmbeddedNats:
        for n in self.nodes:
            if n.server_name == server_name:
                return n
        raise KeyError(server_name)
