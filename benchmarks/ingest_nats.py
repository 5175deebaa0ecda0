"""``gridfort bench ingest --transport nats --workers 1,2``: the NATS path, measured honestly.

What runs: a real control plane (``EmbeddedSystem``) with its embedded nats-server
(JetStream, file store, mutual TLS with ``verify_and_map``, the partitioned telemetry
stream); the control plane itself does not consume (``nats_consume=False``). For
each worker count W, W real ``gridfort control-plane ingest-worker`` processes share
the partitions. K enrolled edges (``ingest_nats_load``, separate generator process)
publish signed batches with JetStream publish acks and wait for the signed receipts.

Phases (ids as in the JSON), for each W in ``--workers``:

* ``full W``: saturation, closed loop (each edge keeps ``--window`` batches awaiting
  receipts); measurements/s = measurements in COMMITTED receipts that arrived in the
  window; every stage on (verify, replay guard, authorize, validate, durable commit
  to SQLite with ``synchronous=FULL`` by default, signed receipt over NATS);
* ``raw W``: the same envelopes, window and sizes, W raw consumer processes that only
  acknowledge (``ingest_nats_raw``): JetStream publish + store + pull + ack over mutual
  TLS, nothing else. The ratio full/raw uses it as the denominator;

and once, with the largest W: ``latency``: open loop at ``--latency-load`` x the
full-pipeline saturation rate; sample-to-receipt latency p50/p95/p99.

Every full phase is checked like the gRPC benchmark (one COMMITTED receipt per batch,
store counts and stored sequences exact) and the stream must be empty afterwards
(every message acknowledged after its commit). CPU per process kind comes from
``/proc`` (Linux): workers, nats-server, generator, this process, and the rest.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.child_pool import ChildPool
from benchmarks.ingest import (
    TRUST_DOMAIN,
    LoadPool,
    _machine_busy_s,
    advance_sites,
    check_load_params,
    enroll_sites,
    integrity_ok,
    load_args,
    load_specs,
    record,
    result_head,
    run_phases,
    window_stats,
    write_result,
)
from benchmarks.ingest_integrity import check_phase, store_snapshot
from benchmarks.ingest_load import LoadReport, LoadSpec, SiteSpec
from benchmarks.ingest_nats_raw import RawReport, RawSpec, raw_main
from benchmarks.ingest_report import print_nats_report
from control_plane.embedded import EmbeddedSystem
from control_plane.transports.nats_config import STREAM_NAME, WORKERS_PREFIX
from control_plane.transports.nats_partitions import assign_partitions
from control_plane.transports.nats_server import die_with_parent

log = logging.getLogger(__name__)

#: The issue's target: 15 billion data points a day, every stage on, on 2 cores.
TARGET_THROUGHPUT_MPS = 174_000


@dataclass(frozen=True)
class NatsBenchParams:
    sites: int = 32
    batch_size: int = 250
    seconds: float = 5.0
    warmup_s: float = 1.0
    window: int = 16
    load_procs: int = 1
    workers: tuple[int, ...] = (1, 2)
    durability: str = "fsync"  # fsync | normal
    latency_load: float = 0.5
    verify_every: int = 1
    partitions: int = 8
    state_dir: Path | None = None

    def __post_init__(self) -> None:
        check_load_params(self)
        if not self.workers or any(not 1 <= w <= 16 for w in self.workers):
            raise ValueError("workers: a list of worker counts between 1 and 16, e.g. 1,2")
        if self.durability not in ("fsync", "normal"):
            raise ValueError("durability must be fsync or normal for the NATS benchmark")
        if not 0 < self.latency_load <= 1:
            raise ValueError("latency_load must be in (0, 1]")


@dataclass
class NatsPhase:
    phase: str
    name: str
    kind: str  # full | raw
    workers: int  # ingest workers (full) or raw consumers (raw)
    mode: str  # saturation | rate
    offered_batches_per_s: float | None
    throughput_mps: float = 0.0
    batches_per_s: float = 0.0
    sent_batches_per_s: float = 0.0
    latency_ms: dict[str, float] = field(default_factory=dict)
    max_schedule_lag_ms: float = 0.0
    batches_sent: int = 0
    batches_done: int = 0  # COMMITTED receipts (full) or consumed messages (raw)
    receipts_verified: int = 0
    cpu_cores: dict[str, float | None] = field(default_factory=dict)
    worker_cpu_us_per_measurement: float | None = None
    integrity: dict[str, Any] = field(default_factory=dict)


# -- CPU of other processes (Linux /proc) --------------------------------------------------------
def _proc_cpu_s(pid: int) -> float:
    """User + system CPU time [s] of process ``pid`` so far (0 if unknown)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _pids_cpu(
    groups: Mapping[str, Sequence[int]], t_begin: float, t_end: float
) -> dict[str, float]:
    """CPU [s] of each group of pids, and of the whole machine, between two perf_counter times."""
    await asyncio.sleep(max(0.0, t_begin - time.perf_counter()))
    before = {k: sum(_proc_cpu_s(p) for p in pids) for k, pids in groups.items()}
    machine0 = _machine_busy_s()
    await asyncio.sleep(max(0.0, t_end - time.perf_counter()))
    out = {k: sum(_proc_cpu_s(p) for p in pids) - before[k] for k, pids in groups.items()}
    out["machine"] = _machine_busy_s() - machine0 if machine0 >= 0 else -1.0
    return out


# -- worker and raw-consumer processes -----------------------------------------------------------
class WorkerProcess:
    """One ``gridfort control-plane ingest-worker`` child (the product's own CLI)."""

    def __init__(self, proc: asyncio.subprocess.Process, worker_id: str) -> None:
        self.proc = proc
        self.worker_id = worker_id

    @classmethod
    async def spawn(cls, config_file: Path, worker_id: str, log_dir: Path) -> WorkerProcess:
        with (log_dir / f"{worker_id}.log").open("wb") as log:
            proc = await asyncio.create_subprocess_exec(
                *die_with_parent([sys.executable]),
                "-m",
                "control_plane.cli.main",
                "control-plane",
                "ingest-worker",
                "--config",
                str(config_file),
                "--worker-id",
                worker_id,
                stdout=asyncio.subprocess.PIPE,
                stderr=log,
            )
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 60)
        if not line.startswith(b"ingest worker"):
            if proc.returncode is None:
                proc.kill()
            await proc.wait()
            tail = (log_dir / f"{worker_id}.log").read_text(errors="replace")[-2000:]
            raise RuntimeError(f"ingest worker {worker_id} did not start:\n{tail}")
        return cls(proc, worker_id)

    async def stop(self) -> None:
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.proc.wait(), 20)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()


class RawPool(ChildPool):
    """Raw consumer processes (spawned), one phase at a time."""

    what = "raw consumer"

    def __init__(self, procs: int) -> None:
        super().__init__(procs, raw_main, "bench-raw")

    async def prepare(self, specs: list[RawSpec]) -> None:
        await self.hand_out(self._conns, specs)

    def start(self, start_wall: float) -> None:
        self.start_at(self._conns, start_wall)

    async def stop(self) -> list[RawReport]:
        """Stop consuming; one report per consumer."""
        for conn in self._conns:
            conn.send("stop")
        reports: list[RawReport] = await self.collect(self._conns)
        return reports


# -- the control plane under test ----------------------------------------------------------------
@dataclass
class NatsTarget:
    system: EmbeddedSystem
    sites: list[SiteSpec]
    config_file: Path
    beats: dict[str, list[int]]
    observer: Any


@asynccontextmanager
async def nats_control_plane(root: Path, params: NatsBenchParams) -> AsyncIterator[NatsTarget]:
    state = root / "nats"
    system = EmbeddedSystem(
        state / "cp",
        trust_domain=TRUST_DOMAIN,
        durable_sync=params.durability == "fsync",
        nats_port=0,
        nats_partitions=params.partitions,
        nats_consume=False,
    )
    await system.start()
    observer = None
    try:
        sites = await enroll_sites(system, params, state / "edges")
        await system.control_plane.sync_transports()  # the broker's users list
        config_file = state / "worker.toml"
        config_file.write_text(
            "[control_plane]\n"
            f'state_dir = "{system.state_dir}"\n'
            f'trust_domain = "{TRUST_DOMAIN}"\n'
            f"durable_sync = {'true' if params.durability == 'fsync' else 'false'}\n"
        )
        broker = system.control_plane.nats
        assert broker is not None
        observer = await broker.connect_control_plane(allow_reconnect=True)
        beats: dict[str, list[int]] = {}

        async def on_beat(msg: Any) -> None:
            beat = json.loads(msg.data)
            if beat.get("leaving"):
                beats.pop(beat["worker"], None)
            else:
                beats[beat["worker"]] = list(beat.get("owned", []))

        await observer.subscribe(f"{WORKERS_PREFIX}.*", cb=on_beat)
        yield NatsTarget(system, sites, config_file, beats, observer)
    finally:
        if observer is not None:
            await observer.close()
        await system.stop()


async def _until(predicate: Any, timeout_s: float, what: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not await predicate():
        if loop.time() > deadline:
            raise RuntimeError(f"benchmark: {what} not reached within {timeout_s:g} s")
        await asyncio.sleep(0.1)


async def _stream_messages(target: NatsTarget) -> int:
    info = await target.observer.jetstream(timeout=5).stream_info(STREAM_NAME)
    return int(info.state.messages)


async def start_workers(target: NatsTarget, n: int, log_dir: Path) -> list[WorkerProcess]:
    workers = [
        await WorkerProcess.spawn(target.config_file, f"bench-w{i + 1}", log_dir) for i in range(n)
    ]
    ids = {w.worker_id for w in workers}
    want = assign_partitions(target_partitions(target), ids)

    async def balanced() -> bool:
        return all(set(target.beats.get(w, [])) == set(want[w]) for w in ids)

    await _until(balanced, 30.0, f"{n} workers sharing the partitions")
    return workers


def target_partitions(target: NatsTarget) -> int:
    return target.system.control_plane.config.nats_partitions


# -- phases --------------------------------------------------------------------------------------
def _specs(
    target: NatsTarget, pool: LoadPool, params: NatsBenchParams, rate: float | None, raw: bool
) -> list[LoadSpec]:
    urls = target.system.control_plane.nats_urls
    return load_specs(
        target.sites, pool.size, params, rate, transport="nats", nats_servers=urls, raw=raw
    )


def _cores(cpu: dict[str, float], window_s: float, generator_s: float) -> dict[str, float | None]:
    cores: dict[str, float | None] = {k: round(v / window_s, 2) for k, v in cpu.items()}
    cores["generator"] = round(generator_s / window_s, 2)
    machine = cpu["machine"]
    known = sum(v for k, v in cpu.items() if k != "machine") + generator_s
    cores["other"] = None if machine < 0 else round(max(0.0, machine - known) / window_s, 2)
    del cores["machine"]
    return cores


async def full_phase(
    target: NatsTarget,
    pool: LoadPool,
    params: NatsBenchParams,
    workers: list[WorkerProcess],
    phase_id: str,
    rate: float | None,
) -> NatsPhase:
    w = len(workers)
    name = (
        f"{phase_id} full pipeline, {w} worker(s), saturation"
        if rate is None
        else f"{phase_id} full pipeline, {w} worker(s), {params.latency_load:.0%} of saturation"
    )
    cp, site_ids = target.system.control_plane, [s.site_id for s in target.sites]
    broker = cp.nats
    assert broker is not None
    before = store_snapshot(cp, site_ids)
    specs = _specs(target, pool, params, rate, raw=False)
    conns = await pool.prepare(specs)
    start_wall = time.time() + 0.2
    t_begin = time.perf_counter() + 0.2 + params.warmup_s
    groups = {
        "workers": [wp.proc.pid for wp in workers],
        "nats_server": _broker_pids(broker),
        "control_plane": [os.getpid()],
    }
    cpu_task = asyncio.ensure_future(_pids_cpu(groups, t_begin, t_begin + params.seconds))
    pool.start(conns, start_wall)
    reports = await pool.results(conns)
    cpu = await cpu_task
    problems: list[str] = []
    try:
        await _until(lambda: _empty(target), 15.0, "an empty stream after the phase")
    except RuntimeError as e:
        problems.append(str(e))
    integrity = check_phase(
        cp,
        before,
        store_snapshot(cp, site_ids),
        reports,
        params.batch_size,
        pipeline_counters=False,
    )
    integrity["problems"] += problems
    integrity["ok"] = not integrity["problems"]
    target.sites = advance_sites(target.sites, reports)
    return _phase_from(phase_id, name, "full", w, rate, reports, cpu, params, integrity)


async def raw_phase(
    target: NatsTarget, pool: LoadPool, params: NatsBenchParams, consumers: int, phase_id: str
) -> NatsPhase:
    cp = target.system.control_plane
    broker = cp.nats
    assert broker is not None
    parts = params.partitions
    raw = RawPool(consumers)
    try:
        await raw.prepare(
            [
                RawSpec(
                    urls=cp.nats_urls,
                    state_dir=target.system.state_dir,
                    name=cp.config.name,
                    partitions=tuple(range(i, parts, consumers)),
                    warmup_s=params.warmup_s,
                    seconds=params.seconds,
                )
                for i in range(consumers)
            ]
        )
        log.debug("raw phase: %d consumers ready", consumers)
        specs = _specs(target, pool, params, None, raw=True)
        conns = await pool.prepare(specs)
        start_wall = time.time() + 0.2
        t_begin = time.perf_counter() + 0.2 + params.warmup_s
        groups = {
            "raw_consumers": raw.pids,
            "nats_server": _broker_pids(broker),
            "control_plane": [os.getpid()],
        }
        cpu_task = asyncio.ensure_future(_pids_cpu(groups, t_begin, t_begin + params.seconds))
        raw.start(start_wall)
        pool.start(conns, start_wall)
        reports = await pool.results(conns)
        cpu = await cpu_task
        log.debug("raw phase: load done")
        problems = []
        try:
            await _until(lambda: _empty(target), 30.0, "an empty stream after the raw phase")
        except RuntimeError as e:
            problems.append(str(e))
        raw_reports = await raw.stop()
    finally:
        raw.close()
    sent = sum(s.sent for r in reports for s in r.sites)
    published = sum(s.committed for r in reports for s in r.sites)
    consumed = sum(r.acked for r in raw_reports)
    problems += [f"{s.site_id}: {p}" for r in reports for s in r.sites for p in s.problems[:3]]
    if published != sent:
        problems.append(f"{published} raw receipts for {sent} batches sent")
    if consumed < published:
        problems.append(f"{consumed} consumed for {published} raw receipts")
    window_s = params.seconds
    window_consumed = sum(r.window_acked for r in raw_reports)
    phase = _phase_from(
        phase_id,
        f"{phase_id} raw NATS, {consumers} consumer(s), saturation",
        "raw",
        consumers,
        None,
        reports,
        cpu,
        params,
        {
            "ok": not problems,
            "batches_sent": sent,
            "published": published,
            "consumed": consumed,
            "problems": problems,
        },
    )
    phase.integrity["consumed_in_window"] = window_consumed
    phase.cpu_cores = _cores(cpu, window_s, sum(r.cpu_s for r in reports))
    phase.cpu_cores["raw_consumers"] = round(sum(r.cpu_s for r in raw_reports) / window_s, 2)
    return phase


def _broker_pids(broker: Any) -> list[int]:
    nodes = getattr(broker, "nodes", None) or [broker]
    return [n.pid for n in nodes if n.pid is not None]


async def _empty(target: NatsTarget) -> bool:
    return await _stream_messages(target) == 0


def _phase_from(
    phase_id: str,
    name: str,
    kind: str,
    workers: int,
    rate: float | None,
    reports: list[LoadReport],
    cpu: dict[str, float],
    params: NatsBenchParams,
    integrity: dict[str, Any],
) -> NatsPhase:
    window_s = max(r.window_s for r in reports)
    measurements = sum(r.window_measurements for r in reports)
    generator_s = sum(r.cpu_s for r in reports)
    worker_s = cpu.get("workers")
    return NatsPhase(
        phase=phase_id,
        name=name,
        kind=kind,
        workers=workers,
        **window_stats(reports, rate),
        batches_sent=sum(s.sent for r in reports for s in r.sites),
        batches_done=sum(s.committed for r in reports for s in r.sites),
        receipts_verified=sum(r.receipts_verified for r in reports),
        cpu_cores=_cores(cpu, window_s, generator_s),
        worker_cpu_us_per_measurement=(
            None if not worker_s else round(worker_s * 1e6 / max(1, measurements), 2)
        ),
        integrity=integrity,
    )


def _record(phases: list[NatsPhase], phase: NatsPhase) -> NatsPhase:
    """Log the phase's throughput, then :func:`benchmarks.ingest.record` it."""
    log.info("%s: %.0f measurements/s", phase.name, phase.throughput_mps)
    return record(phases, phase)


async def _run_all(
    params: NatsBenchParams, root: Path, pool: LoadPool, phases: list[NatsPhase]
) -> None:
    async with nats_control_plane(root, params) as target:
        n = 0
        top = max(params.workers)
        for w in params.workers:
            workers = await start_workers(target, w, root)
            try:
                n += 1
                sat = _record(phases, await full_phase(target, pool, params, workers, str(n), None))
                if w == top:
                    n += 1
                    rate = params.latency_load * sat.batches_per_s
                    _record(phases, await full_phase(target, pool, params, workers, str(n), rate))
            finally:
                for wp in workers:
                    await wp.stop()
            n += 1
            _record(phases, await raw_phase(target, pool, params, w, str(n)))


def _summarize(
    params: NatsBenchParams, phases: list[NatsPhase], error: str, machine: dict[str, Any]
) -> dict[str, Any]:
    full = {p.workers: p for p in phases if p.kind == "full" and p.mode == "saturation"}
    raw = {p.workers: p for p in phases if p.kind == "raw"}
    latency = next((p for p in phases if p.mode == "rate"), None)
    ok = integrity_ok(phases, error)
    by_workers = {
        str(w): {
            "full_mps": round(p.throughput_mps),
            "raw_nats_mps": round(raw[w].throughput_mps) if w in raw else None,
            "ratio_full_over_raw": (
                round(p.throughput_mps / raw[w].throughput_mps, 3)
                if w in raw and raw[w].throughput_mps
                else None
            ),
            "saturation_p50_p99_ms": [p.latency_ms.get("p50"), p.latency_ms.get("p99")],
        }
        for w, p in sorted(full.items())
    }
    best = max(full.values(), key=lambda p: p.throughput_mps, default=None)
    scaling = (
        round(full[2].throughput_mps / full[1].throughput_mps, 3)
        if 1 in full and 2 in full and full[1].throughput_mps
        else None
    )
    return {
        **result_head("ingest-nats", machine, params),
        "phases": [asdict(p) for p in phases],
        "by_workers": by_workers,
        "scaling_2_over_1_workers": scaling,
        "latency": None
        if latency is None
        else {
            "workers": latency.workers,
            "at_load_mps": round(latency.sent_batches_per_s * params.batch_size),
            **latency.latency_ms,
        },
        "targets": {
            "throughput_mps": {
                "target": TARGET_THROUGHPUT_MPS,
                "durability": params.durability,
                "workers": None if best is None else best.workers,
                "measured": None if best is None else round(best.throughput_mps),
                "met": ok and best is not None and best.throughput_mps >= TARGET_THROUGHPUT_MPS,
            }
        },
        "integrity_ok": ok,
        "error": error,
    }


def run_benchmark(params: NatsBenchParams) -> dict[str, Any]:
    """Run every phase; the JSON-ready result has ``integrity_ok`` False if data was lost."""
    return run_phases(params, "gridfort-bench-nats-", _run_all, _summarize)


def parse_workers(text: str) -> tuple[int, ...]:
    try:
        counts = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise ValueError(f"--workers: expected a list like 1,2, got {text!r}") from None
    return tuple(sorted(set(counts)))


def run_cli(args: argparse.Namespace) -> int:
    durability = getattr(args, "durability", "fsync")
    params = NatsBenchParams(
        sites=args.sites or NatsBenchParams.sites,
        workers=parse_workers(getattr(args, "workers", "1,2")),
        durability="fsync" if durability == "both" else durability,
        partitions=getattr(args, "partitions", 8),
        **load_args(args),
    )
    return write_result(run_benchmark(params), args.json, print_nats_report)
