"""``gridfort bench fanout``: fast frequency response at the edge, and operator-signalled
activations fanned out to 1,000 sites carrying 100,000 assets.

(a) Local FFR (:mod:`benchmarks.fanout_ffr`): frequency crossing the trigger -> FFR
    setpoint held by a real Modbus device, p50/p99 over many scripted dips.
(b) Operator-signalled activation: an :class:`ActivationEvent` at the control plane ->
    allocation -> group messages, each signed once -> the sites' mutual-TLS gRPC streams
    -> each edge verifies the one signature, takes its section, checks local limits,
    writes its devices -> signed result back. The control plane is the product's
    (``EmbeddedSystem``: real CA, real enrollment of every edge, the gRPC link server,
    ``GroupDispatcher``, ``ActivationDispatcher``) in this process; the sites are
    lightweight edges (:mod:`benchmarks.fanout_edges`: real streams, the product's
    ``CommandExecutor``, devices in in-memory register maps) spread over a few processes.
    Per activation: "applied" = event -> the last device write at the slowest site
    (``time.monotonic_ns``, one clock for all processes); "acknowledged" = event -> the
    last verified signed result at the control plane.

(c) The product's aFRR path (``afrr_product``), as ``POST /v1/afrr/activations`` runs it
    after the request is parsed: the batteries' aFRR reservation read from a plan
    (:func:`~control_plane.dispatch.afrr.reserved_participants`), the sections built
    (:func:`~control_plane.dispatch.afrr.activation_sections`) and sent through
    :meth:`~control_plane.dispatch.plan_dispatcher.PlanDispatcher.send_overrides`, every
    asset a battery holding half its rating as aFRR each way; timed from before the plan
    is read.

Baselines measured in the same run, with the same streams and edges:
* one site: the same activation path addressed to one site (ratio = the cost of fan-out);
* per-asset signing: every setpoint of ``baseline_sites`` sites signed and verified on
  its own (single-site ``SetActivePower`` commands), against the group path to the same
  sites (ratio = what signing once per group saves).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import multiprocessing
import os
import platform
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.fanout_edges import EdgeProcSpec, EdgeSpec, edge_proc_main, percentile
from benchmarks.fanout_ffr import FfrParams, run_ffr
from benchmarks.fanout_report import print_report
from control_plane.assets.model import Asset, AssetKind
from control_plane.commands.group_dispatcher import GroupAck, GroupSend
from control_plane.commands.group_messages import DEFAULT_MAX_PAYLOAD_BYTES
from control_plane.dispatch.activation import (
    ActivationDispatcher,
    ActivationEvent,
    Participants,
)
from control_plane.dispatch.afrr import (
    BatteryIndex,
    activation_sections,
    reserved_participants,
)
from control_plane.dispatch.plan_dispatcher import PlanDispatcher
from control_plane.embedded import EmbeddedSystem
from control_plane.optimizer.assets import STEPS, Battery, FleetState
from control_plane.optimizer.plan import Plan
from gridfort.v1 import command_pb2 as cpb
from gridfort.v1 import edge_link_pb2 as lpb
from gridfort.v1 import envelope_pb2 as epb
from security.heap import settle_heap

TRUST_DOMAIN = "bench.gridfort.local"
TARGET_ACTIVATION_P99_MS = 1000.0
RATED_KW = 10.0
HEADROOM = 0.5  # share of the rating offered for activation, both directions
ACK_TIMEOUT_S = 30.0
ENROLL_CONCURRENCY = 16
PROFILE_ENV = "GRIDFORT_BENCH_PROFILE"


@dataclass(frozen=True)
class FanoutParams:
    sites: int = 1000
    assets: int = 100_000
    activations: int = 20
    edge_procs: int = 2
    group_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES
    pause_s: float = 0.3
    baseline_sites: int = 10
    baseline_activations: int = 3
    ffr: FfrParams = field(default_factory=FfrParams)
    skip_ffr: bool = False
    state_dir: Path | None = None
    edge_runtime_dir: Path | None = None  # edges' replay stores and audit logs (default tmpfs)

    def __post_init__(self) -> None:
        if self.sites < 1 or self.assets < self.sites:
            raise ValueError("need at least one site and one asset per site")
        if self.assets // self.sites > 4096:
            raise ValueError("at most 4,096 assets per site")
        if self.activations < 1 or self.edge_procs < 1 or self.baseline_activations < 0:
            raise ValueError("activations and edge_procs must be >= 1")
        if not 1 <= self.baseline_sites <= self.sites:
            raise ValueError("baseline_sites must be in 1..sites")


def site_ids(n: int) -> list[str]:
    return [f"site-{i:04d}" for i in range(n)]


def fleet(params: FanoutParams) -> dict[str, list[str]]:
    """Asset ids per site: ``assets`` spread as evenly as possible."""
    per, extra = divmod(params.assets, params.sites)
    return {
        s: [f"{s}-b{j:04d}" for j in range(per + (1 if i < extra else 0))]
        for i, s in enumerate(site_ids(params.sites))
    }


# -- setup ----------------------------------------------------------------------------------------


@dataclass
class Fleet:
    system: EmbeddedSystem
    assets: dict[str, list[str]]
    edge_dirs: dict[str, Path]
    setup_s: dict[str, float]


def register_fleet(system: EmbeddedSystem, params: FanoutParams) -> dict[str, list[str]]:
    """Register every site of :func:`fleet` and its assets (batteries of ``RATED_KW`` kW,
    ``2 * RATED_KW`` kWh) with the control plane; the asset ids per site."""
    cp = system.control_plane
    assets = fleet(params)
    now = system.clock.now_ms()
    for site in assets:
        cp.registry.add_site(site, now)
    cp.registry.add_assets(
        Asset(a, s, AssetKind.BATTERY, RATED_KW, 2 * RATED_KW)
        for s, ids in assets.items()
        for a in ids
    )
    return assets


async def enroll_fleet(
    system: EmbeddedSystem, sites: Iterable[str], edges: Path
) -> dict[str, Path]:
    """Enroll one edge per site (``ENROLL_CONCURRENCY`` at a time); their directories."""
    edge_dirs = {s: edges / s for s in sites}
    sem = asyncio.Semaphore(ENROLL_CONCURRENCY)

    async def enroll(site: str) -> None:
        async with sem:
            await system.enroll_edge(site, edge_dirs[site])

    await asyncio.gather(*(enroll(s) for s in edge_dirs))
    return edge_dirs


@asynccontextmanager
async def running_fleet(params: FanoutParams, root: Path) -> AsyncIterator[Fleet]:
    system = EmbeddedSystem(root / "cp", trust_domain=TRUST_DOMAIN, durable_sync=False)
    await system.start()
    try:
        cp = system.control_plane
        cp.groups.max_payload_bytes = params.group_bytes
        t0 = time.perf_counter()
        assets = register_fleet(system, params)
        cp.pipeline.refresh()
        t1 = time.perf_counter()
        edge_dirs = await enroll_fleet(system, assets, root / "edges")
        t2 = time.perf_counter()
        yield Fleet(system, assets, edge_dirs, {"register_s": t1 - t0, "enroll_s": t2 - t1})
    finally:
        await system.stop()


def edge_shares(
    assets: dict[str, list[str]], edge_dirs: dict[str, Path], n: int
) -> list[tuple[EdgeSpec, ...]]:
    """The sites (with their assets at ``RATED_KW``) of each of ``n`` edge processes."""
    sites = list(assets)
    return [
        tuple(
            EdgeSpec(s, edge_dirs[s], tuple((a, RATED_KW) for a in assets[s])) for s in sites[i::n]
        )
        for i in range(n)
    ]


async def start_edges(
    pool: EdgePool, fl: Fleet, spec: Callable[[tuple[EdgeSpec, ...]], object]
) -> None:
    """Hand each edge process the ``spec`` of its share of the sites and wait until all
    are connected; the time that took [s] goes into ``fl.setup_s["edges_connect_s"]``."""
    specs = [spec(share) for share in edge_shares(fl.assets, fl.edge_dirs, len(pool.conns))]
    t0 = time.perf_counter()
    await pool.start(specs)
    fl.setup_s["edges_connect_s"] = time.perf_counter() - t0


class EdgePool:
    """The edge processes (spawned), each serving a share of the sites. ``target`` is the
    processes' entry point (gRPC edges by default; the NATS benchmark passes its own):
    it receives one spec, answers ``("ready", n)``, then ``"report"`` / ``"stop"``."""

    def __init__(self, n: int, target: Callable[[Connection], None] = edge_proc_main) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.conns: list[Connection] = []
        self.procs: list[Any] = []
        for i in range(n):
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=target, args=(child,), name=f"bench-edges-{i}", daemon=True)
            proc.start()
            self.conns.append(parent)
            self.procs.append(proc)

    async def start(self, specs: Sequence[object]) -> None:
        loop = asyncio.get_running_loop()
        for conn, spec in zip(self.conns, specs, strict=True):
            conn.send(spec)
        for conn in self.conns:
            kind, detail = await loop.run_in_executor(None, conn.recv)
            if kind != "ready":
                raise RuntimeError(f"edge process failed:\n{detail}")

    async def reports(self) -> list[Any]:
        loop = asyncio.get_running_loop()
        for conn in self.conns:
            conn.send("report")
        out = []
        for conn in self.conns:
            kind, detail = await loop.run_in_executor(None, conn.recv)
            if kind != "report":
                raise RuntimeError(f"edge process failed:\n{detail}")
            out.append(detail)
        return out

    async def stop(self) -> None:
        loop = asyncio.get_running_loop()
        for conn in self.conns:
            try:
                conn.send("stop")
                await asyncio.wait_for(loop.run_in_executor(None, conn.recv), 30.0)
            except (OSError, EOFError, TimeoutError):
                pass
        for proc in self.procs:
            proc.join(timeout=5)
            if proc.is_alive():
                proc.terminate()


# -- measuring ------------------------------------------------------------------------------------


class AckClock:
    """When each site's verified result for an activation reached the control plane [ns]."""

    def __init__(self) -> None:
        self.acks: dict[str, dict[str, tuple[int, str]]] = defaultdict(dict)
        self._waiting: dict[str, tuple[int, asyncio.Event]] = {}

    def on_ack(self, ack: GroupAck) -> None:
        self.acks[ack.activation_id][ack.site_id] = (time.monotonic_ns(), ack.status)
        waiting = self._waiting.get(ack.activation_id)
        if waiting is not None and len(self.acks[ack.activation_id]) >= waiting[0]:
            waiting[1].set()

    async def wait(self, activation_id: str, sites: int) -> bool:
        event = asyncio.Event()
        self._waiting[activation_id] = (sites, event)
        if len(self.acks[activation_id]) >= sites:
            return True
        try:
            await asyncio.wait_for(event.wait(), ACK_TIMEOUT_S)
        except TimeoutError:
            return False
        return True


@dataclass
class Run:
    """One activation as the control plane saw it (times: ``time.monotonic_ns``)."""

    activation_id: str
    sites: int
    event_ns: int
    sent_ns: int
    complete: bool
    signatures: int
    payload_bytes: int
    command_ids: tuple[str, ...] = ()  # the group ids (per-asset: ids start "<activation>.")


def headroom_participants(sections: dict[str, list[str]]) -> Participants:
    """Every asset of ``sections`` (asset ids per site) at 0 kW, offering ``HEADROOM`` of
    ``RATED_KW`` [kW] each way."""
    rows = [
        (s, a, 0.0, HEADROOM * RATED_KW, HEADROOM * RATED_KW)
        for s, ids in sections.items()
        for a in ids
    ]
    return Participants.from_rows(rows)


async def _finish(clock: AckClock, activation_id: str, report: GroupSend, t0: int) -> Run:
    """The run of an activation handed out at ``t1`` (now), once every site answered."""
    t1 = time.monotonic_ns()
    complete = await clock.wait(activation_id, report.sites_sent)
    return Run(
        activation_id,
        report.sites_sent,
        t0,
        t1,
        complete,
        report.signatures,
        report.payload_bytes,
        tuple(report.group_ids),
    )


async def _activate(dispatcher: ActivationDispatcher, clock: AckClock, name: str, k: int) -> Run:
    total_up = float(dispatcher.participants.up_kw.sum())
    delta = (0.3 if k % 2 == 0 else -0.3) * total_up
    event = ActivationEvent(f"{name}-{k}", delta, duration_s=60.0)
    t0 = time.monotonic_ns()
    report = (await dispatcher.activate(event)).send
    return await _finish(clock, event.activation_id, report, t0)


def afrr_plan(assets: dict[str, list[str]]) -> tuple[Plan, FleetState]:
    """Every asset a battery planned at 0 kW holding ``HEADROOM`` of its rating as aFRR
    each way in every block (what the product reads an activation's reservation from)."""
    bats = tuple(
        Battery(asset_id=a, site_id=s, e_kwh=2 * RATED_KW, p_max_kw=RATED_KW, soc_init_pct=50.0)
        for s, ids in assets.items()
        for a in ids
    )
    fleet_state = FleetState(batteries=bats)
    n = len(bats)
    held = np.full((n, 6), HEADROOM * RATED_KW)
    plan = Plan(
        asset_ids=fleet_state.asset_ids,
        p_kw=np.zeros((n, STEPS)),
        reserve_kw=np.zeros((n, 6)),
        status="optimal",
        bids=False,
        afrr_up_kw=held,
        afrr_down_kw=held.copy(),
    )
    return plan, fleet_state


async def _activate_afrr(
    dispatcher: PlanDispatcher,
    plan: Plan,
    fleet_state: FleetState,
    index: BatteryIndex,
    clock: AckClock,
    name: str,
    k: int,
    now_ms: int,
) -> Run:
    """The product's aFRR path from the plan's reservation to the sections on the streams."""
    activation_id = f"{name}-{k}"
    t0 = time.monotonic_ns()
    participants = reserved_participants(plan, fleet_state, 0, 0, index=index)
    delta = (0.3 if k % 2 == 0 else -0.3) * float(participants.up_kw.sum())
    sections, _, _ = activation_sections(participants, delta)
    report = await dispatcher.send_overrides(
        sections, until_ms=now_ms + 60_000, activation_id=activation_id
    )
    return await _finish(clock, activation_id, report, t0)


async def _per_asset(
    fleet_: Fleet, clock_sites: list[str], name: str, k: int, seqs: dict[str, int]
) -> Run:
    """The baseline: every setpoint its own signed single-site command."""
    cp = fleet_.system.control_plane
    activation = f"{name}-{k}"
    now = fleet_.system.clock.now_ms()
    p_kw = (0.3 if k % 2 == 0 else -0.3) * HEADROOM * RATED_KW
    t0 = time.monotonic_ns()
    signatures = 0
    payload = 0
    for site in clock_sites:
        for n, asset in enumerate(fleet_.assets[site]):
            seqs[site] += 1
            command = cpb.Command(
                command_id=f"{activation}.{n}",
                site_id=site,
                asset_id=asset,
                seq=seqs[site],
                issued_ms=now,
                expires_ms=now + 60_000,
                set_active_power=cpb.SetActivePower(p_kw=p_kw),
            )
            body = command.SerializeToString()
            envelope = cp.signer.sign(epb.PAYLOAD_TYPE_COMMAND, body, now)
            cp.dispatcher.deliver(site, lpb.ControlMessage(command=envelope))
            signatures += 1
            payload += len(body)
    t1 = time.monotonic_ns()
    return Run(activation, len(clock_sites), t0, t1, True, signatures, payload)


def _profiler() -> cProfile.Profile | None:
    """``GRIDFORT_BENCH_PROFILE=FILE``: profile the control plane during the fan-out phase."""
    if not os.environ.get(PROFILE_ENV):
        return None
    profile = cProfile.Profile()
    profile.enable()
    return profile


def _summary(values: list[float]) -> dict[str, float]:
    if not values:
        return {"n": 0}
    return {
        "n": len(values),
        "p50": round(percentile(values, 50), 2),
        "p90": round(percentile(values, 90), 2),
        "p99": round(percentile(values, 99), 2),
        "max": round(max(values), 2),
    }


def _phase(
    name: str, runs: list[Run], records: list[tuple[str, str, int, int, int, int]], clock: AckClock
) -> dict[str, Any]:
    """Per activation: the slowest site's applied time and the last ack, from the event [ms]."""
    applied: dict[str, dict[str, int]] = defaultdict(dict)
    received: dict[str, dict[str, int]] = defaultdict(dict)
    activation_of = {g: run.activation_id for run in runs for g in run.command_ids}
    not_applied = 0
    for command_id, site, recv_ns, applied_ns, _answered, status in records:
        base = activation_of.get(command_id) or command_id.rsplit(".", 1)[0]
        received[base][site] = min(received[base].get(site, recv_ns), recv_ns)
        if status != cpb.COMMAND_STATUS_APPLIED or applied_ns == 0:
            not_applied += 1
            continue
        applied[base][site] = max(applied[base].get(site, 0), applied_ns)
    per_activation: list[float] = []
    per_site: list[float] = []
    acked: list[float] = []
    cp_send: list[float] = []
    first_in: list[float] = []
    missing = 0
    for run in runs:
        sites = applied.get(run.activation_id, {})
        missing += run.sites - len(sites)
        if sites:
            per_activation.append((max(sites.values()) - run.event_ns) / 1e6)
            per_site.extend((t - run.event_ns) / 1e6 for t in sites.values())
        acks = clock.acks.get(run.activation_id, {})
        if acks:
            acked.append((max(t for t, _ in acks.values()) - run.event_ns) / 1e6)
        cp_send.append((run.sent_ns - run.event_ns) / 1e6)
        arrivals = received.get(run.activation_id, {})
        if arrivals:
            first_in.extend((t - run.event_ns) / 1e6 for t in arrivals.values())
    first = runs[0] if runs else None
    return {
        "phase": name,
        "activations": len(runs),
        "sites": first.sites if first else 0,
        "signatures_per_activation": first.signatures if first else 0,
        "payload_bytes_per_activation": first.payload_bytes if first else 0,
        "all_sites_applied_ms": _summary(per_activation),
        "site_applied_ms": _summary(per_site),
        "all_acknowledged_ms": _summary(acked),
        "control_plane_send_ms": _summary(cp_send),
        "site_received_ms": _summary(first_in),
        "site_activations_missing": missing,
        "entries_not_applied": not_applied,
        "complete": all(r.complete for r in runs) and missing == 0,
    }


async def run_activation(params: FanoutParams, root: Path, runtime: Path) -> dict[str, Any]:
    async with running_fleet(params, root) as fl:
        cp = fl.system.control_plane
        clock = AckClock()
        cp.groups.add_listener(clock.on_ack)
        sites = list(fl.assets)
        pool = EdgePool(min(params.edge_procs, len(sites)))
        try:
            endpoint = fl.system.link_endpoints[0]
            await start_edges(pool, fl, lambda share: EdgeProcSpec(endpoint, runtime, share))
            identity = cp.signer.signer

            def dispatcher(subset: list[str]) -> ActivationDispatcher:
                return ActivationDispatcher(
                    groups=cp.groups,
                    participants=headroom_participants({s: fl.assets[s] for s in subset}),
                    audit=cp.audit,
                    clock=fl.system.clock,
                    identity=identity,
                )

            full, one = dispatcher(sites), dispatcher(sites[:1])
            few = dispatcher(sites[: params.baseline_sites])
            await _activate(full, clock, "warmup", 0)  # first use of every stream
            await pool.reports()
            # a running control plane settles its heap every few minutes (security/heap.py),
            # so in steady state its fleet and streams are out of the collector's scans
            settle_heap()
            phases: dict[str, list[Run]] = defaultdict(list)
            profile = _profiler()
            cpu0, busy0, wall0 = time.process_time(), machine_busy_s(), time.perf_counter()
            for k in range(params.activations):
                phases["fanout"].append(await _activate(full, clock, "fanout", k))
                await asyncio.sleep(params.pause_s)
            cp_cpu_s = time.process_time() - cpu0
            if profile is not None:
                profile.disable()
                profile.dump_stats(os.environ[PROFILE_ENV])
            busy_s, wall_s = machine_busy_s() - busy0, time.perf_counter() - wall0
            fanout_reports = await pool.reports()
            edge_cpu_s = sum(r.cpu_s for r in fanout_reports)
            plan, fleet_state = afrr_plan(fl.assets)
            index = BatteryIndex.of(fleet_state)  # the product builds it with each plan
            product = PlanDispatcher(
                groups=cp.groups,
                state=cp.pipeline.state,
                audit=cp.audit,
                clock=fl.system.clock,
                identity=identity,
            )
            for k in range(params.activations):
                phases["afrr_product"].append(
                    await _activate_afrr(
                        product,
                        plan,
                        fleet_state,
                        index,
                        clock,
                        "afrr",
                        k,
                        fl.system.clock.now_ms(),
                    )
                )
                await asyncio.sleep(params.pause_s)
            for k in range(params.activations):
                phases["one_site"].append(await _activate(one, clock, "one", k))
                await asyncio.sleep(params.pause_s / 3)
            seqs = {s: cp.command_log.next_seq(s) - 1 for s in sites[: params.baseline_sites]}
            for k in range(params.baseline_activations):
                phases["group_baseline_sites"].append(await _activate(few, clock, "grp", k))
                await asyncio.sleep(params.pause_s)
                phases["per_asset_signing"].append(
                    await _per_asset(fl, sites[: params.baseline_sites], "asset", k, seqs)
                )
                await _settle(pool, params)
            reports = [*fanout_reports, *await pool.reports()]
        finally:
            await pool.stop()
        records = [r for rep in reports for r in rep.records]
        problems = [p for rep in reports for p in rep.problems]
        results = {name: _phase(name, runs, records, clock) for name, runs in phases.items()}
        cp.groups.flush()
        return {
            "setup_s": {k: round(v, 2) for k, v in fl.setup_s.items()},
            "phases": results,
            "fanout_cpu_cores": {
                "control_plane": round(cp_cpu_s / wall_s, 2),
                "edges": round(edge_cpu_s / wall_s, 2),
                "other": round(max(0.0, busy_s - cp_cpu_s - edge_cpu_s) / wall_s, 2)
                if busy0 >= 0
                else None,
            },
            "fanout_cpu_ms_per_activation": {
                "control_plane": round(cp_cpu_s * 1000 / params.activations, 1),
                "edges": round(edge_cpu_s * 1000 / params.activations, 1),
            },
            "group_status_counts": dict(cp.command_log.group_status_counts()),
            "edge_problems": problems[:20],
        }


async def _settle(pool: EdgePool, params: FanoutParams) -> None:
    """Per-asset commands answer asynchronously; give the edges time to work through them."""
    await asyncio.sleep(max(2.0, params.pause_s))


# -- the CLI --------------------------------------------------------------------------------------


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", type=Path, default=Path("benchmarks/results/fanout.json"))
    p.add_argument("--sites", type=int, default=1000, help="sites (one edge link each)")
    p.add_argument("--assets", type=int, default=100_000, help="assets over all sites")
    p.add_argument("--activations", type=int, default=20, help="measured activations")
    p.add_argument("--edge-procs", type=int, default=2, help="processes running the edges")
    p.add_argument(
        "--group-bytes",
        type=int,
        default=DEFAULT_MAX_PAYLOAD_BYTES,
        help="payload budget of one group message [bytes]",
    )
    p.add_argument("--baseline-sites", type=int, default=10, help="sites of the per-asset baseline")
    p.add_argument("--baseline-activations", type=int, default=3, help="per-asset baseline runs")
    p.add_argument("--ffr-events", type=int, default=100, help="frequency dips of part (a)")
    p.add_argument("--ffr-poll-ms", type=float, default=20.0, help="frequency poll interval [ms]")
    p.add_argument("--skip-ffr", action="store_true", help="only part (b)")
    p.add_argument("--state-dir", type=Path, default=None, help="parent of the scratch state")
    p.add_argument(
        "--edge-runtime-dir",
        type=Path,
        default=None,
        help="where the edges keep replay state and audit logs (default /dev/shm)",
    )
    p.add_argument(
        "--transport",
        choices=("grpc", "nats"),
        default="grpc",
        help="part (b) over the sites' gRPC streams or NATS command subjects"
        " (nats: benchmarks/fanout_nats.py, JSON default benchmarks/results/fanout_nats.json)",
    )
    from benchmarks.fanout_nats import add_nats_arguments  # imports this module: lazily

    add_nats_arguments(p)


def params_from_args(args: argparse.Namespace) -> FanoutParams:
    return FanoutParams(
        sites=args.sites,
        assets=args.assets,
        activations=args.activations,
        edge_procs=args.edge_procs,
        group_bytes=args.group_bytes,
        baseline_sites=min(args.baseline_sites, args.sites),
        baseline_activations=args.baseline_activations,
        ffr=FfrParams(events=args.ffr_events, poll_ms=args.ffr_poll_ms),
        skip_ffr=args.skip_ffr,
        state_dir=args.state_dir,
        edge_runtime_dir=args.edge_runtime_dir,
    )


async def run(params: FanoutParams) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="gridfort-fanout-", dir=params.state_dir) as tmp:
        root = Path(tmp)
        ffr = None if params.skip_ffr else await run_ffr(params.ffr, root / "ffr")
        fsync = fsync_ms(root)
        with tempfile.TemporaryDirectory(
            prefix="gridfort-fanout-edges-", dir=params.edge_runtime_dir or default_runtime_dir()
        ) as runtime:
            activation = await run_activation(params, root / "fanout", Path(runtime))
        activation["edge_runtime_dir"] = str(params.edge_runtime_dir or default_runtime_dir())
        activation["state_disk_fsync_ms"] = fsync
    fan = activation["phases"]["fanout"]
    one = activation["phases"]["one_site"]
    grp = activation["phases"].get("group_baseline_sites")
    per = activation["phases"].get("per_asset_signing")
    afrr = activation["phases"].get("afrr_product")
    return {
        "benchmark": "fanout",
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine_summary(),
        "params": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(params).items()},
        "ffr": ffr,
        "activation": activation,
        "ratios": {
            "fanout_vs_one_site_p50": _ratio(fan, one, "p50"),
            "fanout_vs_one_site_p99": _ratio(fan, one, "p99"),
            "per_asset_vs_group_p50": _ratio(per, grp, "p50") if per and grp else None,
            "signatures_per_asset_vs_group": (
                round(
                    per["signatures_per_activation"] / max(1, grp["signatures_per_activation"]), 1
                )
                if per and grp
                else None
            ),
        },
        "targets": {
            "ffr_p99_ms": 100.0,
            "ffr_met": None if ffr is None else ffr["met"],
            "activation_p99_ms": TARGET_ACTIVATION_P99_MS,
            "activation_met": fan["complete"]
            and fan["all_sites_applied_ms"].get("p99", float("inf")) < TARGET_ACTIVATION_P99_MS,
            "afrr_product_met": afrr is not None
            and afrr["complete"]
            and afrr["all_sites_applied_ms"].get("p99", float("inf")) < TARGET_ACTIVATION_P99_MS,
        },
    }


def machine_summary() -> dict[str, Any]:
    """The machine's CPU count, Python version and platform, for the JSON."""
    return {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def machine_busy_s() -> float:
    """CPU time [s] the whole machine spent outside idle/iowait since boot; -1 if unknown."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    except OSError:
        return -1.0
    ticks = [int(x) for x in fields[:8]]
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")


def default_runtime_dir() -> Path | None:
    """tmpfs if there is one: 1,000 edges here share one disk, a real edge has its own."""
    shm = Path("/dev/shm")
    return shm if shm.is_dir() and os.access(shm, os.W_OK) else None


def fsync_ms(directory: Path, n: int = 200) -> dict[str, float]:
    """What one fsync costs on ``directory``'s disk now [ms] (the price an edge pays per
    group on its own storage before applying)."""
    path = directory / "fsync-probe"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    times = []
    try:
        for _ in range(n):
            os.write(fd, b"x" * 128)
            t = time.perf_counter()
            os.fsync(fd)
            times.append((time.perf_counter() - t) * 1000)
    finally:
        os.close(fd)
        path.unlink()
    return _summary(times)


def _ratio(a: dict[str, Any], b: dict[str, Any], key: str) -> float | None:
    x, y = a["all_sites_applied_ms"].get(key), b["all_sites_applied_ms"].get(key)
    return round(x / y, 2) if x and y else None


def run_cli(args: argparse.Namespace) -> int:
    if getattr(args, "transport", "grpc") == "nats":
        from benchmarks.fanout_nats import run_nats_cli

        return run_nats_cli(args, params_from_args)
    params = params_from_args(args)
    result = asyncio.run(run(params))
    print_report(result)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
    print(f"JSON: {args.json}", file=sys.stderr)
    return 0
