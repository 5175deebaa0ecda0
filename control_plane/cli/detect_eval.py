"""``gridfort detect eval``: every detector side by side on one labelled dataset.

Prints a scorecard table and writes JSON (default ``benchmarks/results/detect_<grid>.json``).
Data: ``--data FILE.parquet`` (with ``FILE.labels.parquet``; split 50/20/30 % in time
order) or ``--steps N`` generated rows (40/20/40 %, attacks only in the test segment).

``--held-out`` generates the held-out scenario (:data:`detection.scenarios.HELD_OUT`:
seeds, noise, load pattern and attack regions no training run sees): two weeks of
clean history that every detector fits on (the deep detector adapts to it exactly as
``detect score --history`` does), 11 clean days to calibrate thresholds on, then the
attacked test period (``--steps`` in total, default 5,000).

After the detectors, four more rows (:mod:`detection.evaluate_stages`): ``gnn+ramp``
(the deep detector's row test and ramp stage, sharing the target FPR), ``gnn+physics``
(the row test and the physics ramp stage, :mod:`detection.models.physics_ramp`, sharing
it), ``price`` (the price check) and ``gate`` (``gnn+ramp`` OR ``price``, each part
calibrated at half the target FPR so that the union keeps it; recall over every attack).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from detection.grid import GRID_NAMES

DEFAULT_STEPS = 2000
DEFAULT_ATTACK_RATE = 0.35
DEFAULT_TARGET_FPR = 0.001
GENERATED_SHARES = (0.4, 0.2)  # train, validation; the rest is the attacked test segment
#: --held-out: rows of clean history (two weeks) and of clean validation (11 days)
HELD_OUT_ROWS = (1344, 1056)
HELD_OUT_STEPS = 5000


def register_eval(detect_sub: Any) -> None:
    """Add ``eval`` to the ``detect`` subparsers (``detect_sub`` from ``add_subparsers``)."""
    p = detect_sub.add_parser(
        "eval", help="scorecard of every detector (AUC, recall at calibrated FPR, localization)"
    )
    p.add_argument("--grid", choices=GRID_NAMES, default="case118")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--data", type=Path, default=None, help="labelled FILE.parquet to evaluate on")
    src.add_argument(
        "--steps", type=int, default=None, help=f"generate N rows (default {DEFAULT_STEPS})"
    )
    p.add_argument(
        "--held-out",
        action="store_true",
        help="generate the held-out scenario (other seeds, noise, load pattern, regions)",
    )
    p.add_argument(
        "--seed",
        type=int,
        default=None,
        help="generation seed (default 0; with --held-out the held-out seed, and at least it)",
    )
    p.add_argument(
        "--attack-rate",
        type=float,
        default=DEFAULT_ATTACK_RATE,
        help=f"share of attacked test rows with --steps (default {DEFAULT_ATTACK_RATE})",
    )
    p.add_argument("--json", type=Path, default=None, help="output JSON path")
    p.add_argument(
        "--target-fpr",
        type=float,
        default=DEFAULT_TARGET_FPR,
        help=f"calibrated FPR (default {DEFAULT_TARGET_FPR})",
    )
    p.add_argument("--detectors", nargs="+", default=None, help="names to run (default: all)")
    p.add_argument(
        "--wls-rows", type=int, default=200, help="rows WLS scores per segment (it is slow)"
    )
    p.add_argument("--workers", type=int, default=None, help="power-flow processes")
    p.set_defaults(handler=detect_eval)


def _load(args: argparse.Namespace) -> tuple[Any, Any, Any, dict[str, Any]]:
    from detection.dataset import read_dataset
    from detection.evaluate import evaluation_data, generated_evaluation_data, time_split
    from detection.generate import PRICE_COLUMN, NoiseModel, nominal_snapshot
    from detection.grid import load_grid
    from detection.layout import build_layout

    if args.data is not None:
        if args.held_out:
            raise ValueError("--held-out generates its data; it cannot be combined with --data")
        layout = build_layout(load_grid(args.grid))
        ds = read_dataset(args.data, expected_columns=[*layout.columns, PRICE_COLUMN])
        data = evaluation_data(ds, args.grid, layout)
        noise = ds.metadata.get("noise")
        std = NoiseModel(**noise).std(layout, nominal_snapshot(args.grid)) if noise else None
        source: dict[str, Any] = {"data": str(args.data), "split": "50/20/30 % in time order"}
        return data, time_split(len(data.kinds)), std, source
    if not 0.0 < args.attack_rate < 1.0:
        raise ValueError(f"--attack-rate must be in (0, 1), got {args.attack_rate}")
    if args.held_out:
        return _held_out(args)
    steps = args.steps if args.steps is not None else DEFAULT_STEPS
    if steps < 100:
        raise ValueError(f"--steps must be at least 100, got {steps}")
    seed = args.seed if args.seed is not None else 0
    data, split, std = generated_evaluation_data(
        args.grid,
        steps,
        seed=seed,
        attack_rate=args.attack_rate,
        train_share=GENERATED_SHARES[0],
        validation_share=GENERATED_SHARES[1],
        workers=args.workers,
    )
    source = {
        "steps": steps,
        "seed": seed,
        "attack_rate": args.attack_rate,
        "split": "40/20/40 % in time order, attacks only in the test segment",
    }
    return data, split, std, source


def _held_out(args: argparse.Namespace) -> tuple[Any, Any, Any, dict[str, Any]]:
    from detection.evaluate import generated_evaluation_data
    from detection.scenarios import HELD_OUT, HELD_OUT_SEED

    steps = args.steps if args.steps is not None else HELD_OUT_STEPS
    history, validation = HELD_OUT_ROWS
    if steps < history + validation + 200:
        raise ValueError(f"--steps must be at least {history + validation + 200} with --held-out")
    seed = args.seed if args.seed is not None else HELD_OUT.seed
    if seed < HELD_OUT_SEED:
        raise ValueError(f"--held-out needs a seed of at least {HELD_OUT_SEED}, got {seed}")
    data, split, std = generated_evaluation_data(
        args.grid,
        steps,
        seed=seed,
        attack_rate=args.attack_rate,
        train_share=history / steps,
        validation_share=validation / steps,
        workers=args.workers,
        scenario=HELD_OUT,
    )
    source = {
        "held_out": True,
        "steps": steps,
        "seed": seed,
        "attack_rate": args.attack_rate,
        "scenario": {k: v for k, v in HELD_OUT.to_json().items() if k != "seed"},
        "split": f"{history} clean history rows (fit / adapt), {validation} clean validation "
        "rows (thresholds), then the attacked test segment, in time order",
    }
    return data, split, std, source


def _select(all_detectors: list[Any], names: list[str] | None) -> list[Any]:
    if not names:
        return all_detectors
    by_name = {d.name: d for d in all_detectors}
    unknown = [n for n in names if n not in by_name]
    if unknown:
        raise ValueError(
            f"unknown detector(s) {', '.join(unknown)}; available: {', '.join(by_name)}"
        )
    return [by_name[n] for n in names]


def _fmt(x: float | None, digits: int = 3) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def _tables(cards: list[Any], target_fpr: float, bound: Any = None) -> list[Any]:
    """The scorecard (one row per detector) and the recall per attack kind.

    ``bound``: a :class:`detection.bounds.RecallBound`, shown as the last row of both.
    """
    from rich.table import Table

    main = Table(title=f"detect eval: {cards[0].grid}, thresholds at {target_fpr:.2%} FPR")
    # gnn+ramp: row test and ramp stage sharing the target; price: the price check (its
    # attacked rows are the price rows); gate: gnn+ramp OR price, each at half the target,
    # every attack counted
    for col in ["detector", "AUC", "recall", "FPR", "loc F1", "ramp delay", "rows/s"]:
        main.add_column(col, justify="left" if col == "detector" else "right")
    kinds = sorted({k for c in cards for k in c.recall_per_kind})
    per_kind = Table(title="recall per attack kind")
    per_kind.add_column("detector")
    for k in kinds:
        per_kind.add_column(k, justify="right")
    for c in cards:
        delay = (
            "n/a"
            if c.subsampled or c.ramp_episodes == 0
            else f"{_fmt(c.ramp_delay_mean_steps, 1)} ({c.ramps_detected}/{c.ramp_episodes})"
        )
        name = f"{c.detector}*" if c.subsampled else c.detector
        main.add_row(
            name,
            _fmt(c.auc),
            _fmt(c.recall),
            _fmt(c.false_positive_rate),
            _fmt(c.localization_f1),
            delay,
            f"{c.rows_per_s:,.0f}",
        )
        per_kind.add_row(name, *[_fmt(c.recall_per_kind.get(k), 2) for k in kinds])
        if c.own_threshold is not None:
            # own calibration: the gate's, and `detect score --history --no-physics`'s
            own = f"{c.detector} (own calibration)"
            main.add_row(
                own,
                "",
                _fmt(c.own_recall),
                _fmt(c.own_false_positive_rate),
                _fmt(c.own_localization_f1),
                "",
                "",
            )
            own_kinds = c.own_recall_per_kind or {}
            per_kind.add_row(own, *[_fmt(own_kinds.get(k), 2) for k in kinds])
    if bound is not None:
        name = "bound: any detector (+)"
        main.add_row(name, "", _fmt(bound.recall), _fmt(target_fpr), "", "", "")
        per_kind.add_row(name, *[_fmt(bound.per_kind.get(k), 2) for k in kinds])
    return [main, per_kind]


def _recall_bound(data: Any, std: Any, target_fpr: float) -> tuple[Any, str | None]:
    """The Neyman-Pearson recall bound of generated data, or None and why not."""
    from detection.bounds import recall_bound

    if data.injected is None or std is None:
        return None, "needs generated data (what each attack changed and the noise model)"
    try:
        return recall_bound(data.injected, std, data.kinds, target_fpr), None
    except ValueError as e:
        return None, str(e)


def detect_eval(args: argparse.Namespace) -> int:
    from rich.console import Console

    from detection.evaluate import (
        BASELINE_NAMES,
        baseline_detectors,
        evaluate,
        optional_detectors,
        stderr_progress,
    )
    from detection.evaluate_stages import stage_scorecards

    if not 0.0 < args.target_fpr < 1.0:
        raise ValueError(f"--target-fpr must be in (0, 1), got {args.target_fpr}")
    if args.wls_rows < 10:
        raise ValueError(f"--wls-rows must be at least 10, got {args.wls_rows}")
    optional = optional_detectors()
    known = [*(d.name for d in optional), *BASELINE_NAMES]
    unknown = [n for n in args.detectors or [] if n not in known]
    if unknown:
        raise ValueError(f"unknown detector(s) {', '.join(unknown)}; available: {', '.join(known)}")
    stderr_progress("preparing data")
    data, split, std, source = _load(args)
    detectors = _select(
        [*optional, *baseline_detectors(args.grid, std, wls_max_rows=args.wls_rows)],
        args.detectors,
    )
    result = evaluate(
        data, detectors, target_fpr=args.target_fpr, split=split, progress=stderr_progress
    )
    if not result.scorecards:
        raise ValueError(f"no detector could run: {result.skipped}")
    stderr_progress("evaluating the ramp stages, the price check and the gate")
    staged, stage_skipped = stage_scorecards(data, split, detectors, target_fpr=args.target_fpr)
    cards = [*result.scorecards, *staged]
    skipped = {**result.skipped, **stage_skipped}
    bound, no_bound = _recall_bound(data, std, args.target_fpr)
    console = Console()
    for table in _tables(cards, args.target_fpr, bound):
        console.print(table)
    if bound is not None:
        print(
            "(+) the most any detector can recall at this FPR, even knowing the true state, "
            "the noise and each attack's exact change (Neyman-Pearson; detection/bounds.py)"
        )
    if all(c.attacked_rows == 0 for c in cards):
        print("note: the test segment holds no measurement attack: use more rows or attacks")
    for name, reason in skipped.items():
        print(f"skipped {name}: {reason}")
    if any(c.subsampled for c in cards):
        print("* scored on a subsample of rows (slow detector); see notes in the JSON")
    out: Path = args.json or Path(f"benchmarks/results/detect_{args.grid}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "grid": args.grid,
        "target_fpr": args.target_fpr,
        "source": source,
        "rows": len(data.kinds),
        "measurements": len(data.layout),
        "split": {
            name: [s.start, s.stop]
            for name, s in (
                ("train", split.train),
                ("validation", split.validation),
                ("test", split.test),
            )
        },
        "scorecards": [c.to_dict() for c in cards],
        "recall_bound": bound.to_dict() if bound is not None else {"skipped": no_bound},
        "skipped": skipped,
    }
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}", file=sys.stderr)
    return 0
