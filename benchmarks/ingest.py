"""``gridfort bench ingest``: measurements/s through the full ingest pipeline, honestly.

What is measured: K enrolled edge identities (real enrollment with one-time
tokens) stream signed 250-measurement batches over real gRPC with mutual TLS on
loopback into a real control plane: authenticate, verify (Ed25519 + replay
guard), authorize (asset registry), validate (units, physical bounds), durable
group commit to SQLite WAL, a signed receipt back. The load generator runs in
separate OS processes (see ``ingest_load``).

Phases, each checked for lost or double-counted data before the next starts:

1. saturation, full pipeline (the headline, ``durable_sync=True``: fsync per group commit);
2. saturation, :class:`~benchmarks.baseline_pipeline.BaselinePipeline` (same transport
   and store, verify/authorize/validate off), for the ratio full/baseline;
3. latency at a stated load (50 % of phase 1), open-loop rate-limited sending:
   p50/p95/p99 sample-to-commit latency [ms].

Optionally the two saturation phases again with ``durable_sync=False``.
Output: a table on stdout and JSON (machine, parameters, phases, ratio, targets).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from multiprocessing.connection import Connection
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypedDict, TypeVar

from benchmarks.baseline_pipeline import BaselinePipeline
from benchmarks.child_pool import ChildPool
from benchmarks.ingest_integrity import check_phase, store_snapshot
from benchmarks.ingest_load import (
    MAX_PHASE_S,
    LoadReport,
    LoadSpec,
    SiteSpec,
    generator_main,
    split_sites,
)
from benchmarks.ingest_report import print_report
from control_plane.assets.model import CANONICAL_UNIT, Asset, AssetKind, channel_bounds
from control_plane.embedded import EmbeddedSystem
from control_plane.ingest.pipeline import IngestPipeline

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

TARGET_THROUGHPUT_MPS = 100_000  # measurements/s, every stage on, durable
TARGET_P99_MS = 250.0  # sample-to-commit p99 at half of saturation [ms]
SAMPLES_PER_DEVICE = 10  # a gateway reads ~10 channels per device per second
TRUST_DOMAIN = "bench.gridfort.local"
BUSY_MACHINE_CORES = 0.25  # other processes using more than this during a phase: flagged
DURABILITY = {"fsync": True, "normal": False}  # label -> ControlPlaneConfig.durable_sync


class IntegrityError(Exception):
    """A phase lost, refused or double-counted data: the benchmark result is void."""


class LoadParams(Protocol):
    """What the gRPC and the NATS benchmark share in their parameters (times in s)."""

    @property
    def sites(self) -> int: ...
    @property
    def batch_size(self) -> int: ...  # measurements per batch
    @property
    def seconds(self) -> float: ...  # measured window of a phase [s]
    @property
    def warmup_s(self) -> float: ...
    @property
    def window(self) -> int: ...  # batches in flight per site at saturation
    @property
    def load_procs(self) -> int: ...
    @property
    def verify_every(self) -> int: ...
    @property
    def state_dir(self) -> Path | None: ...


def check_load_params(params: LoadParams) -> None:
    """Refuse sizes below 1 and a phase (warm-up + window) longer than ``MAX_PHASE_S`` [s]."""
    p = params
    if p.sites < 1 or p.batch_size < 1 or p.window < 1 or p.load_procs < 1:
        raise ValueError("sites, batch_size, window and load_procs must be >= 1")
    if p.seconds <= 0 or p.warmup_s < 0 or p.seconds + p.warmup_s > MAX_PHASE_S:
        raise ValueError(f"seconds must be > 0, warmup >= 0, together <= {MAX_PHASE_S:.0f}")


class LoadArgs(TypedDict):
    """The parameters both benchmarks read from the CLI the same way (times in s)."""

    batch_size: int
    seconds: float
    warmup_s: float
    window: int
    load_procs: int
    latency_load: float
    verify_every: int
    state_dir: Path | None


def load_args(args: argparse.Namespace) -> LoadArgs:
    """``LoadArgs`` from the CLI; the defaults stand in for options a caller left out."""
    return LoadArgs(
        batch_size=args.batch_size,
        seconds=args.seconds,
        warmup_s=getattr(args, "warmup", 1.0),
        window=getattr(args, "window", 16),
        load_procs=getattr(args, "load_procs", 1),
        latency_load=getattr(args, "latency_load", 0.5),
        verify_every=getattr(args, "verify_every", 1),
        state_dir=getattr(args, "state_dir", None),
    )


@dataclass(frozen=True)
class BenchParams:
    sites: int = 8
    batch_size: int = 250
    seconds: float = 5.0
    warmup_s: float = 1.0
    window: int = 16  # batches in flight per site at saturation
    load_procs: int = 1
    durability: str = "both"  # fsync | normal | both
    latency_load: float = 0.5  # phase 3 load as a fraction of phase 1 saturation
    verify_every: int = 1  # the generator verifies every n-th receipt signature (0: none)
    state_dir: Path | None = None

    def __post_init__(self) -> None:
        check_load_params(self)
        if self.durability not in ("fsync", "normal", "both"):
            raise ValueError("durability must be fsync, normal or both")
        if not 0 < self.latency_load <= 1:
            raise ValueError("latency_load must be in (0, 1]")


@dataclass
class Phase:
    phase: str  # 1 full saturation, 2 baseline saturation, 3 latency; 4, 5: other durability
    name: str
    pipeline: str  # full | baseline
    durability: str  # fsync | normal
    mode: str  # saturation | rate
    offered_batches_per_s: float | None
    throughput_mps: float = 0.0
    batches_per_s: float = 0.0
    sent_batches_per_s: float = 0.0
    latency_ms: dict[str, float] = field(default_factory=dict)
    max_schedule_lag_ms: float = 0.0
    batches_sent: int = 0
    batches_committed: int = 0
    measurements_committed: int = 0
    receipts_verified: int = 0
    server_cpu_us_per_measurement: float = 0.0  # control-plane CPU [us] per committed measurement
    server_cpu_cores: float = 0.0  # CPU of the control-plane process / window [cores]
    generator_cpu_cores: float = 0.0  # CPU of the load generator processes / window [cores]
    other_cpu_cores: float | None = None  # the rest of the machine (noise) [cores], Linux only
    integrity: dict[str, Any] = field(default_factory=dict)


# -- the fleet -------------------------------------------------------------------
_KINDS = (AssetKind.PV_INVERTER, AssetKind.BATTERY, AssetKind.EV_CHARGER)


def site_assets(site_id: str, batch_size: int) -> list[Asset]:
    """~batch_size/10 devices (PV, battery, EV charger in turn) for one site gateway."""
    n = max(1, -(-batch_size // SAMPLES_PER_DEVICE))
    assets = []
    for i in range(n):
        kind = _KINDS[i % len(_KINDS)]
        e_kwh = {AssetKind.PV_INVERTER: 0.0, AssetKind.BATTERY: 20.0, AssetKind.EV_CHARGER: 60.0}
        assets.append(Asset(f"{site_id}-d{i:03d}", site_id, kind, 11.0, e_kwh[kind]))
    return assets


def site_channels(assets: list[Asset]) -> tuple[tuple[str, int, int, float, float], ...]:
    """SAMPLES_PER_DEVICE samples per device, over the device's channels in turn."""
    out = []
    for a in assets:
        bounds = sorted(channel_bounds(a).items())
        for j in range(SAMPLES_PER_DEVICE):
            quantity, (low, high) = bounds[j % len(bounds)]
            out.append((a.asset_id, quantity, CANONICAL_UNIT[quantity], low, high))
    return tuple(out)


# -- the generator processes --------------------------------------------------------
def _machine_busy_s() -> float:
    """CPU time [s] the whole machine spent outside idle/iowait since boot; -1 if unknown."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    except OSError:
        return -1.0
    ticks = [int(x) for x in fields[:8]]
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")


async def _window_cpu(t_begin: float, t_end: float) -> tuple[float, float]:
    """(this process, whole machine) CPU time [s] between two perf_counter instants."""
    await asyncio.sleep(max(0.0, t_begin - time.perf_counter()))
    proc0, machine0 = time.process_time(), _machine_busy_s()
    await asyncio.sleep(max(0.0, t_end - time.perf_counter()))
    proc, machine = time.process_time() - proc0, _machine_busy_s()
    return proc, (machine - machine0 if machine0 >= 0 and machine >= 0 else -1.0)


class LoadPool(ChildPool):
    """Generator processes (spawned: no shared event loop, no inherited state)."""

    what = "load generator"

    def __init__(self, procs: int) -> None:
        super().__init__(procs, generator_main, "bench-load")

    async def run(self, specs: list[LoadSpec]) -> tuple[list[LoadReport], tuple[float, float]]:
        """Run one phase on all generators: their reports, and the CPU time [s] of this
        process and of the whole machine (-1 if unknown) during the measured window."""
        conns = await self.prepare(specs)
        start_wall = time.time() + 0.2
        t_begin = time.perf_counter() + 0.2 + specs[0].warmup_s
        cpu = asyncio.ensure_future(_window_cpu(t_begin, t_begin + specs[0].seconds))
        self.start(conns, start_wall)
        reports = await self.results(conns)
        return reports, await cpu

    async def prepare(self, specs: list[LoadSpec]) -> list[Connection]:
        """Hand each generator its spec and wait until all are connected."""
        conns = self._conns[: len(specs)]
        await self.hand_out(conns, specs)
        return conns

    @staticmethod
    def start(conns: list[Connection], start_wall: float) -> None:
        """Start the prepared generators at ``start_wall`` (time.time())."""
        ChildPool.start_at(conns, start_wall)

    async def results(self, conns: list[Connection]) -> list[LoadReport]:
        reports: list[LoadReport] = await self.collect(conns)
        return reports


# -- one control plane under test ------------------------------------------------
@dataclass
class Target:
    system: EmbeddedSystem
    pipeline: str
    durability: str
    sites: list[SiteSpec]


async def enroll_sites(system: EmbeddedSystem, params: LoadParams, edges: Path) -> list[SiteSpec]:
    """Register ``params.sites`` sites with their devices, enroll one edge each (its
    credentials under ``edges``), and return what the load generators need of them."""
    sites = []
    for i in range(params.sites):
        site_id = f"site-{i:03d}"
        assets = site_assets(site_id, params.batch_size)
        system.register_site(site_id, assets)
        creds = await system.enroll_edge(site_id, edges / site_id)
        sites.append(SiteSpec(site_id, creds.directory, creds.next_seq, site_channels(assets)))
    return sites


@asynccontextmanager
async def control_plane(
    root: Path, pipeline: str, durability: str, params: BenchParams
) -> AsyncIterator[Target]:
    cls: type[IngestPipeline] = BaselinePipeline if pipeline == "baseline" else IngestPipeline
    state = root / f"{pipeline}-{durability}"
    system = EmbeddedSystem(
        state / "cp",
        trust_domain=TRUST_DOMAIN,
        pipeline_cls=cls,
        durable_sync=DURABILITY[durability],
    )
    await system.start()
    try:
        sites = await enroll_sites(system, params, state / "edges")
        yield Target(system, pipeline, durability, sites)
    finally:
        await system.stop()


def _percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {"n": 0}
    v = sorted(values)

    def pct(p: float) -> float:
        return round(v[min(len(v) - 1, int(p / 100.0 * len(v)))], 2)

    return {"n": len(v), "p50": pct(50), "p95": pct(95), "p99": pct(99), "max": round(v[-1], 2)}


def load_specs(
    sites: list[SiteSpec],
    procs: int,
    params: LoadParams,
    rate: float | None,
    endpoint: str = "",
    *,
    transport: str = "grpc",
    nats_servers: tuple[str, ...] = (),
    raw: bool = False,
) -> list[LoadSpec]:
    """One phase's spec for each of ``procs`` generators, the sites dealt out among them.

    ``rate`` [batches/s over all sites] is shared out by sites; None: saturation (closed
    loop with ``params.window`` batches in flight per site; a rate phase allows >= 256)."""
    window = params.window if rate is None else max(params.window, 256)
    return [
        LoadSpec(
            endpoint=endpoint,
            sites=part,
            batch_size=params.batch_size,
            window=window,
            warmup_s=params.warmup_s,
            seconds=params.seconds,
            rate_batches_per_s=None if rate is None else rate * len(part) / len(sites),
            verify_every=params.verify_every,
            transport=transport,
            nats_servers=nats_servers,
            raw=raw,
        )
        for part in split_sites(sites, procs)
    ]


def advance_sites(sites: list[SiteSpec], reports: list[LoadReport]) -> list[SiteSpec]:
    """The sites with each one's next sequence number after a phase (for the next phase
    on the same control plane)."""
    next_seq = {s.site_id: s.last_seq + 1 for r in reports for s in r.sites}
    return [
        SiteSpec(s.site_id, s.edge_dir, next_seq.get(s.site_id, s.first_seq), s.channels)
        for s in sites
    ]


class WindowStats(TypedDict):
    """What the generators saw in a phase's measured window (rates per s, times in ms)."""

    mode: str  # saturation | rate
    offered_batches_per_s: float | None
    throughput_mps: float
    batches_per_s: float
    sent_batches_per_s: float
    latency_ms: dict[str, float]
    max_schedule_lag_ms: float


def window_stats(reports: list[LoadReport], rate: float | None) -> WindowStats:
    """Rates over the longest generator window [s]; ``rate`` [batches/s] offered, or None."""
    window_s = max(r.window_s for r in reports)
    return WindowStats(
        mode="saturation" if rate is None else "rate",
        offered_batches_per_s=None if rate is None else round(rate, 1),
        throughput_mps=sum(r.window_measurements for r in reports) / window_s,
        batches_per_s=sum(r.window_batches for r in reports) / window_s,
        sent_batches_per_s=sum(r.window_sent_batches for r in reports) / window_s,
        latency_ms=_percentiles([x for r in reports for x in r.latencies_ms]),
        max_schedule_lag_ms=round(max(r.max_schedule_lag_ms for r in reports), 2),
    )


async def run_phase(
    target: Target, pool: LoadPool, params: BenchParams, phase_id: str, rate: float | None
) -> Phase:
    """One phase: saturation (closed loop) if ``rate`` is None, else ``rate`` batches/s."""
    if rate is None:
        name = f"{phase_id} {target.pipeline}, saturation ({target.durability})"
    else:
        name = f"{phase_id} full, {params.latency_load:.0%} of saturation ({target.durability})"
    specs = load_specs(target.sites, pool.size, params, rate, target.system.link_endpoints[0])
    cp, site_ids = target.system.control_plane, [s.site_id for s in target.sites]
    before = store_snapshot(cp, site_ids)
    reports, (server_cpu_s, machine_cpu_s) = await pool.run(specs)
    integrity = check_phase(cp, before, store_snapshot(cp, site_ids), reports, params.batch_size)
    target.sites = advance_sites(target.sites, reports)
    window_s = max(r.window_s for r in reports)
    generator_cpu_s = sum(r.cpu_s for r in reports)
    window_measurements = sum(r.window_measurements for r in reports)
    phase = Phase(
        phase=phase_id,
        name=name,
        pipeline=target.pipeline,
        durability=target.durability,
        **window_stats(reports, rate),
        batches_sent=integrity["batches_sent"],
        batches_committed=integrity["committed_receipts"],
        measurements_committed=sum(s.measurements_committed for r in reports for s in r.sites),
        receipts_verified=sum(r.receipts_verified for r in reports),
        server_cpu_us_per_measurement=round(server_cpu_s * 1e6 / max(1, window_measurements), 2),
        server_cpu_cores=round(server_cpu_s / window_s, 2),
        generator_cpu_cores=round(generator_cpu_s / window_s, 2),
        other_cpu_cores=(
            None
            if machine_cpu_s < 0
            else round(max(0.0, machine_cpu_s - server_cpu_s - generator_cpu_s) / window_s, 2)
        ),
        integrity=integrity,
    )
    return phase


class Checked(Protocol):
    """A phase as the run keeps it: its name and its integrity check."""

    name: str
    integrity: dict[str, Any]


PhaseT = TypeVar("PhaseT", bound=Checked)
ParamsT = TypeVar("ParamsT", bound=LoadParams)


def record(phases: list[PhaseT], phase: PhaseT) -> PhaseT:
    """Keep the phase; stop the whole run loudly if it lost or double-counted anything."""
    phases.append(phase)
    if not phase.integrity["ok"]:
        raise IntegrityError(f"{phase.name}: " + "; ".join(phase.integrity["problems"][:10]))
    return phase


def integrity_ok(phases: list[PhaseT], error: str) -> bool:
    """No error, at least one phase, and every phase's integrity check passed."""
    return not error and bool(phases) and all(p.integrity.get("ok") for p in phases)


# -- the whole run -------------------------------------------------------------------
async def _run_all(params: BenchParams, root: Path, pool: LoadPool, phases: list[Phase]) -> None:
    """Phases 1 and 3 on one control plane (full pipeline), then 2 (baseline); then, if asked,
    4 and 5: the two saturation phases with the other durability setting."""
    durabilities = ["fsync", "normal"] if params.durability == "both" else [params.durability]
    for i, d in enumerate(durabilities):
        first = i == 0
        async with control_plane(root, "full", d, params) as full:
            sat = await run_phase(full, pool, params, "1" if first else "4", None)
            record(phases, sat)
            if first:
                rate = params.latency_load * sat.batches_per_s
                record(phases, await run_phase(full, pool, params, "3", rate))
        async with control_plane(root, "baseline", d, params) as base:
            record(phases, await run_phase(base, pool, params, "2" if first else "5", None))


def fsync_latency_ms(directory: Path, n: int = 20) -> float:
    """Median time [ms] of a 4 KiB write + fsync in ``directory`` (a group commit waits this)."""
    path = directory / "fsync-probe"
    times = []
    with path.open("wb") as f:
        for _ in range(n):
            f.write(os.urandom(4096))
            f.flush()
            t = time.perf_counter()
            os.fsync(f.fileno())
            times.append((time.perf_counter() - t) * 1000.0)
    path.unlink()
    return round(sorted(times)[n // 2], 3)


def _summarize(
    params: BenchParams, phases: list[Phase], error: str, machine: dict[str, Any]
) -> dict[str, Any]:
    phases = sorted(phases, key=lambda p: p.phase)
    sat = {(p.pipeline, p.durability): p for p in phases if p.mode == "saturation"}
    ratio = {
        d: round(sat[("full", d)].throughput_mps / sat[("baseline", d)].throughput_mps, 3)
        for d in DURABILITY
        if ("full", d) in sat and ("baseline", d) in sat and sat[("baseline", d)].throughput_mps
    }
    by_cpu = {
        d: round(
            sat[("baseline", d)].server_cpu_us_per_measurement
            / sat[("full", d)].server_cpu_us_per_measurement,
            3,
        )
        for d in ratio
        if sat[("full", d)].server_cpu_us_per_measurement
    }
    ok = integrity_ok(phases, error)
    headline = next((p for p in phases if p.phase == "1"), None)
    latency = next((p for p in phases if p.phase == "3"), None)
    thr = headline.throughput_mps if headline else None
    p99 = latency.latency_ms.get("p99") if latency else None
    return {
        **result_head("ingest", machine, params),
        "phases": [asdict(p) for p in phases],
        "ratio_full_over_baseline": ratio,
        "ratio_full_over_baseline_by_cpu": by_cpu,
        "targets": {
            "throughput_mps": {
                "target": TARGET_THROUGHPUT_MPS,
                "durability": headline.durability if headline else None,
                "measured": None if thr is None else round(thr),
                "met": ok and thr is not None and thr >= TARGET_THROUGHPUT_MPS,
            },
            "p99_latency_ms": {
                "target": TARGET_P99_MS,
                "at_load_mps": (
                    round(latency.sent_batches_per_s * params.batch_size) if latency else None
                ),
                "measured": p99,
                "met": ok and p99 is not None and p99 < TARGET_P99_MS,
            },
        },
        "contended_phases": [
            p.phase
            for p in phases
            if p.other_cpu_cores is not None and p.other_cpu_cores > BUSY_MACHINE_CORES
        ],
        "integrity_ok": ok,
        "error": error,
    }


def result_head(
    benchmark: str, machine: dict[str, Any], params: DataclassInstance
) -> dict[str, Any]:
    """The first keys of a result: what ran, when, on which machine, with which parameters."""
    parameters = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(params).items()}
    return {
        "benchmark": benchmark,
        "finished_utc": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine,
        "parameters": parameters
        | {"samples_per_device": SAMPLES_PER_DEVICE, "trust_domain": TRUST_DOMAIN},
    }


def machine_info(scratch: Path) -> dict[str, Any]:
    return {
        "cpu_count": os.cpu_count(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "fsync_4k_median_ms": fsync_latency_ms(scratch),
    }


def run_phases(
    params: ParamsT,
    prefix: str,
    run_all: Callable[[ParamsT, Path, LoadPool, list[PhaseT]], Coroutine[Any, Any, None]],
    summarize: Callable[[ParamsT, list[PhaseT], str, dict[str, Any]], dict[str, Any]],
) -> dict[str, Any]:
    """``run_all`` in a scratch directory (named ``prefix``...) with a pool of generators;
    an integrity failure ends the run and goes into the summary's ``error``."""
    phases: list[PhaseT] = []
    error = ""
    with tempfile.TemporaryDirectory(prefix=prefix, dir=params.state_dir) as tmp:
        machine = machine_info(Path(tmp))
        pool = LoadPool(min(params.load_procs, params.sites))
        try:
            asyncio.run(run_all(params, Path(tmp), pool, phases))
        except IntegrityError as e:
            error = f"integrity: {e}"
        finally:
            pool.close()
    return summarize(params, phases, error, machine)


def run_benchmark(params: BenchParams) -> dict[str, Any]:
    """Run every phase; the JSON-ready result has ``integrity_ok`` False if data was lost."""
    return run_phases(params, "gridfort-bench-", _run_all, _summarize)


def write_result(
    result: dict[str, Any], path: Path, print_table: Callable[[dict[str, Any]], None]
) -> int:
    """Write the JSON to ``path``, print the table; the exit code: 1 if data was lost."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    print_table(result)
    print(f"JSON written to {path}")
    return 0 if result["integrity_ok"] else 1


def run_cli(args: argparse.Namespace) -> int:
    params = BenchParams(
        sites=args.sites,
        durability=getattr(args, "durability", "both"),
        **load_args(args),
    )
    return write_result(run_benchmark(params), args.json, print_report)
