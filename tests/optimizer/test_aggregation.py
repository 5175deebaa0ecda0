"""Aggregation + disaggregation: every asset verified, revenue close to the exact LP."""

from __future__ import annotations

import numpy as np
import pytest

from control_plane.optimizer.aggregation import aggregate, schedule_aggregated
from control_plane.optimizer.check import check_plan
from control_plane.optimizer.constraints import build_tables
from control_plane.optimizer.market import MarketRules, synthetic_prices
from control_plane.optimizer.revenue import evaluate
from control_plane.optimizer.schedule import schedule
from control_plane.optimizer.synthetic import synthetic_fleet

pytestmark = pytest.mark.timeout(60)

CONTINUOUS = MarketRules(energy_increment_kw=0.0, reserve_increment_kw=0.0)


def test_every_asset_holds_after_disaggregation_and_gap_is_small() -> None:
    fleet = synthetic_fleet(150, seed=5)
    prices = synthetic_prices(5)
    agg = schedule_aggregated(fleet, prices, CONTINUOUS)
    assert agg.status not in ("fallback",)
    assert check_plan(fleet, agg, CONTINUOUS) == []
    exact = schedule(fleet, prices, CONTINUOUS)
    r_agg = evaluate(fleet, agg, prices, CONTINUOUS).total_eur
    r_exact = evaluate(fleet, exact, prices, CONTINUOUS).total_eur
    assert r_agg <= r_exact + 1e-6  # an inner approximation never beats the exact LP
    assert (r_exact - r_agg) / abs(r_exact) < 0.05


def test_aggregated_plan_in_whole_market_lots_passes_the_checker() -> None:
    fleet = synthetic_fleet(600, seed=7)
    rules = MarketRules()
    plan = schedule_aggregated(fleet, synthetic_prices(7), rules, time_limit_s=20)
    assert plan.status == "rounded"
    assert check_plan(fleet, plan, rules) == []  # includes 0.1 MW energy and 1 MW FCR lots
    lots = plan.portfolio_kw() / 100.0
    assert lots == pytest.approx(np.round(lots), abs=1e-5)
    fcr_mw = plan.reserve_kw.sum(axis=0) / 1000.0
    assert fcr_mw == pytest.approx(np.round(fcr_mw), abs=1e-6)


def test_disaggregated_assets_follow_cluster_weights() -> None:
    fleet = synthetic_fleet(300, seed=2)
    tables = build_tables(fleet)
    agg, clusters = aggregate(fleet, tables)
    assert len(agg.storage) < len(fleet.batteries)
    for g in range(len(agg.storage)):
        w = clusters.storage_w[clusters.storage == g]
        assert w.sum() == pytest.approx(1.0)
