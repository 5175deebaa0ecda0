"""Verified flexibility comes from gated state only: fresh, non-suspect, energy-limited.

The hostile case, "volume derived from quarantined measurements": a battery reports an
inflated state of charge, the gate quarantines it; the verified flexibility must not
rise, and a bid that rests on the inflated value is denied with a precise reason,
audited, and never reaches the exchange.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from control_plane.assets.model import Asset, AssetKind
from control_plane.gate.gate import FdiGate
from control_plane.markets.actions import Product, Side
from control_plane.markets.exchanges.day_ahead import DayAheadAuction
from control_plane.markets.flexibility import (
    FlexibilityRules,
    GatedFlexibility,
    assess_fleet,
    battery_kw,
)
from control_plane.markets.gateway import BidSchedule, GatewayStatus, MarketGateway, ScheduledBid
from control_plane.markets.policy.gateway import PolicyGate
from control_plane.state import FleetState
from security.audit_log import AuditLog, verify_audit_log
from security.clock import ManualClock
from tests.markets.conftest import ALICE, DELIVERY_MS, NOW_MS, TD, audit_records, berlin_ms
from tests.markets.gated_fleet import (
    SOC,
    P,
    battery,
    battery_samples,
    fleet_state,
    gated_batch,
    validated_batch,
)
from tests.markets.test_gateway import SpyExchange

FCR_START = berlin_ms(2026, 6, 2, 8)  # a 4-h block
B1, B2 = battery("b1"), battery("b2")  # 2000 kW, 1000 kWh each
FLEET = [B1, B2]
RULES = FlexibilityRules()  # SOC window 10..90 %, efficiencies 0.95, samples <= 60 s old


def _flex(
    state: FleetState, clock: ManualClock, rules: FlexibilityRules = RULES
) -> GatedFlexibility:
    return GatedFlexibility(state, lambda: FLEET, clock, rules)


# -- the pure core --------------------------------------------------------------------------------


def test_battery_power_is_energy_limited_over_the_duration() -> None:
    # 50 % SOC: 40 % of 1000 kWh above the floor, 0.95 discharge efficiency: 380 kWh.
    up, down = battery_kw(B1, 50.0, 4.0, RULES)
    assert up == pytest.approx(380 / 4)
    assert down == pytest.approx(400 / 0.95 / 4)  # 40 % headroom below 90 %, in AC terms
    # Over a quarter-hour a battery with less power than energy is limited by its rating.
    assert battery_kw(battery("b9", rated_p_kw=500.0), 50.0, 0.25, RULES) == (500.0, 500.0)


def test_empty_or_full_battery_has_nothing_in_that_direction() -> None:
    assert battery_kw(B1, 10.0, 1.0, RULES)[0] == 0.0
    assert battery_kw(B1, 5.0, 1.0, RULES)[0] == 0.0  # below the floor: nothing, not negative
    assert battery_kw(B1, 95.0, 1.0, RULES)[1] == 0.0


def test_directions_per_product() -> None:
    state = fleet_state(FLEET, {"b1": 50.0, "b2": 80.0}, ts_ms=NOW_MS)
    a = assess_fleet(FLEET, state, NOW_MS, 4.0, RULES)
    assert a.counted == 2
    up, down = a.up_kw, a.down_kw
    assert a.kw_for(Product.DAY_AHEAD, Side.SELL) == up
    assert a.kw_for(Product.DAY_AHEAD, Side.BUY) == down
    assert a.kw_for(Product.FCR, Side.SELL) == min(up, down)  # symmetric reserve
    assert a.kw_for(Product.CAPACITY, Side.SELL) == up
    assert a.kw_for(Product.FCR, Side.BUY) == 0.0
    assert a.kw_for(Product.AFRR_POS, Side.SELL) == up  # upward reserve: discharge
    assert a.kw_for(Product.AFRR_NEG, Side.SELL) == down  # downward reserve: charge
    assert a.kw_for(Product.AFRR_ENERGY_NEG, Side.SELL) == down
    assert a.kw_for(Product.AFRR_NEG, Side.BUY) == 0.0


def test_product_period_sets_the_duration_and_can_be_shortened() -> None:
    clock = ManualClock(NOW_MS)
    state = fleet_state(FLEET, {"b1": 50.0, "b2": 50.0}, ts_ms=NOW_MS)
    four_hours = _flex(state, clock).assess(Product.FCR, Side.SELL, FCR_START)
    assert four_hours.hours == 4.0
    half_hour = _flex(state, clock, FlexibilityRules(energy_hours={Product.FCR: 0.5})).assess(
        Product.FCR, Side.SELL, FCR_START
    )
    assert half_hour.hours == 0.5
    assert half_hour.up_kw == pytest.approx(8 * four_hours.up_kw)


def test_other_asset_kinds_add_nothing() -> None:
    pv = Asset("pv1", "site-1", AssetKind.PV_INVERTER, rated_p_kw=500.0)
    state = fleet_state(FLEET, {"b1": 50.0}, ts_ms=NOW_MS)
    a = assess_fleet([B1, pv], state, NOW_MS, 1.0, RULES)
    assert a.counted == 1 and a.up_kw == battery_kw(B1, 50.0, 1.0, RULES)[0]


# -- freshness ------------------------------------------------------------------------------------


def test_stale_state_is_not_counted() -> None:
    clock = ManualClock(NOW_MS)
    state = fleet_state(FLEET, {"b1": 50.0, "b2": 50.0}, ts_ms=NOW_MS)
    flex = _flex(state, clock)
    assert flex.verified_flexibility_mw(Product.DAY_AHEAD, Side.SELL, DELIVERY_MS) == 3.04
    clock.advance(RULES.max_age_ms + 1)
    a = flex.assess(Product.DAY_AHEAD, Side.SELL, DELIVERY_MS)
    assert (a.counted, a.stale, a.up_kw) == (0, 2, 0.0)


def test_sample_from_the_future_is_not_counted() -> None:
    state = fleet_state(FLEET, {"b1": 50.0}, ts_ms=NOW_MS + RULES.max_future_skew_ms + 1)
    a = assess_fleet(FLEET, state, NOW_MS, 0.25, RULES)
    assert (a.counted, a.stale, a.no_state) == (0, 1, 1)


def test_asset_without_gated_state_is_not_counted() -> None:
    a = assess_fleet(FLEET, FleetState(), NOW_MS, 0.25, RULES)
    assert (a.counted, a.no_state, a.up_kw, a.down_kw) == (0, 2, 0.0, 0.0)


# -- hostile: volume derived from quarantined measurements ---------------------------------------


def _attack(state: FleetState, at_ms: int) -> None:
    """b2 reports 95 % SOC (it was at 30 %); the gate quarantines it, with evidence."""
    state.apply(gated_batch(FLEET, [], [("b2", SOC, at_ms, 95.0)], now_ms=at_ms))


def test_quarantined_soc_never_raises_verified_flexibility() -> None:
    clock = ManualClock(NOW_MS)
    state = fleet_state(FLEET, {"b1": 50.0, "b2": 30.0}, ts_ms=NOW_MS - 1_000)
    flex = _flex(state, clock)
    before = flex.assess(Product.DAY_AHEAD, Side.SELL, DELIVERY_MS)
    assert before.counted == 2
    # Honest: b1 0.4*1000*0.95/0.25 = 1520 kW, b2 0.2*1000*0.95/0.25 = 760 kW.
    assert before.up_kw == pytest.approx(2280.0)
    _attack(state, NOW_MS)
    after = flex.assess(Product.DAY_AHEAD, Side.SELL, DELIVERY_MS)
    assert after.up_kw <= before.up_kw
    # b2 is out entirely (its last accepted value may be the start of the attack).
    assert (after.counted, after.suspect) == (1, 1)
    assert after.up_kw == pytest.approx(1520.0)
    # Had the inflated reading counted, b2 alone would have added its full 2000 kW.
    assert battery_kw(B2, 95.0, 0.25, RULES)[0] == 2000.0


def test_suspect_asset_returns_with_its_last_accepted_value_after_the_hold() -> None:
    clock = ManualClock(NOW_MS)
    state = fleet_state(FLEET, {"b1": 50.0, "b2": 30.0}, ts_ms=NOW_MS, suspect_hold_ms=60_000)
    _attack(state, NOW_MS)
    flex = _flex(state, clock, FlexibilityRules(max_age_ms=3_600_000))
    assert flex.assess(Product.DAY_AHEAD, Side.SELL, DELIVERY_MS).suspect == 1
    clock.advance(60_000)
    state.apply(gated_batch(FLEET, [("b2", SOC, clock.now_ms(), 30.0)], now_ms=clock.now_ms()))
    back = flex.assess(Product.DAY_AHEAD, Side.SELL, DELIVERY_MS)
    assert (back.counted, back.suspect) == (2, 0)
    assert back.up_kw == pytest.approx(2280.0)  # 30 %, never the quarantined 95 %


def test_bid_resting_on_quarantined_soc_is_denied_with_reason_and_audited(
    gate: PolicyGate, audit: AuditLog, tmp_path: Path
) -> None:
    clock = ManualClock(NOW_MS)
    state = fleet_state(FLEET, {"b1": 50.0, "b2": 30.0}, ts_ms=NOW_MS - 1_000)
    _attack(state, NOW_MS)
    spy = SpyExchange(DayAheadAuction(clock, seed=1))
    gw = MarketGateway(
        gate,
        [spy],
        audit,
        clock,
        trust_domain=TD,
        flexibility=_flex(state, clock),
        reference_prices=lambda product, start: 75.0,
    )
    # 3.5 MW is what b1 plus an inflated b2 could deliver; verified is 1.52 MW.
    bid = ScheduledBid(Product.DAY_AHEAD, Side.SELL, DELIVERY_MS, 3.5, 80.0)
    result = gw.submit_bid(ALICE, BidSchedule("opt-quarantine", (bid,)), 0)
    assert result.status is GatewayStatus.DENIED
    assert result.reason == "ABOVE_VERIFIED_FLEXIBILITY"
    assert result.decision is not None
    assert result.decision.reasons == [
        "ABOVE_VERIFIED_FLEXIBILITY: 3.5 MW exceeds the verified available flexibility of "
        "1.52 MW (gated state of 1 assets; left out: 1 suspect after a gate quarantine, "
        "0 stale, 0 without state)"
    ]
    assert spy.calls == []  # the exchange never saw it
    rec = [
        r for r in audit_records(tmp_path / "audit.jsonl") if r["event"] == "market.policy_decision"
    ]
    assert rec[-1]["decision"] == "deny" and rec[-1]["reason"] == "ABOVE_VERIFIED_FLEXIBILITY"
    ctx = rec[-1]["details"]["input"]["context"]
    assert ctx["verified_flexibility_kw"] == 1520
    assert ctx["verified_flexibility_basis"] == {
        "counted": 1,
        "suspect": 1,
        "stale": 0,
        "no_state": 0,
    }
    assert verify_audit_log(tmp_path / "audit.jsonl").ok
    # A bid within what the gated state verifies still goes through.
    ok = ScheduledBid(Product.DAY_AHEAD, Side.SELL, DELIVERY_MS, 1.5, 80.0)
    assert gw.submit_bid(ALICE, BidSchedule("opt-ok", (ok,)), 0).status is GatewayStatus.ACCEPTED


def test_soc_lie_caught_by_the_real_gate_never_reaches_a_bid(
    gate: PolicyGate, audit: AuditLog, tmp_path: Path
) -> None:
    """End to end: edge samples -> the FDI gate (temporal judge) -> fleet state -> verified
    flexibility -> policy. The lie is the gate's to catch; the market must not count it."""
    fdi, state = FdiGate(), FleetState()
    t0 = NOW_MS - 130_000
    for asset, soc0, seq in ((B1, 50.0, 1), (B2, 30.0, 2)):
        rows, _ = battery_samples(asset, t0, 13, 0.0, soc0)  # idle for two minutes
        state.apply(fdi.judge(validated_batch(FLEET, rows, seq=seq, now_ms=t0)))
    clock = ManualClock(NOW_MS)
    flex = _flex(state, clock)
    honest = flex.assess(Product.DAY_AHEAD, Side.SELL, DELIVERY_MS)
    assert honest.counted == 2 and honest.up_kw == pytest.approx(2280.0)
    # b2's gateway now reports 95 % with no charging power: flexibility to sell that isn't there.
    lie = [("b2", P, NOW_MS, 0.0), ("b2", SOC, NOW_MS, 95.0)]
    judged = fdi.judge(validated_batch(FLEET, lie, seq=3, now_ms=NOW_MS))
    assert [(q.asset_id, q.quantity) for q in judged.gate_quarantined] == [("b2", SOC)]
    state.apply(judged)
    after = flex.assess(Product.DAY_AHEAD, Side.SELL, DELIVERY_MS)
    assert after.up_kw <= honest.up_kw and after.suspect == 1
    spy = SpyExchange(DayAheadAuction(clock, seed=1))
    gw = MarketGateway(
        gate,
        [spy],
        audit,
        clock,
        trust_domain=TD,
        flexibility=flex,
        reference_prices=lambda product, start: 75.0,
    )
    bid = ScheduledBid(Product.DAY_AHEAD, Side.SELL, DELIVERY_MS, 3.5, 80.0)
    result = gw.submit_bid(ALICE, BidSchedule("opt-lie", (bid,)), 0)
    assert result.status is GatewayStatus.DENIED and result.reason == "ABOVE_VERIFIED_FLEXIBILITY"
    assert spy.calls == []
    decision = [
        r for r in audit_records(tmp_path / "audit.jsonl") if r["event"] == "market.policy_decision"
    ][-1]
    assert decision["details"]["input"]["context"]["verified_flexibility_basis"]["suspect"] == 1
