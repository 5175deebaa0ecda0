"""``gridfort bench detector``: deep-detector throughput and latency vs. the PCA-Q baseline.

Wiring (in ``control_plane/cli/bench.py``, inside ``register`` after the other
benchmarks): ``from control_plane.cli import bench_detector; bench_detector.register(bench_sub)``.
"""

from __future__ import annotations

import argparse
from typing import Any


def register(bench_subparsers: Any) -> None:
    """Add ``detector`` to the ``bench`` subparsers."""
    from benchmarks.detector import add_arguments

    p = bench_subparsers.add_parser(
        "detector",
        help="deep detector snapshots/s (batch) and per-snapshot latency vs. PCA-Q, same run",
    )
    add_arguments(p)
    p.set_defaults(handler=bench_detector)


def bench_detector(args: argparse.Namespace) -> int:
    from benchmarks.detector import run_cli

    return run_cli(args)
