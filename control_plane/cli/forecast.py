"""Forecast commands: ``forecast generate`` (a synthetic history) and ``forecast eval``
(train each model, score it against persistence on held-out days, print a scorecard).

Wiring (in ``control_plane/cli/main.py``): ``forecast_cli.register(sub)``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

DEFAULT_EVAL_DAYS = 730
MAX_DAYS = 20 * 366


def register(sub: Any) -> None:
    fc = sub.add_parser("forecast", help="day-ahead forecasts of site load, PV and price")
    fc_sub = fc.add_subparsers(dest="forecast_command", metavar="ACTION", required=True)
    g = fc_sub.add_parser("generate", help="write a synthetic 15-minute history (Parquet)")
    g.add_argument("--days", type=int, required=True, help="local days of history")
    g.add_argument("--out", type=Path, required=True, help="FILE.parquet")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--start", default="2023-01-01", help="first local day, YYYY-MM-DD")
    g.set_defaults(handler=forecast_generate)
    e = fc_sub.add_parser(
        "eval", help="train the load, PV and price models and score them against persistence"
    )
    src = e.add_mutually_exclusive_group()
    src.add_argument(
        "--days", type=int, default=None, help=f"days to generate (default {DEFAULT_EVAL_DAYS})"
    )
    src.add_argument("--data", type=Path, help="a history written by forecast generate")
    e.add_argument("--seed", type=int, default=0, help="data and training seed")
    e.add_argument("--json", type=Path, help="write the scorecard as JSON")
    e.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    e.add_argument("--max-epochs", type=int, default=None, help="training epochs cap (150)")
    e.add_argument("--save-models", type=Path, metavar="DIR", help="write signed models here")
    e.add_argument(
        "--signing-key", type=Path, help="Ed25519 private key (PEM) that signs --save-models"
    )
    e.set_defaults(handler=forecast_eval)


def _writable(path: Path, flag: str) -> None:
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir() or not os.access(parent, os.W_OK):
        raise ValueError(f"{flag}: cannot write {path} (directory missing or not writable)")


def _days(value: int, flag: str, least: int = 1) -> int:
    if not least <= value <= MAX_DAYS:
        raise ValueError(f"{flag} must be within [{least}, {MAX_DAYS}], got {value}")
    return value


def _progress(message: str) -> None:
    print(f"forecast: {message}", file=sys.stderr, flush=True)


def forecast_generate(args: argparse.Namespace) -> int:
    from control_plane.forecast.dataset import write_history
    from control_plane.forecast.generate import generate_history
    from control_plane.forecast.site import ForecastSite

    days = _days(args.days, "--days")
    out: Path = args.out
    if not out.name.endswith(".parquet"):
        raise ValueError(f"--out must end in .parquet, got {out}")
    _writable(out, "--out")
    try:
        start = dt.date.fromisoformat(args.start)
    except ValueError:
        raise ValueError(f"--start must be a date YYYY-MM-DD, got {args.start!r}") from None
    site = ForecastSite()
    started = time.perf_counter()
    frame = generate_history(days, seed=args.seed, site=site, start=start)
    write_history(out, frame, site, seed=args.seed, days=days, start=start.isoformat())
    print(
        f"wrote {out}: {len(frame)} steps over {days} local days ({site.tz}), "
        f"seed {args.seed}, in {time.perf_counter() - started:.1f} s"
    )
    return 0


def forecast_eval(args: argparse.Namespace) -> int:
    from control_plane.forecast.evaluate import MIN_DAYS, evaluate_series
    from control_plane.forecast.features import series_from_frame
    from control_plane.forecast.site import ForecastSite
    from control_plane.forecast.train import TrainConfig

    if args.json is not None:
        _writable(args.json, "--json")
    key = None
    if args.save_models is not None:
        if args.signing_key is None:
            raise ValueError("--save-models needs --signing-key (models are always signed)")
        if not args.save_models.is_dir():
            raise ValueError(f"--save-models: {args.save_models} is not a directory")
        from security.envelope import load_signing_key

        key = load_signing_key(args.signing_key)
    if args.threads < 1:
        raise ValueError(f"--threads must be at least 1, got {args.threads}")
    cfg = TrainConfig(seed=args.seed, threads=args.threads)
    if args.max_epochs is not None:
        if args.max_epochs < 1:
            raise ValueError(f"--max-epochs must be at least 1, got {args.max_epochs}")
        cfg = TrainConfig(seed=args.seed, threads=args.threads, max_epochs=args.max_epochs)
    started = time.perf_counter()
    if args.data is not None:
        from control_plane.forecast.dataset import read_history

        frame, site, _ = read_history(args.data)
        source = str(args.data)
    else:
        from control_plane.forecast.generate import generate_history

        days = _days(args.days or DEFAULT_EVAL_DAYS, "--days", MIN_DAYS)
        site = ForecastSite()
        _progress(f"generating {days} days (seed {args.seed}) ...")
        frame = generate_history(days, seed=args.seed, site=site)
        source = f"generated, seed {args.seed}"
    series = series_from_frame(frame, site)
    card = evaluate_series(series, cfg, progress=_progress)
    card.settings.update(
        {"data": source, "seed": args.seed, "wall_seconds": round(time.perf_counter() - started, 1)}
    )
    print(scorecard_table(card.to_json()))
    if key is not None:
        from control_plane.forecast.artifacts import save_forecaster

        for r in card.results:
            path = args.save_models / f"{r.target.value}.gfcast"
            save_forecaster(path, r.forecaster, key)
            print(f"wrote {path} (signed)")
    if args.json is not None:
        args.json.write_text(json.dumps(card.to_json(), indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def scorecard_table(card: dict[str, Any]) -> str:
    """The scorecard JSON as a fixed-width table: one row per target and forecast."""
    head = (
        f"{'target':<7}{'forecast':<19}{'MAE':>9}{'RMSE':>9}{'nMAE':>8}{'skill':>8}"
        f"{'skillRMSE':>10}{'P10-P90 cov':>12}{'band':>9}{'train s':>9}"
    )
    lines = [head, "-" * len(head)]
    for name, t in card["targets"].items():
        rows = [("model P50", t["model"]), ("persistence", t["persistence"])]
        if "smart_persistence" in t:
            rows.append(("smart persistence", t["smart_persistence"]))
        for label, s in rows:
            train_s = t["training"]["train_seconds"] if label == "model P50" else None
            lines.append(
                f"{name:<7}{label:<19}{s['mae']:>9.3f}{s['rmse']:>9.3f}{s['nmae']:>8.3f}"
                f"{_fmt(s['skill'], '+.3f'):>8}{_fmt(s['skill_rmse'], '+.3f'):>10}"
                f"{_fmt(s['coverage'], '.3f'):>12}{_fmt(s['band'], '.2f'):>9}"
                f"{_fmt(train_s, '.1f'):>9}"
            )
        lines.append(f"{'':<7}unit {t['unit']}, {t['test_days']} test days")
    return "\n".join(lines)
