"""``gridfort optimize schedule``: a day-ahead plan for a fleet from a file or a synthetic one."""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path
from typing import Any

from control_plane.optimizer.aggregation import schedule_aggregated
from control_plane.optimizer.assets import (
    Battery,
    EvSession,
    FeederLimit,
    FleetState,
    FlexibleLoad,
    OptimizerInputError,
    Pv,
    SiteLimits,
)
from control_plane.optimizer.check import check_plan
from control_plane.optimizer.market import MarketPrices, MarketRules, synthetic_prices
from control_plane.optimizer.revenue import evaluate
from control_plane.optimizer.schedule import schedule
from control_plane.optimizer.synthetic import synthetic_fleet


def register(sub: Any) -> None:
    opt = sub.add_parser("optimize", help="day-ahead fleet optimizer")
    opt_sub = opt.add_subparsers(dest="optimize_command", metavar="ACTION", required=True)
    p = opt_sub.add_parser("schedule", help="schedule a fleet; prints a JSON summary")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--assets-file", type=Path, help="JSON: batteries, evs, pvs, loads, sites")
    src.add_argument("--synthetic", type=int, metavar="N", help="a synthetic fleet of N assets")
    p.add_argument("--prices", type=Path, help="CSV with column energy_eur_per_mwh (96 rows)")
    p.add_argument("--seed", type=int, default=0, help="seed of synthetic fleet and prices")
    p.add_argument("--aggregate", action="store_true", help="schedule by aggregation")
    p.add_argument(
        "--afrr", action="store_true", help="also offer aFRR capacity (synthetic prices per block)"
    )
    p.add_argument("--time-limit-s", type=float, default=30.0)
    p.add_argument("--out", type=Path, help="write the plan (p_kw per asset) as JSON")
    p.set_defaults(handler=optimize_schedule)


def load_fleet(path: Path) -> FleetState:
    """A :class:`FleetState` from a JSON file with lists of each asset type's fields."""
    raw = json.loads(path.read_text())
    try:
        return FleetState(
            batteries=tuple(Battery(**x) for x in raw.get("batteries", [])),
            evs=tuple(EvSession(**x) for x in raw.get("evs", [])),
            pvs=tuple(
                Pv(**{**x, "forecast_kw": tuple(x["forecast_kw"])}) for x in raw.get("pvs", [])
            ),
            loads=tuple(FlexibleLoad(**x) for x in raw.get("loads", [])),
            sites=tuple(
                SiteLimits(x["site_id"], tuple(x["import_max_kw"]), tuple(x["export_max_kw"]))
                for x in raw.get("sites", [])
            ),
            feeders=tuple(
                FeederLimit(**{**x, "site_ids": frozenset(x["site_ids"])})
                for x in raw.get("feeders", [])
            ),
        )
    except (TypeError, KeyError) as e:
        raise OptimizerInputError(f"{path}: {e}") from e


def load_prices(path: Path, seed: int, *, afrr: bool = False) -> MarketPrices:
    """Energy prices from CSV column ``energy_eur_per_mwh``; FCR (and with ``afrr`` aFRR)
    capacity prices synthetic from ``seed``."""
    with path.open(newline="") as fh:
        energy = tuple(float(row["energy_eur_per_mwh"]) for row in csv.DictReader(fh))
    reserve = synthetic_prices(seed, afrr=afrr)
    return MarketPrices(
        energy,
        reserve.fcr_eur_per_mw_h,
        reserve.afrr_up_eur_per_mw_h,
        reserve.afrr_down_eur_per_mw_h,
    )


def optimize_schedule(args: argparse.Namespace) -> int:
    try:
        fleet = (
            synthetic_fleet(args.synthetic, args.seed)
            if args.synthetic is not None
            else load_fleet(args.assets_file)
        )
        prices = (
            load_prices(args.prices, args.seed, afrr=args.afrr)
            if args.prices
            else synthetic_prices(args.seed, afrr=args.afrr)
        )
    except OptimizerInputError as e:
        print(f"error: {e}")
        return 2
    rules = MarketRules()
    run = schedule_aggregated if args.aggregate else schedule
    plan = run(fleet, prices, rules, time_limit_s=args.time_limit_s)
    violations = check_plan(fleet, plan, rules)
    summary = {
        "assets": len(fleet),
        "status": plan.status,
        "wall_s": round(plan.wall_s, 3),
        "revenue": evaluate(fleet, plan, prices, rules).as_dict(),
        "violations": sum(v.subject != "portfolio" for v in violations),
        "market_lot_findings": sum(v.subject == "portfolio" for v in violations),
        "diagnosis": [
            {"constraint": d.constraint, "subjects": list(d.subjects), "message": d.message}
            for d in plan.diagnosis
        ],
    }
    print(json.dumps(summary, indent=2))
    if args.out:
        body = {
            "asset_ids": list(plan.asset_ids),
            "p_kw": plan.p_kw.round(4).tolist(),
            "fcr_kw": plan.reserve_kw.round(4).tolist(),
        }
        if prices.afrr_up_eur_per_mw_h:  # aFRR was offered
            body["afrr_up_kw"] = plan.afrr_up_kw.round(4).tolist()
            body["afrr_down_kw"] = plan.afrr_down_kw.round(4).tolist()
        args.out.write_text(json.dumps(body))
    return 0 if plan.status != "fallback" else 1
