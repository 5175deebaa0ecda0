"""A 3-node NATS cluster on loopback with the telemetry stream at R3: kill a node while
sites stream, then count every (site, seq) end to end.

The default run SIGKILLs the stream leader (the hardest case: the stream has no
leader for a few seconds, publishes fail or are lost, later ones succeed) and a
follower. ``GRIDFORT_SOAK=1`` adds a longer run that kills every node in turn,
restarting each, while the sites keep streaming.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import closing
from pathlib import Path

import nats
import pytest

from control_plane.embedded import EmbeddedSystem
from control_plane.transports.nats_cluster import EmbeddedNatsCluster
from control_plane.transports.nats_config import STREAM_NAME
from control_plane.transports.nats_consumers import NatsIngestSettings
from control_plane.transports.nats_server import EmbeddedNats
from edge_node.app import EdgeNode
from security.identity import Role, SpiffeId
from tests.conftest import TRUST_DOMAIN
from tests.e2e.edge_harness import start_edge, wait_until

pytestmark = pytest.mark.timeout(180)
SITES = ("s1", "s2", "s3")


@pytest.fixture
async def cluster_system(tmp_path: Path) -> AsyncIterator[EmbeddedSystem]:
    system = EmbeddedSystem(
        tmp_path / "cp",
        trust_domain=TRUST_DOMAIN,
        durable_sync=False,
        nats_port=0,
        nats_cluster_size=3,
    )
    await system.start()
    try:
        yield system
    finally:
        await system.stop()


def cluster_of(system: EmbeddedSystem) -> EmbeddedNatsCluster:
    broker = system.control_plane.nats
    assert isinstance(broker, EmbeddedNatsCluster)
    return broker


async def start_sites(system: EmbeddedSystem, tmp_path: Path, modbus: int) -> list[EdgeNode]:
    urls = system.control_plane.nats_urls
    assert len(urls) == 3
    return [
        await start_edge(
            system,
            tmp_path,
            site,
            modbus,
            system.link_endpoints,
            transport="nats",
            nats_servers=urls,
            pv_only=True,
        )
        for site in SITES
    ]


def sigkill(node: EmbeddedNats) -> None:
    assert node.pid is not None
    os.kill(node.pid, signal.SIGKILL)


async def stream_messages(system: EmbeddedSystem) -> int:
    nc = await cluster_of(system).connect_control_plane(allow_reconnect=True)
    try:
        info = await nc.jetstream(timeout=2).stream_info(STREAM_NAME)
        return int(info.state.messages)
    finally:
        await nc.close()


async def stream_drains(system: EmbeddedSystem, timeout_s: float) -> int:
    """Messages left in the stream once it is empty or ``timeout_s`` has passed."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while (left := await stream_messages(system)) and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.5)
    return left


async def drain_all(system: EmbeddedSystem, nodes: list[EdgeNode], timeout_s: float) -> None:
    for node in nodes:
        await node.stop_sampling()
    await wait_until(
        lambda: all(n.outbox.stats().pending_batches == 0 for n in nodes), timeout_s=timeout_s
    )


def check_end_to_end(system: EmbeddedSystem, nodes: list[EdgeNode]) -> dict[str, int]:
    """Every sealed (site, seq) is in the store exactly once, with each of its measurements
    exactly once; nothing else is; no edge dead-lettered anything."""
    db = system.control_plane.paths.telemetry_db
    with closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
        batches = {
            (site, seq): n
            for site, seq, n in conn.execute("SELECT site_id, seq, n_committed FROM batches")
        }
        rows = Counter(
            {
                (site, seq): n
                for site, seq, n in conn.execute(
                    "SELECT site_id, seq, COUNT(*) FROM measurements GROUP BY site_id, seq"
                )
            }
        )
    sealed: set[tuple[str, int]] = set()
    measurements = 0
    for node in nodes:
        stats = node.outbox.stats()
        assert stats.dead_letter_batches == 0, node.config.site_id
        first = node.credentials.next_seq
        batches_sealed = node.sampler.stats.batches_sealed
        sealed |= {(node.config.site_id, first + i) for i in range(batches_sealed)}
        measurements += stats.sealed_measurements
    assert set(batches) == sealed  # nothing lost, nothing extra
    assert all(rows[key] == n for key, n in batches.items())  # each measurement once
    assert sum(rows.values()) == measurements
    return {"batches": len(batches), "measurements": measurements}


async def killed_mid_stream(
    system: EmbeddedSystem, tmp_path: Path, modbus: int, victim: str
) -> dict[str, int]:
    cluster = cluster_of(system)
    cp = system.control_plane
    nodes = await start_sites(system, tmp_path, modbus)
    try:
        await wait_until(lambda: cp.store.counts(list(SITES)).batches >= 30)
        leader = await cluster.wait_stream_leader()
        target = (
            cluster.node_named(leader)
            if victim == "leader"
            else next(n for n in cluster.nodes if n.server_name != leader)
        )
        before = cp.store.counts(list(SITES)).batches
        sigkill(target)
        # the sites keep sampling through the fail-over, and the store keeps growing
        await wait_until(lambda: cp.store.counts(list(SITES)).batches >= before + 60, 40.0)
        await drain_all(system, nodes, timeout_s=60.0)
        await wait_until(lambda: not target.running, 5.0)
        result = check_end_to_end(system, nodes)
        # Every message is acknowledged after commit. An ack is fire-and-forget: one sent
        # while the stream had no leader is lost, and that message comes back after
        # ack_wait_s, is answered DUPLICATE by the pipeline and acknowledged again.
        assert await stream_drains(system, timeout_s=3 * NatsIngestSettings().ack_wait_s) == 0
        failures = sum(n.nats_uplink.publish_failures for n in nodes if n.nats_uplink)
        ingest = system.control_plane.nats_ingest
        assert ingest is not None
        assert ingest.stats.gaps_skipped == 0  # every gap was filled, none given up
        return {
            **result,
            "publish_failures": failures,
            "gaps_waited": ingest.stats.gaps_waited,
            "pull_statuses": sum(ingest.stats.statuses.values()),
        }
    finally:
        for node in nodes:
            await node.stop()


@pytest.mark.parametrize("victim", ["leader", "follower"])
async def test_killing_a_node_mid_stream_loses_and_duplicates_nothing(
    cluster_system: EmbeddedSystem, modbus: int, tmp_path: Path, victim: str
) -> None:
    result = await killed_mid_stream(cluster_system, tmp_path, modbus, victim)
    print(f"\nkill {victim}: {result}")
    assert result["batches"] >= 90


async def test_routes_refuse_a_certificate_that_is_not_the_brokers(
    cluster_system: EmbeddedSystem, tmp_path: Path
) -> None:
    """An edge's valid certificate from the same CA must not join the cluster as a route."""
    cluster = cluster_of(cluster_system)
    node = cluster.nodes[0]
    assert node.cluster is not None
    edge = SpiffeId(TRUST_DOMAIN, Role.EDGE, "intruder")
    key_pem, chain_pem = node.issue_client_identity(edge)
    tls = node.client_tls(chain_pem, key_pem)
    tls.check_hostname = False
    reader, writer = await asyncio.open_connection(
        node.cluster.host, node.cluster.port, ssl=tls, server_hostname="localhost"
    )
    try:
        writer.write(b'CONNECT {"verbose":false,"pedantic":false,"name":"intruder"}\r\nPING\r\n')
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(4096), 5)
    except (ConnectionError, OSError):
        answer = b""
    finally:
        writer.close()
    assert b"PONG" not in answer  # refused: no route session
    # the cluster is unharmed and still routes
    nc = await cluster.connect_control_plane()
    try:
        assert (await nc.jetstream().stream_info(STREAM_NAME)).config.num_replicas == 3
    finally:
        await nc.close()


async def test_cluster_state_is_one_directory_per_node(cluster_system: EmbeddedSystem) -> None:
    cluster = cluster_of(cluster_system)
    for i, node in enumerate(cluster.nodes, start=1):
        assert node.dir == cluster.node_dir(i - 1)
        assert (node.dir / "jetstream").is_dir() and (node.dir / "nats.conf").is_file()
        assert node.server_name == f"gridfort-nats-{i}"
    nc = await nats.connect(  # a control plane reaches every node
        list(cluster.urls),
        tls=cluster.nodes[0].control_plane_tls(),
        inbox_prefix="_INBOX.cp.cp-1",
        allow_reconnect=False,
    )
    await nc.close()


@pytest.mark.soak
@pytest.mark.timeout(600)
@pytest.mark.skipif(not os.environ.get("GRIDFORT_SOAK"), reason="long soak: set GRIDFORT_SOAK=1")
async def test_soak_killing_and_restarting_every_node_in_turn(
    cluster_system: EmbeddedSystem, modbus: int, tmp_path: Path
) -> None:
    """Six SIGKILLs (the stream leader, then a follower, alternately), each node restarted
    from its own store while the sites keep streaming; then count everything."""
    system = cluster_system
    cluster = cluster_of(system)
    cp = system.control_plane
    nodes = await start_sites(system, tmp_path, modbus)
    try:
        for round_ in range(6):
            await wait_until(committed_at_least(system, 30 * (round_ + 1)))
            leader = await cluster.wait_stream_leader()
            victim = next(
                n
                for n in cluster.nodes
                if (n.server_name == leader) == (round_ % 2 == 0) and n.running
            )
            index = cluster.nodes.index(victim)
            target = cp.store.counts(list(SITES)).batches + 40
            sigkill(victim)
            await wait_until(committed_at_least(system, target), 60.0)
            await cluster.restart_node(index)
            print(f"round {round_}: killed {victim.server_name} (leader {leader}), restarted")
        await drain_all(system, nodes, timeout_s=90.0)
        result = check_end_to_end(system, nodes)
        await wait_until_empty(system)
        print(f"\nsoak: {result}")
    finally:
        for node in nodes:
            await node.stop()


def committed_at_least(system: EmbeddedSystem, batches: int) -> Callable[[], bool]:
    cp = system.control_plane
    return lambda: cp.store.counts(list(SITES)).batches >= batches


async def wait_until_empty(system: EmbeddedSystem, timeout_s: float = 30.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while await stream_messages(system) != 0:
        if loop.time() > deadline:
            raise AssertionError("messages left in the stream")
        await asyncio.sleep(0.2)


def test_demo_cluster_option_is_validated() -> None:
    from control_plane.demo import DemoOptions
    from security.refusals import GridfortError

    assert DemoOptions(transport="nats", nats_cluster=3).nats_cluster == 3
    with pytest.raises(GridfortError, match="needs --transport nats or both"):
        DemoOptions(transport="grpc", nats_cluster=3)
    with pytest.raises(GridfortError, match="1, 3, 5 or 7"):
        DemoOptions(transport="nats", nats_cluster=2)
