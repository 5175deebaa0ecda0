"""The planning cycle bids tomorrow's day-ahead plan as a configured operator identity:
every bid through the same Rego policy as a human trader's, audited, nothing invented."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pytest

from control_plane.assets.registry import AssetRegistry
from control_plane.markets.actions import Product
from control_plane.markets.exchanges.base import delivery_starts
from control_plane.markets.service import EXCHANGES, MarketConfig, MarketService
from control_plane.optimizer.market import MarketRules, synthetic_prices
from control_plane.planning import PlanningConfig, PlanningCycle
from security.audit_log import AuditLog
from security.clock import ManualClock
from security.refusals import ConfigError
from tests.markets.conftest import NOW_MS, POLICIES, TD, audit_records, berlin_ms
from tests.markets.gated_fleet import SITE, battery, fleet_state
from tests.markets.test_gateway import SpyExchange

DAY = date(2026, 6, 2)
PRICES = synthetic_prices(1)
FLEET = [battery("b1", 2000.0, 4000.0), battery("b2", 2000.0, 4000.0)]


def _reference(product: Product, start: int) -> float | None:
    if product is Product.FCR:
        return PRICES.fcr_eur_per_mw_h[delivery_starts(Product.FCR, DAY).index(start)]
    return PRICES.energy_eur_per_mwh[delivery_starts(Product.DAY_AHEAD, DAY).index(start)]


def _cycle(
    tmp_path: Path, audit: AuditLog, clock: ManualClock
) -> tuple[PlanningCycle, list[SpyExchange]]:
    state = fleet_state(FLEET, {"b1": 50.0, "b2": 30.0}, ts_ms=clock.now_ms() - 1_000)
    config = MarketConfig(policy_dir=POLICIES, exchanges=("day_ahead", "reserves"))
    spies = [SpyExchange(EXCHANGES[n](clock, 0)) for n in config.exchanges]  # type: ignore[arg-type]
    markets = MarketService(
        config,
        trust_domain=TD,
        state=state,
        assets=lambda: FLEET,
        audit=audit,
        clock=clock,
        reference_prices=_reference,
        exchanges=spies,
    )
    assert markets.load_policy().loaded
    registry = AssetRegistry(tmp_path / "registry.db")
    registry.add_site(SITE, NOW_MS)
    registry.add_assets(FLEET)
    cycle = PlanningCycle(
        PlanningConfig(bid_day_ahead=True, pv_forecast=False, time_limit_s=5),
        registry=registry,
        state=state,
        audit=audit,
        clock=clock,
        identity=f"spiffe://{TD}/control-plane/cp",
        prices=lambda start, rules: PRICES,
        rules=MarketRules(),
        markets=markets,
        trust_domain=TD,
    )
    return cycle, spies


async def test_tomorrow_is_bid_once_at_bid_time_through_the_policy(
    tmp_path: Path, audit: AuditLog
) -> None:
    clock = ManualClock(berlin_ms(2026, 6, 1, 10, 5))
    cycle, spies = _cycle(tmp_path, audit, clock)
    assert cycle.bid_due(NOW_MS) is None  # 07:00 local: before bid_at
    assert cycle.bid_due(clock.now_ms()) == DAY
    bid = await cycle.bid_now(DAY)
    assert bid is not None and bid.planned.plan.status in ("optimal", "feasible")
    assert bid.bids > 0 and bid.sent + sum(bid.denied.values()) == bid.bids
    assert sum(len(s.calls) for s in spies) == bid.sent  # only what the policy allowed
    assert cycle.bid_due(clock.now_ms()) is None  # once a day
    records = audit_records(tmp_path / "audit.jsonl")
    decisions = [r for r in records if r["event"] == "market.policy_decision"]
    assert len(decisions) == bid.bids
    assert {r["identity"] for r in decisions} == {f"spiffe://{TD}/operator/auto-bidder"}
    (summary,) = [r for r in records if r["event"] == "plan_bids"]
    assert summary["details"]["day"] == "2026-06-02" and summary["details"]["bids"] == bid.bids
    assert cycle.status()["last_bid"]["sent"] == bid.sent


async def test_after_the_gate_nothing_is_due(tmp_path: Path, audit: AuditLog) -> None:
    clock = ManualClock(berlin_ms(2026, 6, 1, 12, 0))
    cycle, _ = _cycle(tmp_path, audit, clock)
    assert cycle.bid_due(clock.now_ms()) is None


@pytest.mark.parametrize(
    ("raw", "field"),
    [({"bid_at": "12:30"}, "planning.bid_at"), ({"bidder": "bad id!"}, "planning.bidder")],
)
def test_bidding_settings_are_validated(raw: dict[str, str], field: str) -> None:
    with pytest.raises(ConfigError, match=field):
        PlanningConfig.from_mapping(raw)
