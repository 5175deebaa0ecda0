"""``gridfort bench ...``: the measured promises (see ``benchmarks/``)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def register(sub: Any) -> None:
    bench = sub.add_parser("bench", help="run a benchmark; prints a table and writes JSON")
    bench_sub = bench.add_subparsers(dest="bench_command", metavar="BENCHMARK", required=True)
    p = bench_sub.add_parser(
        "ingest", help="measurements/s through the full gRPC pipeline vs. a no-security baseline"
    )
    p.add_argument("--json", type=Path, default=Path("benchmarks/results/ingest.json"))
    p.add_argument("--sites", type=int, default=8, help="concurrent edge streams")
    p.add_argument("--batch-size", type=int, default=250, help="measurements per batch")
    p.add_argument("--seconds", type=float, default=8.0, help="duration of each phase [s]")
    p.set_defaults(handler=bench_ingest)


def bench_ingest(args: argparse.Namespace) -> int:
    from benchmarks.ingest import run_cli

    return run_cli(args)
