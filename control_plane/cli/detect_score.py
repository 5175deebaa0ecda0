"""``gridfort detect score``: verdicts of the shipped deep detector for a table of snapshots.

``--input FILE.parquet`` holds ``t`` and the grid's layout columns (the price column of
generated datasets may be present); ``--output VERDICTS.parquet`` gets the same rows in
the same order with ``t``, ``score``, ``attacked`` and one bool column per input
measurement column (see :mod:`detection.score_frame`).

Without ``--history``: the shipped model with its own calibration, both stages of the
deep detector (:func:`detection.models.detector.judge`): the row test, whose score is
the ``score`` column, and its ramp stage. No physics ramp stage (it is fitted on the
operator's clean history, and there is none).

With ``--history CLEAN.parquet`` (at least a week, about two weeks, of the operator's
clean data in the same layout): the deep detector is adapted to it
(:func:`detection.models.detector.adapt`) at half of the target false-positive rate
(``--target-fpr``, default the model's) and the physics ramp stage
(:mod:`detection.models.physics_ramp`, ~50 s on case118) is fitted on the same rows at
the other half (:data:`detection.models.physics_ramp.PHYSICS_FPR_SHARE`), so the union keeps
the target; ``attacked`` is either's flag, the measurement columns the deep detector's
flagged cells or the element the physics stage flagged
(:mod:`detection.models.deep_physics`). ``score`` stays the deep row score.
``--no-physics``: the deep detector alone, adapted at the whole target (as before the
stage). A stage that cannot be fitted is an error, never skipped silently.

Wiring: ``register_score(detect_sub)`` from ``control_plane/cli/detect.py``.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from detection.grid import GRID_NAMES

if TYPE_CHECKING:
    import numpy as np

    from detection.models.artifacts import TrainedModel


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
        help="CLEAN.parquet: about two weeks of clean data of this grid; adapts the model and "
        "fits the physics ramp stage on it first (without: the shipped calibration)",
    )
    p.add_argument(
        "--target-fpr",
        type=float,
        default=None,
        help="false-positive rate to recalibrate to with --history (default: the model's); "
        "split between the deep detector and the physics ramp stage (unless --no-physics)",
    )
    p.add_argument(
        "--no-physics",
        action="store_true",
        help="with --history: leave out the physics ramp stage (the deep detector alone, "
        "at the whole target); without --history the stage is never used (no history "
        "to fit it on)",
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
    if args.no_physics and args.history is None:
        raise ValueError("--no-physics needs --history (without it there is no physics stage)")


def _model_version(grid: str) -> str:
    """``grid@<first 12 hex of the shipped file's SHA-256>`` (as the live gate names it)."""
    import hashlib

    from detection.models.registry import shipped_model_path

    digest = hashlib.sha256(shipped_model_path(grid).read_bytes()).hexdigest()
    return f"{grid}@{digest[:12]}"


def _log(message: str) -> None:
    print(f"detect score: {message}", file=sys.stderr, flush=True)


@dataclass(frozen=True, slots=True)
class _Verdicts:
    """What the output table and its metadata need from either path."""

    model: TrainedModel
    rows: np.ndarray  # the deep row score (the ``score`` column)
    attacked: np.ndarray
    flagged: np.ndarray
    metadata: dict[str, Any]
    physics_only: int | None = None  # rows only the physics stage flagged


def _shipped_verdicts(model: TrainedModel, x: np.ndarray) -> _Verdicts:
    from detection.models.detector import judge

    # both stages of the shipped model: the row test (``score``) and its ramp stage
    j = judge(model, x)
    return _Verdicts(model, j.rows, j.attacked, j.flagged, {"target_fpr": float(model.target_fpr)})


def _adapted_verdicts(
    args: argparse.Namespace, model: TrainedModel, x: np.ndarray, history_x: np.ndarray
) -> _Verdicts:
    """Adapt to the history (and fit the physics stage unless ``--no-physics``); judge ``x``."""
    from detection.models.deep_physics import adapt_with_physics, judge_with_physics
    from detection.models.detector import adapt, judge
    from detection.models.physics_ramp import PHYSICS_FPR_SHARE, PHYSICS_SEED

    if args.no_physics:
        _log(f"adapting to {len(history_x)} clean history rows")
        adapted = adapt(model, history_x, target_fpr=args.target_fpr)
        j = judge(adapted, x)
        meta = {"target_fpr": float(adapted.target_fpr)}
        return _Verdicts(adapted, j.rows, j.attacked, j.flagged, meta)
    started = time.perf_counter()

    def progress(message: str) -> None:  # each step with the time since adapting began
        _log(f"[{time.perf_counter() - started:.1f} s] {message}")

    pair = adapt_with_physics(
        model,
        args.grid,
        history_x,
        args.target_fpr,
        physics_share=PHYSICS_FPR_SHARE,
        seed=PHYSICS_SEED,
        progress=progress,
    )
    progress("adapted and fitted")
    stage = pair.stage
    meta = {
        "target_fpr": pair.target_fpr,
        "deep_target_fpr": float(pair.model.target_fpr),
        "physics_target_fpr": float(stage.target_fpr),
        "physics_threshold": float(stage.threshold),
        "physics_null_fpr": float(stage.null_fpr),
        "physics_seed": PHYSICS_SEED,
    }
    pj = judge_with_physics(pair.model, stage, x)
    alone = int((pj.physics & ~pj.deep.attacked).sum())
    return _Verdicts(pair.model, pj.deep.rows, pj.attacked, pj.flagged, meta, alone)


def detect_score(args: argparse.Namespace) -> int:
    from detection.dataset import read_table, write_table
    from detection.models.registry import load_shipped_model
    from detection.score_frame import measurement_matrix, verdict_frame

    _check_paths(args)
    started = time.perf_counter()
    model = load_shipped_model(args.grid)
    layout = model.layout
    frame, _ = read_table(args.input)
    table = measurement_matrix(frame, layout, where=str(args.input))
    if args.history is not None:
        hist_frame, _ = read_table(args.history)
        history = measurement_matrix(hist_frame, layout, where=str(args.history))
        v = _adapted_verdicts(args, model, table.x, history.x)
    else:
        v = _shipped_verdicts(model, table.x)
    out = verdict_frame(table, layout, v.rows, v.attacked, v.flagged)
    physics = v.physics_only is not None
    metadata = {
        "grid": args.grid,
        "input": str(args.input),
        "adapted_to_history": args.history is not None,
        "physics_ramp_stage": physics,
        "row_threshold": float(v.model.row_threshold),
        "ramp_threshold": (
            float(v.model.ramp_threshold) if v.model.ramp_scale is not None else None
        ),
        **v.metadata,
        "model": _model_version(args.grid),
    }
    write_table(args.output, out, metadata)
    elapsed = time.perf_counter() - started
    n_att = int(v.attacked.sum())
    how = "shipped calibration"
    if args.history is not None:
        how = "adapted to history" + (", physics ramp stage" if physics else ", no physics stage")
    alone = f", {v.physics_only} by the physics stage alone" if physics else ""
    print(
        f"wrote {args.output}: {len(out)} rows of {args.grid}, {n_att} attacked "
        f"({n_att / len(out):.1%}{alone}), {int(v.flagged.sum())} measurements flagged "
        f"({how}; {elapsed:.1f} s)"
    )
    return 0
