"""``gridfort bench ...``: the measured promises (see ``benchmarks/``)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def register(sub: Any) -> None:
    bench = sub.add_parser("bench", help="run a benchmark; prints a table and writes JSON")
    bench_sub = bench.add_subparsers(dest="bench_command", metavar="BENCHMARK", required=True)
    from control_plane.cli import bench_detector, bench_fanout

    bench_fanout.register(bench_sub)
    bench_detector.register(bench_sub)
    p = bench_sub.add_parser(
        "ingest",
        help="measurements/s through the full pipeline: over gRPC vs. a no-security baseline, "
        "or over NATS with 1..n ingest workers vs. raw NATS",
    )
    p.add_argument(
        "--transport",
        choices=("grpc", "nats"),
        default="grpc",
        help="grpc: one control plane, baseline ratio; nats: embedded JetStream, ingest "
        "worker processes (--workers), raw NATS ratio",
    )
    p.add_argument(
        "--workers",
        default="1,2",
        help="NATS: ingest worker counts to measure, comma-separated (default 1,2)",
    )
    p.add_argument(
        "--partitions", type=int, default=8, help="NATS: partitions of the telemetry stream"
    )
    p.add_argument(
        "--json",
        type=Path,
        default=None,
        help="default benchmarks/results/ingest.json (ingest-nats.json over NATS)",
    )
    p.add_argument(
        "--sites",
        type=int,
        default=None,
        help="concurrent enrolled edges (default 8 over gRPC, 32 over NATS)",
    )
    p.add_argument("--batch-size", type=int, default=250, help="measurements per batch")
    p.add_argument("--seconds", type=float, default=5.0, help="measured duration of each phase [s]")
    p.add_argument("--warmup", type=float, default=1.0, help="warm-up before each phase [s]")
    p.add_argument("--window", type=int, default=16, help="batches in flight per edge")
    p.add_argument("--load-procs", type=int, default=1, help="load generator processes")
    p.add_argument(
        "--durability",
        choices=("fsync", "normal", "both"),
        default="both",
        help="fsync: durable_sync=True (headline); normal: synchronous=NORMAL; both "
        "(gRPC only; over NATS 'both' means fsync)",
    )
    p.add_argument(
        "--latency-load", type=float, default=0.5, help="latency phase load, fraction of saturation"
    )
    p.add_argument(
        "--verify-every", type=int, default=1, help="verify every n-th receipt signature (0: none)"
    )
    p.add_argument("--state-dir", type=Path, default=None, help="parent of the scratch state")
    p.set_defaults(handler=bench_ingest)
    p = bench_sub.add_parser(
        "policy", help="market policy decision latency p50/p99 and decisions/s (embedded Rego)"
    )
    from benchmarks.policy import add_arguments

    add_arguments(p)
    p.set_defaults(handler=bench_policy)
    p = bench_sub.add_parser(
        "optimizer",
        help="day-ahead schedule for a 100,000-asset fleet by aggregation; revenue gap at 1,000",
    )
    from benchmarks.optimizer import add_arguments as optimizer_arguments

    optimizer_arguments(p)
    p.set_defaults(handler=bench_optimizer)


def bench_ingest(args: argparse.Namespace) -> int:
    if args.transport == "nats":
        from benchmarks.ingest_nats import run_cli as run_nats

        if args.json is None:
            args.json = Path("benchmarks/results/ingest-nats.json")
        return run_nats(args)
    from benchmarks.ingest import run_cli

    if args.json is None:
        args.json = Path("benchmarks/results/ingest.json")
    if args.sites is None:
        args.sites = 8
    return run_cli(args)


def bench_policy(args: argparse.Namespace) -> int:
    from benchmarks.policy import run_cli

    return run_cli(args)


def bench_optimizer(args: argparse.Namespace) -> int:
    from benchmarks.optimizer import run_cli

    return run_cli(args)
