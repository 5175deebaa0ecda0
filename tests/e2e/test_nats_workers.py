"""Ingest workers: ``gridfort control-plane ingest-worker`` processes share the partitioned
consumers of the telemetry stream; killing one (SIGKILL) loses nothing.

The workers are real OS processes started from the CLI, against the control plane's
state directory and its embedded broker; the control plane itself does not consume
(``nats_consume=False``), so every committed batch went through a worker.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from nats.aio.msg import Msg

from control_plane.config import ControlPlaneConfig
from control_plane.embedded import EmbeddedSystem
from control_plane.forecast.history import ACTIVE_POWER
from control_plane.transports.nats_config import STREAM_NAME, WORKERS_PREFIX, partition_consumer
from control_plane.transports.nats_server import die_with_parent
from control_plane.transports.nats_worker import IngestWorker
from edge_node.app import EdgeNode
from security.refusals import ConfigError
from tests.conftest import TRUST_DOMAIN
from tests.e2e.edge_harness import start_edge, wait_until
from tests.e2e.test_nats_cluster import check_end_to_end, drain_all

pytestmark = pytest.mark.timeout(180)
SITES = ("s1", "s2", "s3", "s4")


@pytest.fixture
async def workers_system(tmp_path: Path) -> AsyncIterator[EmbeddedSystem]:
    system = EmbeddedSystem(
        tmp_path / "cp",
        trust_domain=TRUST_DOMAIN,
        durable_sync=False,
        nats_port=0,
        nats_consume=False,  # only the ingest workers consume
    )
    await system.start()
    try:
        yield system
    finally:
        await system.stop()


class Worker:
    """A ``gridfort control-plane ingest-worker`` child process."""

    def __init__(self, proc: asyncio.subprocess.Process, worker_id: str) -> None:
        self.proc = proc
        self.worker_id = worker_id

    @classmethod
    async def spawn(cls, state_dir: Path, worker_id: str, log_dir: Path) -> Worker:
        log = (log_dir / f"{worker_id}.log").open("wb")
        proc = await asyncio.create_subprocess_exec(
            *die_with_parent([sys.executable]),
            "-m",
            "control_plane.cli.main",
            "control-plane",
            "ingest-worker",
            "--state-dir",
            str(state_dir),
            "--trust-domain",
            TRUST_DOMAIN,
            "--worker-id",
            worker_id,
            stdout=asyncio.subprocess.PIPE,
            stderr=log,
        )
        log.close()
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 60)
        assert line.startswith(f"ingest worker {worker_id}: 8 partitions".encode()), line
        return cls(proc, worker_id)

    async def kill(self, sig: int) -> int:
        if self.proc.returncode is None:
            os.kill(self.proc.pid, sig)
        return await asyncio.wait_for(self.proc.wait(), 30)


class Heartbeats:
    """The latest heartbeat of every worker, as the control plane sees them."""

    def __init__(self) -> None:
        self.latest: dict[str, dict[str, object]] = {}

    async def on_beat(self, msg: Msg) -> None:
        beat = json.loads(msg.data)
        if not beat.get("leaving"):
            self.latest[beat["worker"]] = beat

    def owned(self, worker_id: str) -> set[int]:
        raw = self.latest.get(worker_id, {}).get("owned", [])
        assert isinstance(raw, list)
        return set(raw)


async def start_sites(system: EmbeddedSystem, tmp_path: Path, modbus: int) -> list[EdgeNode]:
    urls = system.control_plane.nats_urls
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


async def test_workers_share_partitions_and_a_killed_worker_loses_nothing(
    workers_system: EmbeddedSystem, modbus: int, tmp_path: Path
) -> None:
    system = workers_system
    cp = system.control_plane
    assert cp.nats is not None
    observer = await cp.nats.connect_control_plane(allow_reconnect=True)
    beats = Heartbeats()
    await observer.subscribe(f"{WORKERS_PREFIX}.*", cb=beats.on_beat)
    nodes = await start_sites(system, tmp_path, modbus)
    a = await Worker.spawn(system.state_dir, "worker-a", tmp_path)
    b = await Worker.spawn(system.state_dir, "worker-b", tmp_path)
    try:
        # two workers: each consumes some partitions, together all of them, none twice
        await wait_until(
            lambda: (
                beats.owned("worker-a") | beats.owned("worker-b") == set(range(8))
                and not beats.owned("worker-a") & beats.owned("worker-b")
                and bool(beats.owned("worker-a"))
            ),
            timeout_s=20.0,
        )
        await wait_until(lambda: cp.store.counts(list(SITES)).batches >= 40, 30.0)
        # Freeze a first: its open pull requests keep receiving messages it never acks,
        # then kill it. Those come back to b after ack_wait, later than newer batches of
        # the same sites that b fetched meanwhile: b must hold those until then.
        os.kill(a.proc.pid, signal.SIGSTOP)
        await asyncio.sleep(1.5)
        assert await a.kill(signal.SIGKILL) == -signal.SIGKILL
        before = cp.store.counts(list(SITES)).batches
        # b takes over every partition once a's heartbeats stop (member_ttl_s)
        await wait_until(lambda: beats.owned("worker-b") == set(range(8)), 20.0)
        await wait_until(lambda: cp.store.counts(list(SITES)).batches >= before + 60, 40.0)
        await drain_all(system, nodes, timeout_s=60.0)
        result = check_end_to_end(system, nodes)  # nothing lost, nothing twice, in order
        js = observer.jetstream(timeout=2)
        await wait_until_async(
            lambda: stream_empty(js), timeout_s=20.0
        )  # every message acknowledged after its commit
        deliveries = 0  # every delivery of every message, first or again
        for p in range(8):
            info = await js.consumer_info(STREAM_NAME, partition_consumer(p))
            assert info.delivered is not None and info.delivered.consumer_seq is not None
            deliveries += info.delivered.consumer_seq
        stored = (await js.stream_info(STREAM_NAME)).state.last_seq
        redelivered = deliveries - stored
        beat_b = beats.latest["worker-b"]
        assert beat_b["gaps_skipped"] == 0  # every held batch waited for its predecessor
        assert redelivered > 0  # a's unacknowledged messages came back
        print(f"\nworkers: {result}, redelivered {redelivered}, worker-b {beat_b}")
        assert await b.kill(signal.SIGTERM) == 0  # graceful stop
    finally:
        for node in nodes:
            await node.stop()
        for w in (a, b):
            if w.proc.returncode is None:
                await w.kill(signal.SIGKILL)
        await observer.close()


async def test_sites_a_worker_ingests_reach_the_control_planes_fleet_state(
    workers_system: EmbeddedSystem, modbus: int, tmp_path: Path
) -> None:
    """The control plane consumes nothing (``nats_consume=False``): every batch is gated and
    committed by the worker process, and the control plane's fleet state (what planning,
    the market gateway and plan-vs-actual read) follows the shared store. After a restart
    it holds the latest values again at once (the follower's replay)."""
    system = workers_system
    cp = system.control_plane
    assert cp.follower is not None and cp.pipeline.commit_ledger is not None
    nodes = await start_sites(system, tmp_path, modbus)
    worker = await Worker.spawn(system.state_dir, "worker-f", tmp_path)
    pv = [f"{site}-pv" for site in SITES]
    try:
        await wait_until(
            lambda: all(cp.pipeline.state.get(a, ACTIVE_POWER) is not None for a in pv), 60.0
        )
        assert cp.pipeline.stats.batches_committed == 0  # all of it came from the worker
        assert cp.api is not None  # operators see the follower's progress in /v1/status
        nats = cp.api.operations.status(0)["transports"]["nats"]
        assert nats["follower"]["measurements_applied"] >= len(pv)
        assert nats["follower"]["read_errors"] == 0 and nats["follower"]["started"] is True
        seen = {a: cp.pipeline.state.get(a, ACTIVE_POWER) for a in pv}
        restarted = await system.restart()  # a new, empty fleet state, filled by the replay
        for a in pv:
            now, before = restarted.pipeline.state.get(a, ACTIVE_POWER), seen[a]
            assert now is not None and before is not None and now.ts_ms >= before.ts_ms
    finally:
        for node in nodes:
            await node.stop()
        if worker.proc.returncode is None:
            await worker.kill(signal.SIGKILL)


async def stream_empty(js: object) -> bool:
    info = await js.stream_info(STREAM_NAME)  # type: ignore[attr-defined]
    return int(info.state.messages) == 0


async def wait_until_async(predicate: object, timeout_s: float) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not await predicate():  # type: ignore[operator]
        if loop.time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.2)


def test_a_worker_needs_the_control_planes_signing_key(tmp_path: Path) -> None:
    config = ControlPlaneConfig(state_dir=tmp_path / "empty", trust_domain=TRUST_DOMAIN)
    with pytest.raises(ConfigError, match="start the control plane once"):
        IngestWorker(config, nats_urls=("tls://127.0.0.1:4222",))


def _commit_all(db: str, n: int, out: Any, go_signal: Any) -> None:
    """One worker-like process: commit the same n batches as the other, in its own order."""
    import asyncio as aio

    from control_plane.store.telemetry_store import CommitOutcome, CommitRequest, TelemetryStore
    from security.clock import SystemClock

    async def go() -> list[str]:
        store = TelemetryStore(Path(db), SystemClock(), synchronous="FULL", max_group=16)
        out.send("ready")
        go_signal.wait(30)  # both processes write at the same time
        try:
            requests = [
                CommitRequest("s1", seq, b"d%d" % seq, "k", 0, 0, 0, [("a", 1, seq, 1.0)] * 10, [])
                for seq in range(1, n + 1)
            ]
            outcomes = await aio.gather(*(store.commit(r) for r in requests))
            return [o.value for o in outcomes if isinstance(o, CommitOutcome)]
        finally:
            store.close()

    out.send(aio.run(go()))


def test_two_processes_committing_the_same_batches_store_each_exactly_once(
    tmp_path: Path,
) -> None:
    """What several ingest workers rely on: SQLite WAL, one writer at a time across
    processes (BEGIN IMMEDIATE + busy timeout), idempotent on (site, seq)."""
    import multiprocessing
    import sqlite3

    db = tmp_path / "telemetry.db"
    ctx = multiprocessing.get_context("spawn")
    pipes = [ctx.Pipe() for _ in range(2)]
    go_signal = ctx.Event()
    procs = [
        ctx.Process(target=_commit_all, args=(str(db), 300, child, go_signal)) for _, child in pipes
    ]
    for p in procs:
        p.start()

    def receive(parent: Any) -> Any:  # a crashed child must fail the test, not hang it
        assert parent.poll(60), "a committing process died or hung (see its stderr)"
        return parent.recv()

    assert [receive(parent) for parent, _ in pipes] == ["ready", "ready"]
    go_signal.set()
    results = [receive(parent) for parent, _ in pipes]
    for p in procs:
        p.join(30)
    assert all(len(r) == 300 for r in results)
    for seq in range(300):  # each batch committed by exactly one process, a duplicate for the other
        assert sorted(r[seq] for r in results) == ["committed", "duplicate"]
    # (Often one process wins every group: SQLite's busy handler polls with sleeps, so the
    # writer that just committed usually takes the lock again first. Fair it is not.)
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT COUNT(*) FROM batches").fetchone()[0] == 300
        assert conn.execute("SELECT COUNT(*) FROM measurements").fetchone()[0] == 3000
