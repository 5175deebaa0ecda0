"""``gridfort bench fanout``: local FFR latency at the edge, and operator-signalled activation
fanned out to 1,000 sites carrying 100,000 assets (``benchmarks/fanout.py``)."""

from __future__ import annotations

import argparse
from typing import Any


def register(bench_subparsers: Any) -> None:
    """Add ``fanout`` to the ``gridfort bench`` sub-commands."""
    from benchmarks.fanout import add_arguments

    p = bench_subparsers.add_parser(
        "fanout",
        help="FFR at the edge (p50/p99) and an activation fanned out to 1,000 sites / 100k assets",
    )
    add_arguments(p)
    p.set_defaults(handler=bench_fanout)


def bench_fanout(args: argparse.Namespace) -> int:
    from benchmarks.fanout import run_cli

    return run_cli(args)
