"""MarketService: built from config; the optimizer's plan, made from gated state, flows through
the policy and the gateway to the exchanges without a kW invented; fails closed until a
tested policy is loaded."""

from __future__ import annotations

from datetime import date
from pathlib import Path
from types import MappingProxyType

import pytest

from control_plane.assets.registry import AssetRegistry, RegistrySnapshot
from control_plane.markets.actions import Product
from control_plane.markets.exchanges.base import delivery_starts
from control_plane.markets.gateway import GatewayStatus
from control_plane.markets.plan_bids import whole_kw
from control_plane.markets.policy.backends import EngineKind, backend_for
from control_plane.markets.service import EXCHANGES, MarketConfig, MarketService, RegistryAssets
from control_plane.optimizer.from_state import fleet_from_gated_state
from control_plane.optimizer.market import MarketRules, synthetic_prices
from control_plane.optimizer.schedule import schedule
from control_plane.state import FleetState
from security.audit_log import AuditLog, verify_audit_log
from security.clock import ManualClock
from security.refusals import ConfigError
from tests.markets.conftest import ALICE, NOW_MS, POLICIES, TD, audit_records
from tests.markets.gated_fleet import SITE, battery, fleet_state
from tests.markets.test_gateway import SpyExchange

DAY = date(2026, 6, 2)  # NOW_MS is 2026-06-01 07:00 CEST: before the FCR and day-ahead gates
PRICES = synthetic_prices(1)
RULES = MarketRules()
FLEET = [battery("b1", 2000.0, 4000.0), battery("b2", 2000.0, 4000.0)]


def _reference(product: Product, start: int) -> float | None:
    """The plan's own prices as the band anchor (this test is about volume, not prices)."""
    if product is Product.FCR:
        return PRICES.fcr_eur_per_mw_h[delivery_starts(Product.FCR, DAY).index(start)]
    return PRICES.energy_eur_per_mwh[delivery_starts(Product.DAY_AHEAD, DAY).index(start)]


def _service(
    config: MarketConfig, state: FleetState, audit: AuditLog, clock: ManualClock
) -> tuple[MarketService, list[SpyExchange]]:
    """The service with the configured simulated exchanges, each behind a call recorder."""
    spies = [SpyExchange(EXCHANGES[n](clock, 0)) for n in config.exchanges]  # type: ignore[arg-type]
    svc = MarketService(
        config,
        trust_domain=TD,
        state=state,
        assets=lambda: FLEET,
        audit=audit,
        clock=clock,
        reference_prices=_reference,
        exchanges=spies,
    )
    return svc, spies


def test_config_errors_name_the_field(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"markets\.engine"):
        MarketConfig(engine="opa-server")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"markets\.exchanges"):
        MarketConfig(exchanges=("day_ahead", "nasdaq"))
    with pytest.raises(ConfigError, match=r"markets\.decision_timeout_s"):
        MarketConfig(decision_timeout_s=0)
    with pytest.raises(ConfigError, match="unknown field"):
        MarketConfig.from_mapping({"engnie": "opa"}, tmp_path)
    cfg = MarketConfig.from_mapping(
        {"policy_dir": "p", "engine": "opa", "exchanges": ["reserves"], "reserve_energy_h": 0.5},
        tmp_path,
    )
    assert cfg.policy_dir == (tmp_path / "p").resolve() and cfg.engine is EngineKind.OPA
    assert cfg.flexibility_rules().energy_hours == {
        Product.FCR: 0.5,
        Product.AFRR_POS: 0.5,
        Product.AFRR_NEG: 0.5,
    }


def test_nothing_is_traded_before_a_tested_policy_is_loaded(
    audit: AuditLog, tmp_path: Path
) -> None:
    clock = ManualClock(NOW_MS)
    state = fleet_state(FLEET, {"b1": 50.0, "b2": 30.0}, ts_ms=NOW_MS)
    svc, spies = _service(MarketConfig(policy_dir=POLICIES), state, audit, clock)
    plan = schedule(
        fleet_from_gated_state(_snapshot(), state, now_ms=NOW_MS).fleet,
        PRICES,
        RULES,
        time_limit_s=3,
        mip_rel_gap=0.05,
    )
    schedule_, results = svc.submit_plan(
        ALICE, plan, day=DAY, prices=PRICES, rules=RULES, schedule_id="unloaded"
    )
    assert schedule_.bids and all(r.status is GatewayStatus.DENIED for r in results)
    assert {r.reason for r in results} == {"NO_POLICY_LOADED"}
    assert all(spy.calls == [] for spy in spies)
    decisions = [
        r for r in audit_records(tmp_path / "audit.jsonl") if r["event"] == "market.policy_decision"
    ]
    assert len(decisions) == len(results)


def _snapshot() -> RegistrySnapshot:
    return RegistrySnapshot(1, MappingProxyType({a.asset_id: a for a in FLEET}), frozenset({SITE}))


@pytest.mark.parametrize("engine", list(EngineKind), ids=lambda e: e.value)
def test_plan_from_gated_state_flows_through_policy_to_exchanges_unchanged(
    engine: EngineKind, audit: AuditLog, tmp_path: Path
) -> None:
    why = backend_for(engine).unavailable_reason()
    if why is not None:
        pytest.skip(f"policy engine {engine.value} is not available here: {why}")
    clock = ManualClock(NOW_MS)
    state = fleet_state(FLEET, {"b1": 50.0, "b2": 30.0}, ts_ms=NOW_MS - 1_000)
    config = MarketConfig(
        policy_dir=POLICIES,
        engine=engine,
        exchanges=("day_ahead", "reserves"),
        reserve_energy_h=RULES.fcr_energy_h,  # the optimizer's reserve energy, 0.5 h
    )
    svc, spies = _service(config, state, audit, clock)
    assert svc.load_policy().loaded
    gated = fleet_from_gated_state(_snapshot(), state, now_ms=NOW_MS)
    plan = schedule(gated.fleet, PRICES, RULES, time_limit_s=3, mip_rel_gap=0.05)
    assert plan.bids
    bids, results = svc.submit_plan(
        ALICE, plan, day=DAY, prices=PRICES, rules=RULES, schedule_id=f"plan-{engine.value}"
    )
    assert len(results) == len(bids.bids) > 0
    # Every bid is the plan's volume, to the kW, never more.
    net = plan.portfolio_kw()
    reserve = plan.reserve_kw.sum(axis=0)
    energy_starts = delivery_starts(Product.DAY_AHEAD, DAY)
    fcr_starts = delivery_starts(Product.FCR, DAY)
    for bid in bids.bids:
        if bid.product is Product.DAY_AHEAD:
            planned = whole_kw(float(net[energy_starts.index(bid.delivery_start_ms)]))
        else:
            planned = whole_kw(float(reserve[fcr_starts.index(bid.delivery_start_ms)]))
        assert bid.terms().volume_kw == planned
    # What reached an exchange is exactly what was scheduled and allowed.
    sent = [terms for spy in spies for what, terms in spy.calls if what == "submit"]
    allowed = [
        b.terms()
        for b, r in zip(bids.bids, results, strict=True)
        if r.decision and r.decision.allow
    ]
    assert sent == allowed
    assert any(r.status is GatewayStatus.ACCEPTED for r in results)
    # Anything denied was denied by the policy with a reason, audited; nothing else.
    for r in results:
        assert r.status in (GatewayStatus.ACCEPTED, GatewayStatus.DENIED), r
        if r.status is GatewayStatus.DENIED:
            assert r.reason == "ABOVE_VERIFIED_FLEXIBILITY", r.decision
    decisions = [
        rec
        for rec in audit_records(tmp_path / "audit.jsonl")
        if rec["event"] == "market.policy_decision"
    ]
    assert len(decisions) == len(results)
    assert {d["details"]["engine"] for d in decisions} == {engine.value}
    assert verify_audit_log(tmp_path / "audit.jsonl").ok


def test_registry_assets_follow_registry_changes(tmp_path: Path) -> None:
    registry = AssetRegistry(tmp_path / "registry.db")
    try:
        registry.add_site(SITE, NOW_MS)
        assets = RegistryAssets(registry)
        assert assets() == ()
        registry.add_assets(FLEET)
        assert sorted(a.asset_id for a in assets()) == ["b1", "b2"]
        assert assets() is assets()  # unchanged registry: no re-read
    finally:
        registry.close()
