"""``gridfort detect score``: verdicts of the shipped deep detector for a table of snapshots.

``--input FILE.parquet`` holds ``t`` and the grid's layout columns (the price column of
generated datasets may be present); ``--output VERDICTS.parquet`` gets the same rows in
the same order with ``t``, ``score``, ``attacked`` and one bool column per input
measurement column (see :mod:`detection.score_frame`). ``--history CLEAN.parquet``, about
two weeks of the operator's clean data in the same layout, adapts the detector's model of
normal operation and its thresholds first (:func:`detection.models.detector.adapt`).
Verdicts are both stages of the detector (:func:`detection.models.detector.judge`): the
row test, whose score is the ``score`` column, and the ramp stage.

Wiring: ``register_score(detect_sub)`` from ``control_plane/cli/detect.py``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from detection.grid import GRID_NAMES


def register_score(detect_sub: Any) -> None:
    """Add ``score`` to the ``detect`` action subparsers."""
    p = detect_sub.add_parser(
        "score",
        help="judge every measurement of a Parquet table with the shipped deep detector",
    )
    p.add_argument("--grid", choices=GRID_NAMES, default="case118")
    p.add_argument("--input", type=Path, required=True, help="FILE.parquet: t + layout columns")
    p.add_argument("--output", type=Path, required=True, help="VERDICTS.parquet to write")
    p.add_argument(
        "--history",
        type=Path,
        default=None,
        help="CLEAN.parquet: about two weeks of clean data of this grid; adapts the model first",
    )
    p.add_argument(
        "--target-fpr",
        type=float,
        default=None,
        help="false-positive rate to recalibrate to with --history (default: the model's)",
    )
    p.set_defaults(handler=detect_score)


def _check_paths(args: argparse.Namespace) -> None:
    for flag, path in (("--input", args.input), ("--output", args.output)):
        if not path.name.endswith(".parquet"):
            raise ValueError(f"{flag} must end in .parquet, got {path}")
    inputs = [args.input] + ([args.history] if args.history is not None else [])
    for path in inputs:
        if not path.is_file():
            raise ValueError(f"{path}: no such file")
    out = args.output.resolve()
    if any(out == p.resolve() for p in inputs):
        raise ValueError("--output must not overwrite --input or --history")
    if args.target_fpr is not None:
        if not 0.0 < args.target_fpr < 1.0:
            raise ValueError(f"--target-fpr must be in (0, 1), got {args.target_fpr}")
        if args.history is None:
            raise ValueError("--target-fpr needs --history (clean data to recalibrate on)")


def _model_version(grid: str) -> str:
    """``grid@<first 12 hex of the shipped file's SHA-256>`` (as the live gate names it)."""
    import hashlib

    from detection.models.registry import shipped_model_path

    digest = hashlib.sha256(shipped_model_path(grid).read_bytes()).hexdigest()
    return f"{grid}@{digest[:12]}"


def _log(message: str) -> None:
    print(f"detect score: {message}", file=sys.stderr, flush=True)


def detect_score(args: argparse.Namespace) -> int:
    from detection.dataset import read_table, write_table
    from detection.models.detector import adapt, judge
    from detection.models.registry import load_shipped_model
    from detection.score_frame import measurement_matrix, verdict_frame

    _check_paths(args)
    started = time.perf_counter()
    model = load_shipped_model(args.grid)
    layout = model.layout
    frame, _ = read_table(args.input)
    table = measurement_matrix(frame, layout, where=str(args.input))
    adapted = False
    if args.history is not None:
        hist_frame, _ = read_table(args.history)
        history = measurement_matrix(hist_frame, layout, where=str(args.history))
        _log(f"adapting to {len(history.t)} clean history rows")
        model = adapt(model, history.x, target_fpr=args.target_fpr)
        adapted = True
    # both stages: the row test (``score``) and the ramp stage, in row order
    j = judge(model, table.x)
    attacked, flagged = j.attacked, j.flagged
    out = verdict_frame(table, layout, j.rows, attacked, flagged)
    metadata = {
        "grid": args.grid,
        "input": str(args.input),
        "adapted_to_history": adapted,
        "row_threshold": float(model.row_threshold),
        "ramp_threshold": float(model.ramp_threshold) if model.ramp_scale is not None else None,
        "target_fpr": float(model.target_fpr),
        "model": _model_version(args.grid),
    }
    write_table(args.output, out, metadata)
    elapsed = time.perf_counter() - started
    n_att = int(attacked.sum())
    print(
        f"wrote {args.output}: {len(out)} rows of {args.grid}, {n_att} attacked "
        f"({n_att / len(out):.1%}), {int(flagged.sum())} measurements flagged "
        f"({'adapted to history' if adapted else 'shipped calibration'}; {elapsed:.1f} s)"
    )
    return 0
