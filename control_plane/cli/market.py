"""``gridfort market``: a simulated market day, end to end.

``market simulate-day --date YYYY-MM-DD --seed S`` runs one round trip for a synthetic
battery fleet: the day-before-delivery morning, the fleet's schedule (FCR blocks and
day-ahead quarter-hours) goes through the policy gate and the market gateway to the
simulated FCR and day-ahead auctions; the clock moves past both gate closures; the
auctions clear; fills are collected (and audited); a synthetic, seeded delivery stands in
for gated measurements; settlement prints revenues, imbalance, penalties and the
delivery report. Every decision, request, response and fill goes to the audit log (a
fresh one in a temporary directory unless ``--audit-log`` is given). Simulated time,
never the wall clock: the same date and seed give the same output.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from pathlib import Path
from typing import Any

import numpy as np

from control_plane.markets.actions import Actor, Product, Side
from control_plane.markets.exchanges.base import HOUR_MS, Fill, delivery_starts, period_hours
from control_plane.markets.exchanges.day_ahead import DayAheadAuction, reference_price_eur_per_mwh
from control_plane.markets.exchanges.reserves import ReserveAuction, reference_capacity_price
from control_plane.markets.gate_closure import MARKET_TZ, local_iso
from control_plane.markets.gateway import (
    BidSchedule,
    GatewayResult,
    GatewayStatus,
    MarketGateway,
    ScheduledBid,
)
from control_plane.markets.policy.backends import EngineKind, backend_for
from control_plane.markets.policy.gateway import PolicyGate
from control_plane.markets.policy.loader import PolicyLoader
from control_plane.markets.settlement import (
    AvailabilityInterval,
    GatedDeliverySeries,
    Settlement,
    settle,
)
from security.audit_log import AuditLog
from security.clock import ManualClock
from security.refusals import GridfortError

DEFAULT_POLICIES = Path(__file__).resolve().parents[2] / "policies"
EVENING_PEAK = (time(18, 0), time(20, 0))
SOLAR_DIP = (time(12, 0), time(14, 0))


def register(sub: Any) -> None:
    market = sub.add_parser("market", help="markets: simulated exchanges and settlement")
    market_sub = market.add_subparsers(dest="market_command", metavar="ACTION", required=True)
    p = market_sub.add_parser(
        "simulate-day", help="a day-ahead + FCR auction round trip for a synthetic fleet"
    )
    p.add_argument("--date", required=True, metavar="YYYY-MM-DD", help="the delivery day")
    p.add_argument("--seed", type=int, default=0, help="seed of the synthetic market and fleet")
    p.add_argument("--fleet-mw", type=float, default=10.0, help="fleet power [MW]")
    p.add_argument("--trust-domain", default="gridfort.local")
    p.add_argument("--policies", type=Path, default=DEFAULT_POLICIES, metavar="DIR")
    p.add_argument("--audit-log", type=Path, default=None, help="default: a fresh temporary log")
    p.add_argument("--json", action="store_true", help="print the settlement as JSON")
    p.add_argument(
        "--engine",
        choices=[k.value for k in EngineKind],
        default=EngineKind.REGOPY.value,
        help="policy engine (default: regopy, embedded)",
    )
    p.set_defaults(handler=simulate_day)


def _local_ms(day: date, at: time) -> int:
    return int(datetime.combine(day, at, tzinfo=MARKET_TZ).timestamp() * 1000)


def _within(ts_ms: int, day: date, span: tuple[time, time]) -> bool:
    return _local_ms(day, span[0]) <= ts_ms < _local_ms(day, span[1])


def fleet_schedule(day: date, fleet_mw: float, schedule_id: str) -> BidSchedule:
    """A battery fleet's bids: 40 % (whole MW) as FCR in every block; the rest sold in the
    evening peak and bought back in the solar dip on the day-ahead market. Pure."""
    fcr_mw = float(math.floor(fleet_mw * 0.4))
    da_mw = math.floor((fleet_mw - fcr_mw) * 10) / 10
    bids: list[ScheduledBid] = []
    if fcr_mw >= 1:
        price = reference_capacity_price(Product.FCR) * 0.75
        for t in delivery_starts(Product.FCR, day):
            bids.append(ScheduledBid(Product.FCR, Side.SELL, t, fcr_mw, round(price, 2)))
    if da_mw >= 0.1:
        for t in delivery_starts(Product.DAY_AHEAD, day):
            ref = reference_price_eur_per_mwh(t)
            if _within(t, day, EVENING_PEAK):
                bids.append(ScheduledBid(Product.DAY_AHEAD, Side.SELL, t, da_mw, ref - 20))
            elif _within(t, day, SOLAR_DIP):
                bids.append(ScheduledBid(Product.DAY_AHEAD, Side.BUY, t, da_mw, ref + 20))
    return BidSchedule(schedule_id, tuple(bids))


class _FleetFlexibility:
    """The synthetic fleet's flexibility; stands in for a value computed from gated state."""

    def __init__(self, fleet_mw: float) -> None:
        self._fleet_mw = fleet_mw

    def verified_flexibility_mw(
        self, product: Product, side: Side, delivery_start_ms: int
    ) -> float:
        return self._fleet_mw


def _reference_price(product: Product, delivery_start_ms: int) -> float | None:
    if product in (Product.DAY_AHEAD, Product.INTRADAY):
        return reference_price_eur_per_mwh(delivery_start_ms)
    return reference_capacity_price(product)


def synthetic_delivery(
    fills: list[Fill], seed: int
) -> tuple[GatedDeliverySeries, dict[int, float]]:
    """A seeded stand-in for gated measurements (delivery 90-105 % of the position, one FCR
    block with an hour at half capacity) and imbalance prices. Pure."""
    rng = np.random.default_rng([seed, 5])
    sold: dict[int, float] = {}
    contracted: dict[int, float] = {}
    for f in fills:
        mw = f.volume_mw if f.side is Side.SELL else -f.volume_mw
        if f.product is Product.DAY_AHEAD:
            sold[f.delivery_start_ms] = sold.get(f.delivery_start_ms, 0.0) + mw * 0.25
        elif f.product is Product.FCR:
            contracted[f.delivery_start_ms] = contracted.get(f.delivery_start_ms, 0.0) + mw
    energy = {t: round(mwh * float(rng.uniform(0.9, 1.05)), 4) for t, mwh in sorted(sold.items())}
    prices = {
        t: round(reference_price_eur_per_mwh(t) + float(rng.normal(0.0, 40.0)), 2) for t in energy
    }
    availability: dict[tuple[Product, int], tuple[AvailabilityInterval, ...]] = {}
    weak = int(rng.integers(0, len(contracted))) if contracted else -1
    for n, (t, mw) in enumerate(sorted(contracted.items())):
        length = round(period_hours(Product.FCR, t) * HOUR_MS)
        if n == weak:
            availability[(Product.FCR, t)] = (
                AvailabilityInterval(t, length - HOUR_MS, mw),
                AvailabilityInterval(t + length - HOUR_MS, HOUR_MS, mw / 2),
            )
        else:
            availability[(Product.FCR, t)] = (AvailabilityInterval(t, length, mw),)
    return GatedDeliverySeries(energy, availability), prices


@dataclass(frozen=True, slots=True)
class DayResult:
    results: list[GatewayResult]
    fills: list[Fill]
    settlement: Settlement
    audit_log: Path
    audit_head: str


def run_day(
    day: date,
    seed: int,
    fleet_mw: float,
    *,
    trust_domain: str,
    policies: Path,
    audit_path: Path,
    engine: EngineKind = EngineKind.REGOPY,
) -> DayResult:
    """The whole round trip in simulated time (see the module doc)."""
    clock = ManualClock(_local_ms(day - timedelta(days=1), time(7, 0)))
    with AuditLog(audit_path, clock) as audit:
        backend = backend_for(engine)
        loader = PolicyLoader(policies, audit=audit, backend=backend)
        loaded = loader.reload()
        if not loaded.loaded:
            raise GridfortError(f"policy not loaded: {loaded.reason}")
        day_ahead = DayAheadAuction(clock, seed=seed)
        reserves = ReserveAuction(clock, seed=seed)
        gateway = MarketGateway(
            PolicyGate(lambda: loader.engine, audit, engine_name=backend.name),
            [day_ahead, reserves],
            audit,
            clock,
            trust_domain=trust_domain,
            flexibility=_FleetFlexibility(fleet_mw),
            reference_prices=_reference_price,
        )
        trader = Actor(f"spiffe://{trust_domain}/operator/optimizer", "operator")
        schedule = fleet_schedule(day, fleet_mw, f"sim-{day.isoformat()}-{seed}")
        results = gateway.submit_schedule(trader, schedule)
        clock.set(_local_ms(day - timedelta(days=1), time(12, 0)))  # both gates closed
        reserves.clear_day(Product.FCR, day)
        day_ahead.clear_day(Product.DAY_AHEAD, day)
        fills = gateway.collect_fills()
        delivered, imbalance_prices = synthetic_delivery(fills, seed)
        settlement = settle(fills, delivered, imbalance_prices)
        head = audit.head_hash
    return DayResult(results, fills, settlement, audit_path, head)


def _report_json(r: DayResult) -> dict[str, object]:
    s = r.settlement
    return {
        "orders": {st.value: sum(x.status is st for x in r.results) for st in GatewayStatus},
        "fills": len(r.fills),
        "revenue_eur": {p.value: round(v, 2) for p, v in s.revenue_by_product().items()},
        "imbalance_eur": round(s.imbalance_eur, 2),
        "penalty_eur": round(s.penalty_eur, 2),
        "net_eur": round(s.net_eur, 2),
        "delivery": [
            {
                "product": d.product,
                "delivery_start": local_iso(d.delivery_start_ms),
                "sold_mwh": round(d.sold_mwh, 4),
                "delivered_mwh": round(d.delivered_mwh, 4),
                "imbalance_eur": round(d.imbalance_eur, 2),
                "penalty_eur": round(d.penalty_eur, 2),
            }
            for d in s.delivery
        ],
        "audit_log": str(r.audit_log),
        "audit_head": r.audit_head,
    }


def _print_text(r: DayResult) -> None:
    s = r.settlement
    counts = {st.value: n for st in GatewayStatus if (n := sum(x.status is st for x in r.results))}
    print(f"orders: {counts}; fills: {len(r.fills)}")
    print("revenue per product [EUR]:")
    for product, eur in sorted(s.revenue_by_product().items()):
        print(f"  {product.value:<10} {eur:>12.2f}")
    print("delivery report (sold vs delivered, from the simulated gated series):")
    head = ("product", "delivery start", "sold", "delivered", "imb EUR", "pen EUR")
    print("  {:<8} {:<26} {:>9} {:>9} {:>9} {:>9}".format(*head))
    for d in s.delivery:
        print(
            f"  {d.product:<8} {local_iso(d.delivery_start_ms):<26} {d.sold_mwh:>9.3f}"
            f" {d.delivered_mwh:>9.3f} {d.imbalance_eur:>9.2f} {d.penalty_eur:>9.2f}"
        )
    print(f"revenue   {s.revenue_eur:>12.2f} EUR")
    print(f"imbalance {s.imbalance_eur:>12.2f} EUR")
    print(f"penalties {-s.penalty_eur:>12.2f} EUR")
    print(f"net       {s.net_eur:>12.2f} EUR")
    print(f"audit log {r.audit_log} (head {r.audit_head})")


def simulate_day(args: argparse.Namespace) -> int:
    try:
        day = date.fromisoformat(args.date)
    except ValueError:
        raise ValueError(f"--date: {args.date!r} is not YYYY-MM-DD") from None
    if not math.isfinite(args.fleet_mw) or not 0 < args.fleet_mw <= 1000:
        raise ValueError("--fleet-mw must be in (0, 1000]")
    audit_path = args.audit_log
    if audit_path is None:
        audit_path = Path(tempfile.mkdtemp(prefix="gridfort-market-")) / "audit.jsonl"
    result = run_day(
        day,
        args.seed,
        args.fleet_mw,
        trust_domain=args.trust_domain,
        policies=args.policies,
        audit_path=audit_path,
        engine=EngineKind(getattr(args, "engine", EngineKind.REGOPY)),
    )
    if args.json:
        json.dump(_report_json(result), sys.stdout, indent=2)
        print()
    else:
        _print_text(result)
    return 0
