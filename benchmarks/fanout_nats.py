"""``gridfort bench fanout --transport nats``: one activation fanned out to 1,000 sites over NATS.

Issue #3 asks for "a fan-out benchmark for commands: one signed group command to 1,000
sites, p99 delivery latency". This is its NATS half (the gRPC half is
:mod:`benchmarks.fanout`). Everything is the product's except the devices:

* the control plane (``EmbeddedSystem`` with the embedded nats-server, ``nats_port=0``):
  real CA, real enrollment of every site with one-time tokens, the NATS users list from
  the registry (``sync_transports``), ``GroupDispatcher`` and ``ActivationDispatcher``
  in this process. Sites have no gRPC stream, so ``CommandDispatcher`` hands each signed
  group to the NATS fallback sink (``NatsIngest.send_to_site``): one core-NATS publish
  per site on ``gridfort.v1.commands.<site>``. Results come back through the telemetry
  stream (JetStream) and the control plane's partition consumers, which verify each
  edge's signature and route it to the group dispatcher;
* the sites: lightweight NATS edges (:mod:`benchmarks.fanout_nats_edges`) in a few
  processes, each with its own certificate, connection and command subscription and the
  product's ``CommandExecutor``; devices are in-memory register maps.

Phases, measured in one run over the same connections:

* ``fanout``: per-site groups (the gRPC benchmark's headline): 100 assets per site, the
  default 4 kB budget gives each site a group of its own: 1,000 signatures, 1,000 messages;
* ``one_group``: ONE signed group whose sections cover every site (one asset each; the
  signed payload is stated in the JSON), the same message published to each site's
  subject: 1 signature, 1,000 messages;
* ``one_site`` and ``one_site_one_asset``: the same two paths to one site (ratios = the
  cost of fan-out).

Per activation (``time.monotonic_ns``, one clock for all processes): event -> each site
received the message, verified it (signature, validity, its section, replay check),
applied it (last device write); event -> every verified result back at the control plane.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks.fanout import (
    TARGET_ACTIVATION_P99_MS,
    TRUST_DOMAIN,
    AckClock,
    EdgePool,
    FanoutParams,
    Fleet,
    Run,
    _activate,
    default_runtime_dir,
    enroll_fleet,
    fsync_ms,
    headroom_participants,
    machine_busy_s,
    machine_summary,
    register_fleet,
    start_edges,
)
from benchmarks.fanout_nats_edges import NatsEdgeProcSpec, NatsProcReport, nats_edge_proc_main
from benchmarks.fanout_nats_report import phase_summary, print_nats_report, ratio
from benchmarks.ingest_nats import _proc_cpu_s
from control_plane.dispatch.activation import ActivationDispatcher
from control_plane.embedded import EmbeddedSystem
from control_plane.transports.nats_config import DEFAULT_MAX_PAYLOAD_BYTES as NATS_MAX_PAYLOAD
from edge_node.commands import MAX_COMMAND_PAYLOAD_BYTES
from edge_node.group_sections import MAX_GROUP_SITES
from security.heap import settle_heap

#: Room left in the edge's payload limit for the group header (ids, times, sequence).
HEADER_ROOM_BYTES = 1024
DEFAULT_ONE_GROUP_BYTES = MAX_COMMAND_PAYLOAD_BYTES - HEADER_ROOM_BYTES
DEFAULT_JSON = Path("benchmarks/results/fanout.json")
NATS_JSON = Path("benchmarks/results/fanout_nats.json")
WARMUP_TRIES = 3


@dataclass(frozen=True)
class NatsFanoutParams:
    fanout: FanoutParams
    one_group_bytes: int = DEFAULT_ONE_GROUP_BYTES  # payload budget of the one-group phase

    def __post_init__(self) -> None:
        if not 1 <= self.one_group_bytes <= DEFAULT_ONE_GROUP_BYTES:
            raise ValueError(
                f"one_group_bytes must be in 1..{DEFAULT_ONE_GROUP_BYTES} (the edge refuses"
                f" commands over {MAX_COMMAND_PAYLOAD_BYTES} bytes)"
            )


def add_nats_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--one-group-bytes",
        type=int,
        default=DEFAULT_ONE_GROUP_BYTES,
        help="(nats) payload budget of the one-group phase [bytes]; the edge's limit minus 1 kB",
    )


# -- setup ----------------------------------------------------------------------------------------


@asynccontextmanager
async def running_nats_fleet(params: FanoutParams, root: Path) -> AsyncIterator[Fleet]:
    """The control plane with its embedded nats-server; every site registered and enrolled,
    and in the broker's users list."""
    t0 = time.perf_counter()
    system = EmbeddedSystem(
        root / "cp", trust_domain=TRUST_DOMAIN, durable_sync=False, nats_port=0, api_address=None
    )
    await system.start()
    try:
        t1 = time.perf_counter()
        assets = register_fleet(system, params)
        # refresh the pipeline; one NATS user per site (reload)
        await system.control_plane.sync_transports()
        t2 = time.perf_counter()
        edge_dirs = await enroll_fleet(system, assets, root / "edges")
        t3 = time.perf_counter()
        setup = {"control_plane_start_s": t1 - t0, "register_s": t2 - t1, "enroll_s": t3 - t2}
        yield Fleet(system, assets, edge_dirs, setup)
    finally:
        await system.stop()


def nats_edge_pool(n: int) -> EdgePool:
    """:class:`EdgePool` with NATS edges in the spawned processes."""
    return EdgePool(n, target=nats_edge_proc_main)


# -- measuring ------------------------------------------------------------------------------------


@dataclass
class _Cpu:
    """CPU [s] of the parts during a measured phase, and the wall time [s]."""

    control_plane: float = 0.0
    edges: float = 0.0
    nats_server: float = 0.0
    machine: float = 0.0
    wall: float = 0.0

    def cores(self) -> dict[str, float | None]:
        wall = max(self.wall, 1e-9)
        other = self.machine - self.control_plane - self.edges - self.nats_server
        return {
            "control_plane": round(self.control_plane / wall, 2),
            "edges": round(self.edges / wall, 2),
            "nats_server": round(self.nats_server / wall, 2),
            "other": round(max(0.0, other) / wall, 2) if self.machine >= 0 else None,
        }

    def per_activation_ms(self, n: int) -> dict[str, float]:
        return {
            "control_plane": round(self.control_plane * 1000 / n, 1),
            "edges": round(self.edges * 1000 / n, 1),
            "nats_server": round(self.nats_server * 1000 / n, 1),
        }


class _Bench:
    """The phases of one run over one fleet, one broker and one set of edge processes."""

    def __init__(self, fl: Fleet, pool: EdgePool, params: NatsFanoutParams) -> None:
        self.fl = fl
        self.pool = pool
        self.params = params
        self.cp = fl.system.control_plane
        self.clock = AckClock()
        self.cp.groups.add_listener(self.clock.on_ack)
        self.runs: dict[str, list[Run]] = defaultdict(list)
        self.cpu: dict[str, _Cpu] = {}
        self.reports: list[NatsProcReport] = []

    def dispatcher(self, sections: dict[str, list[str]]) -> ActivationDispatcher:
        return ActivationDispatcher(
            groups=self.cp.groups,
            participants=headroom_participants(sections),
            audit=self.cp.audit,
            clock=self.fl.system.clock,
            identity=self.cp.signer.signer,
        )

    def _budget(self, one_group: bool) -> None:
        groups = self.cp.groups
        if one_group:
            groups.max_payload_bytes = self.params.one_group_bytes
            groups.max_sites_per_group = min(len(self.fl.assets), MAX_GROUP_SITES)
        else:
            groups.max_payload_bytes = self.params.fanout.group_bytes
            groups.max_sites_per_group = 512

    async def warmup(self, dispatcher: ActivationDispatcher) -> dict[str, int]:
        """Until every site answered once: core NATS is at-most-once, and a subscription
        may reach the broker after the edge said it is ready (docs/nats.md)."""
        self._budget(False)
        answered = 0
        for k in range(WARMUP_TRIES):
            run = await _activate(dispatcher, self.clock, "warmup", k)
            answered = len(self.clock.acks.get(run.activation_id, {}))
            if run.complete:
                return {"activations": k + 1, "sites_answered": answered}
        return {"activations": WARMUP_TRIES, "sites_answered": answered}

    async def phase(
        self, name: str, dispatcher: ActivationDispatcher, *, one_group: bool, measure_cpu: bool
    ) -> None:
        fan = self.params.fanout
        self._budget(one_group)
        pid = getattr(self.cp.nats, "pid", None)  # one embedded server (no cluster)
        srv0 = _proc_cpu_s(pid) if pid else 0.0
        cpu0, busy0, wall0 = time.process_time(), machine_busy_s(), time.perf_counter()
        for k in range(fan.activations):
            self.runs[name].append(await _activate(dispatcher, self.clock, name, k))
            await asyncio.sleep(fan.pause_s)
        cp_cpu = time.process_time() - cpu0
        busy, wall = machine_busy_s() - busy0, time.perf_counter() - wall0
        srv = (_proc_cpu_s(pid) - srv0) if pid else 0.0
        reports = await self.pool.reports()
        self.reports.extend(reports)
        if measure_cpu:
            edges = sum(r.cpu_s for r in reports)
            self.cpu[name] = _Cpu(cp_cpu, edges, srv, busy if busy0 >= 0 else -1.0, wall)


async def run_activation(params: NatsFanoutParams, root: Path, runtime: Path) -> dict[str, Any]:
    fan = params.fanout
    async with running_nats_fleet(fan, root) as fl:
        cp = fl.system.control_plane
        sites = list(fl.assets)
        pool = nats_edge_pool(min(fan.edge_procs, len(sites)))
        try:
            servers = cp.nats_urls
            await start_edges(pool, fl, lambda share: NatsEdgeProcSpec(servers, runtime, share))
            bench = _Bench(fl, pool, params)
            first_asset = {s: ids[:1] for s, ids in fl.assets.items()}
            full = bench.dispatcher(fl.assets)
            warmup = await bench.warmup(full)
            settle_heap()  # as a running control plane does (security/heap.py)
            await pool.reports()
            await bench.phase("fanout", full, one_group=False, measure_cpu=True)
            one_group = bench.dispatcher(first_asset)
            await bench.phase("one_group", one_group, one_group=True, measure_cpu=True)
            one = bench.dispatcher({sites[0]: fl.assets[sites[0]]})
            await bench.phase("one_site", one, one_group=False, measure_cpu=False)
            one_asset = bench.dispatcher({sites[0]: first_asset[sites[0]]})
            await bench.phase("one_site_one_asset", one_asset, one_group=True, measure_cpu=False)
        finally:
            await pool.stop()
        records = [r for rep in bench.reports for r in rep.records]
        problems = [p for rep in bench.reports for p in rep.problems]
        cp.groups.flush()
        ingest = cp.nats_ingest.stats if cp.nats_ingest is not None else None
        return {
            "setup_s": {k: round(v, 2) for k, v in fl.setup_s.items()},
            "warmup": warmup,
            "phases": {
                name: phase_summary(name, runs, records, bench.clock)
                for name, runs in bench.runs.items()
            },
            "cpu_cores": {name: c.cores() for name, c in bench.cpu.items()},
            "cpu_ms_per_activation": {
                name: c.per_activation_ms(fan.activations) for name, c in bench.cpu.items()
            },
            "group_status_counts": dict(cp.command_log.group_status_counts()),
            "nats_ingest": None
            if ingest is None
            else {
                "messages": ingest.messages,
                "naks": ingest.naks,
                "handed_back": ingest.handed_back,
                "partitions": list(ingest.partitions),
            },
            "edge_problems": problems[:20],
            "edge_problem_count": len(problems),
        }


async def run(params: NatsFanoutParams) -> dict[str, Any]:
    fan = params.fanout
    with tempfile.TemporaryDirectory(prefix="gridfort-fanout-nats-", dir=fan.state_dir) as tmp:
        root = Path(tmp)
        fsync = fsync_ms(root)
        runtime_parent = fan.edge_runtime_dir or default_runtime_dir()
        with tempfile.TemporaryDirectory(
            prefix="gridfort-fanout-nats-edges-", dir=runtime_parent
        ) as runtime:
            activation = await run_activation(params, root / "fanout", Path(runtime))
        activation["edge_runtime_dir"] = str(runtime_parent)
        activation["state_disk_fsync_ms"] = fsync
    phases = activation["phases"]
    fanout, group = phases["fanout"], phases["one_group"]
    return {
        "benchmark": "fanout",
        "transport": "nats",
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {
            **machine_summary(),
            "loadavg_at_end": [round(x, 2) for x in os.getloadavg()],
        },
        "params": {
            **{k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(fan).items()},
            "one_group_bytes": params.one_group_bytes,
        },
        "limits": {
            "nats_max_payload_bytes": NATS_MAX_PAYLOAD,
            "edge_max_command_payload_bytes": MAX_COMMAND_PAYLOAD_BYTES,
            "edge_max_group_sites": MAX_GROUP_SITES,
            "one_group_signed_payload_bytes": group["payload_bytes_per_activation"],
            "one_group_nats_message_bytes": group["message_bytes_per_site"],
        },
        "activation": activation,
        "ratios": {
            "fanout_vs_one_site_p50": ratio(fanout, phases["one_site"], "p50"),
            "fanout_vs_one_site_p99": ratio(fanout, phases["one_site"], "p99"),
            "one_group_vs_one_site_p50": ratio(group, phases["one_site_one_asset"], "p50"),
            "one_group_vs_one_site_p99": ratio(group, phases["one_site_one_asset"], "p99"),
        },
        "targets": {
            "activation_p99_ms": TARGET_ACTIVATION_P99_MS,
            "fanout_met": _met(fanout),
            "one_group_met": _met(group),
        },
    }


def _met(phase: dict[str, Any]) -> bool:
    p99 = phase["all_sites_applied_ms"].get("p99", float("inf"))
    return bool(phase["complete"]) and p99 < TARGET_ACTIVATION_P99_MS


def run_nats_cli(
    args: argparse.Namespace, params_from_args: Callable[[argparse.Namespace], FanoutParams]
) -> int:
    params = NatsFanoutParams(params_from_args(args), one_group_bytes=args.one_group_bytes)
    result = asyncio.run(run(params))
    print_nats_report(result)
    out: Path = NATS_JSON if args.json == DEFAULT_JSON else args.json
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
    print(f"JSON: {out}", file=sys.stderr)
    return 0
