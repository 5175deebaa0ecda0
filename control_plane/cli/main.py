"""``gridfort``: one CLI for operators, edges, the demo and the benchmarks.

User mistakes end as one clear line on stderr and exit status 2; a refused
operation exits 3; nothing prints a traceback unless ``--debug`` is given.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence

from control_plane.cli import admin, run
from control_plane.cli import alerts as alerts_cli
from control_plane.cli import bench as bench
from control_plane.cli import demo_cmd as demo_cmd
from control_plane.cli import detect as detect_cli
from control_plane.cli import forecast as forecast_cli
from control_plane.cli import market as market_cli
from control_plane.cli import nats as nats_cli
from control_plane.cli import optimize as optimize_cli
from control_plane.cli import policy as policy_cli
from security.refusals import GridfortError, RefusedError

Handler = Callable[[argparse.Namespace], int]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gridfort",
        description="Gridfort: a zero-trust control plane for virtual power plants.",
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    admin.register(sub)
    run.register(sub)
    demo_cmd.register(sub)
    bench.register(sub)
    policy_cli.register(sub)
    nats_cli.register(sub)
    detect_cli.register(sub)
    market_cli.register(sub)
    optimize_cli.register(sub)
    forecast_cli.register(sub)
    alerts_cli.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.DEBUG if args.debug else logging.INFO if args.verbose else logging.WARNING
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    handler: Handler = args.handler
    try:
        return handler(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except RefusedError as e:
        if args.debug:
            raise
        print(f"gridfort: refused: {e}", file=sys.stderr)
        return 3
    except (GridfortError, ValueError, OSError) as e:
        if args.debug:
            raise
        print(f"gridfort: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
