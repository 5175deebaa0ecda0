"""Detection commands: ``detect generate``, ``train``, ``eval`` and ``score``."""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from detection.grid import GRID_NAMES

DEFAULT_ATTACK_RATE = 0.05
PROGRESS_MIN_STEPS = 500


def register(sub: Any) -> None:
    detect = sub.add_parser("detect", help="false-data-injection detection: datasets and models")
    detect_sub = detect.add_subparsers(dest="detect_command", metavar="ACTION", required=True)
    p = detect_sub.add_parser(
        "generate",
        help="generate a labelled dataset of 15-minute snapshots with attacks (Parquet)",
    )
    p.add_argument("--grid", choices=GRID_NAMES, default="case118")
    p.add_argument("--steps", type=int, required=True, help="number of 15-minute snapshots")
    p.add_argument(
        "--out", type=Path, required=True, help="FILE.parquet (labels go to FILE.labels.parquet)"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--attack-rate",
        type=float,
        default=DEFAULT_ATTACK_RATE,
        help=f"share of attacked rows, in [0, 1) (default {DEFAULT_ATTACK_RATE})",
    )
    p.add_argument(
        "--workers", type=int, default=None, help="power-flow processes (default: cores)"
    )
    p.set_defaults(handler=detect_generate)
    from control_plane.cli.detect_eval import register_eval

    register_eval(detect_sub)
    from control_plane.cli.detect_train import register_train

    register_train(detect_sub)
    from control_plane.cli.detect_score import register_score

    register_score(detect_sub)


def _progress(started: float) -> Any:
    def report(done: int, total: int) -> None:
        elapsed = time.perf_counter() - started
        print(
            f"detect generate: {done}/{total} steps ({elapsed:.1f} s)", file=sys.stderr, flush=True
        )

    return report


def detect_generate(args: argparse.Namespace) -> int:
    from detection.attacks import inject_attacks
    from detection.dataset import write_dataset
    from detection.generate import generate_series

    out: Path = args.out
    if args.steps < 1:
        raise ValueError(f"--steps must be at least 1, got {args.steps}")
    if not 0.0 <= args.attack_rate < 1.0:
        raise ValueError(f"--attack-rate must be in [0, 1), got {args.attack_rate}")
    if not out.name.endswith(".parquet"):
        raise ValueError(f"--out must end in .parquet, got {out}")
    if args.workers is not None and args.workers < 1:
        raise ValueError(f"--workers must be at least 1, got {args.workers}")
    started = time.perf_counter()
    progress = _progress(started) if args.steps >= PROGRESS_MIN_STEPS else None
    series = generate_series(
        args.grid, args.steps, seed=args.seed, workers=args.workers, progress=progress
    )
    pf_s = time.perf_counter() - started
    attacked = inject_attacks(series, rate=args.attack_rate, seed=args.seed + 1)
    metadata = {
        "grid": args.grid,
        "seed": args.seed,
        "steps": args.steps,
        "step_minutes": 15,
        "attack_rate": args.attack_rate,
        "noise": dataclasses.asdict(series.noise),
        "retried_steps": series.retried_steps,
        "episodes": [dataclasses.asdict(e) for e in attacked.episodes],
    }
    write_dataset(out, attacked.data, attacked.labels, metadata)
    kinds = Counter(e.kind for e in attacked.episodes)
    n_attacked = int((attacked.labels["attack"] != "none").sum())
    summary = ", ".join(f"{k} {n}" for k, n in sorted(kinds.items())) or "none"
    print(
        f"wrote {out} and its labels: {args.steps} rows x {len(series.layout)} measurements "
        f"of {args.grid}; {n_attacked} attacked rows in {len(attacked.episodes)} episodes "
        f"({summary}); power flow {args.steps / pf_s:.0f} steps/s"
    )
    if series.retried_steps:
        print(
            f"note: {len(series.retried_steps)} steps did not converge at first and were "
            "recomputed at a milder operating point (listed in the file metadata)"
        )
    return 0
