"""The market gateway: policy first, a denied action never reaches an exchange, all audited."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import date
from pathlib import Path
from typing import Any

import pytest

from control_plane.markets.actions import OrderTerms, Product, Side
from control_plane.markets.exchanges.base import (
    ClearingResult,
    ExchangeUnavailable,
    Fill,
    OrderState,
)
from control_plane.markets.exchanges.day_ahead import DayAheadAuction
from control_plane.markets.gateway import (
    BidSchedule,
    GatewayStatus,
    MarketGateway,
    ScheduledBid,
)
from control_plane.markets.policy.engine import Decision
from control_plane.markets.policy.gateway import PolicyGate
from security.audit_log import AuditLog, verify_audit_log
from security.clock import ManualClock
from tests.markets.conftest import (
    ALICE,
    BOB_ID,
    DELIVERY_MS,
    NOW_MS,
    SOC,
    TD,
    audit_records,
    berlin_ms,
)


class SpyExchange:
    """A real day-ahead auction behind a recorder of every call that reaches it."""

    def __init__(self, inner: DayAheadAuction, *, down: bool = False, crash: bool = False) -> None:
        self.inner = inner
        self.calls: list[tuple[str, object]] = []
        self.down = down
        self.crash = crash

    @property
    def name(self) -> str:
        return self.inner.name

    @property
    def products(self) -> frozenset[Product]:
        return self.inner.products

    def _call(self, what: str, arg: object) -> None:
        self.calls.append((what, arg))
        if self.down:
            raise ExchangeUnavailable("connection refused")
        if self.crash:
            raise RuntimeError("adapter bug with internals")

    def submit(self, terms: OrderTerms) -> str:
        self._call("submit", terms)
        return self.inner.submit(terms)

    def modify(self, order_id: str, terms: OrderTerms) -> None:
        self._call("modify", terms)
        self.inner.modify(order_id, terms)

    def cancel(self, order_id: str) -> None:
        self._call("cancel", order_id)
        self.inner.cancel(order_id)

    def order_status(self, order_id: str) -> OrderState:
        return self.inner.order_status(order_id)

    def fills(self, after_seq: int = 0) -> list[Fill]:
        return self.inner.fills(after_seq)

    def clearing_results(self) -> list[ClearingResult]:
        return self.inner.clearing_results()


class Flex:
    def __init__(self, mw: float) -> None:
        self.mw = mw

    def verified_flexibility_mw(
        self, product: Product, side: Side, delivery_start_ms: int
    ) -> float:
        return self.mw


class AllowAll:
    policy_version = "v-allow-all"

    def decide(self, input_doc: Mapping[str, object]) -> Decision:
        return Decision(True, [], "d", self.policy_version)


def schedule(volume_mw: float = 5.0, price: float = 80.0, sid: str = "opt-1") -> BidSchedule:
    bid = ScheduledBid(Product.DAY_AHEAD, Side.SELL, DELIVERY_MS, volume_mw, price)
    return BidSchedule(sid, (bid,))


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(NOW_MS)


@pytest.fixture
def spy(clock: ManualClock) -> SpyExchange:
    return SpyExchange(DayAheadAuction(clock, seed=1))


def make_gateway(
    gate: PolicyGate, spy: SpyExchange, audit: AuditLog, clock: ManualClock, flex: float = 20.0
) -> MarketGateway:
    return MarketGateway(
        gate,
        [spy],
        audit,
        clock,
        trust_domain=TD,
        flexibility=Flex(flex),
        reference_prices=lambda product, start: 75.0,
    )


@pytest.fixture
def gw(gate: PolicyGate, spy: SpyExchange, audit: AuditLog, clock: ManualClock) -> MarketGateway:
    return make_gateway(gate, spy, audit, clock)


def events(tmp_path: Path, name: str) -> list[dict[str, Any]]:
    return [r for r in audit_records(tmp_path / "audit.jsonl") if r["event"] == name]


def assert_denied_unsent(result: Any, code: str, spy: SpyExchange, tmp_path: Path) -> None:
    assert result.status is GatewayStatus.DENIED
    assert code in result.decision.reason_codes
    assert spy.calls == []  # the exchange saw nothing
    [rec] = events(tmp_path, "market.policy_decision")[-1:]
    assert (
        rec["decision"] == "deny" and rec["details"]["decision_id"] == result.decision.decision_id
    )
    assert code in [r.split(":")[0] for r in rec["details"]["reasons"]]
    assert events(tmp_path, "market.exchange_request") == []
    assert verify_audit_log(tmp_path / "audit.jsonl").ok


def test_bid_after_gate_closure_is_denied_and_never_sent(
    gw: MarketGateway, spy: SpyExchange, clock: ManualClock, tmp_path: Path
) -> None:
    clock.set(berlin_ms(2026, 6, 1, 12))
    [r] = gw.submit_schedule(ALICE, schedule())
    assert_denied_unsent(r, "GATE_CLOSED", spy, tmp_path)


def test_bid_with_wrong_increment_is_denied_and_never_sent(
    gw: MarketGateway, spy: SpyExchange, tmp_path: Path
) -> None:
    [r] = gw.submit_schedule(ALICE, schedule(volume_mw=5.05))
    assert_denied_unsent(r, "LOT_INCREMENT", spy, tmp_path)


def test_bid_above_verified_flexibility_is_denied_and_never_sent(
    gate: PolicyGate, spy: SpyExchange, audit: AuditLog, clock: ManualClock, tmp_path: Path
) -> None:
    gw = make_gateway(gate, spy, audit, clock, flex=4.0)
    [r] = gw.submit_schedule(ALICE, schedule(volume_mw=5.0))
    assert_denied_unsent(r, "ABOVE_VERIFIED_FLEXIBILITY", spy, tmp_path)


def test_volume_already_committed_counts_against_flexibility(
    gw: MarketGateway, spy: SpyExchange, tmp_path: Path
) -> None:
    assert gw.submit_schedule(ALICE, schedule(volume_mw=8.0))[0].status is GatewayStatus.ACCEPTED
    [r] = gw.submit_schedule(ALICE, schedule(volume_mw=12.1, sid="opt-2"), approvals=(BOB_ID,))
    assert r.status is GatewayStatus.DENIED
    assert r.decision is not None and "ABOVE_VERIFIED_FLEXIBILITY" in r.decision.reason_codes
    assert len(spy.calls) == 1


def test_kill_switch_on_denies_and_never_sends(
    gw: MarketGateway, spy: SpyExchange, tmp_path: Path
) -> None:
    assert gw.set_kill_switch(SOC, True).status is GatewayStatus.APPLIED
    assert gw.kill_switch_on
    assert events(tmp_path, "market.kill_switch")[0]["details"]["kill_switch_on"] is True
    [r] = gw.submit_schedule(ALICE, schedule())
    assert_denied_unsent(r, "KILL_SWITCH_ON", spy, tmp_path)
    assert gw.set_kill_switch(SOC, False).status is GatewayStatus.APPLIED
    assert gw.submit_schedule(ALICE, schedule(sid="opt-2"))[0].status is GatewayStatus.ACCEPTED


def test_operator_cannot_flip_the_kill_switch(gw: MarketGateway) -> None:
    r = gw.set_kill_switch(ALICE, True)
    assert r.status is GatewayStatus.DENIED and not gw.kill_switch_on


def test_gateway_honours_the_kill_switch_even_if_the_policy_allows(
    spy: SpyExchange, audit: AuditLog, clock: ManualClock, tmp_path: Path
) -> None:
    gw = make_gateway(PolicyGate(lambda: AllowAll(), audit), spy, audit, clock)
    gw.set_kill_switch(SOC, True)
    [r] = gw.submit_schedule(ALICE, schedule())
    assert r.status is GatewayStatus.KILL_SWITCH
    assert spy.calls == []
    assert events(tmp_path, "market.exchange_response")[0]["reason"] == "KILL_SWITCH_ON"


def test_large_bid_without_four_eyes_is_denied_and_never_sent(
    gw: MarketGateway, spy: SpyExchange, tmp_path: Path
) -> None:
    [r] = gw.submit_schedule(ALICE, schedule(volume_mw=12.0))
    assert_denied_unsent(r, "FOUR_EYES_REQUIRED", spy, tmp_path)


def test_self_approval_is_no_second_pair_of_eyes(
    gw: MarketGateway, spy: SpyExchange, tmp_path: Path
) -> None:
    [r] = gw.submit_schedule(ALICE, schedule(volume_mw=12.0), approvals=(ALICE.spiffe_id,))
    assert_denied_unsent(r, "FOUR_EYES_REQUIRED", spy, tmp_path)


def test_large_bid_with_a_second_operator_is_sent(gw: MarketGateway, spy: SpyExchange) -> None:
    [r] = gw.submit_schedule(ALICE, schedule(volume_mw=12.0), approvals=(BOB_ID,))
    assert r.status is GatewayStatus.ACCEPTED
    assert len(spy.calls) == 1


def test_allowed_bid_reaches_the_exchange_and_its_fill_is_audited(
    gw: MarketGateway, spy: SpyExchange, clock: ManualClock, tmp_path: Path
) -> None:
    sched = schedule(volume_mw=5.0, price=50.0)
    [r] = gw.submit_schedule(ALICE, sched)
    assert r.status is GatewayStatus.ACCEPTED and r.order_id
    [(what, terms)] = spy.calls
    assert what == "submit" and terms == sched.bids[0].terms()  # verbatim: no invented volume
    [req] = events(tmp_path, "market.exchange_request")
    [resp] = events(tmp_path, "market.exchange_response")
    assert req["details"]["decision_id"] == resp["details"]["decision_id"] == r.decision.decision_id  # type: ignore[union-attr]
    assert resp["decision"] == "info" and resp["details"]["order_id"] == r.order_id

    clock.set(berlin_ms(2026, 6, 1, 12))
    spy.inner.clear(Product.DAY_AHEAD, DELIVERY_MS)
    [fill] = gw.collect_fills()
    assert fill.order_id == r.order_id
    [rec] = events(tmp_path, "market.fill")
    assert (
        rec["details"]["order_id"] == r.order_id and rec["details"]["volume_kw"] == fill.volume_kw
    )
    assert gw.collect_fills() == []  # each fill once
    assert gw.position_mw(Product.DAY_AHEAD, DELIVERY_MS) == fill.volume_mw
    assert verify_audit_log(tmp_path / "audit.jsonl").ok


def test_a_scheduled_bid_is_sent_at_most_once(gw: MarketGateway, spy: SpyExchange) -> None:
    sched = schedule()
    gw.submit_schedule(ALICE, sched)
    [again] = gw.submit_schedule(ALICE, sched)
    assert again.status is GatewayStatus.ALREADY_SUBMITTED
    assert len(spy.calls) == 1


def test_modify_and_cancel_go_through_the_policy(
    gw: MarketGateway, spy: SpyExchange, clock: ManualClock
) -> None:
    [r] = gw.submit_schedule(ALICE, schedule(volume_mw=5.0))
    assert r.order_id is not None
    m = gw.modify(ALICE, r.order_id, schedule(volume_mw=7.0, sid="opt-2"), 0)
    assert m.status is GatewayStatus.ACCEPTED
    assert spy.inner.order_status(r.order_id).terms.volume_kw == 7_000
    assert gw.cancel(ALICE, r.order_id).status is GatewayStatus.ACCEPTED
    assert [c[0] for c in spy.calls] == ["submit", "modify", "cancel"]
    clock.set(berlin_ms(2026, 6, 1, 12))
    assert gw.cancel(ALICE, r.order_id).status is GatewayStatus.DENIED  # gate closed
    assert len(spy.calls) == 3


def test_exchange_failure_is_audited(
    gate: PolicyGate, audit: AuditLog, clock: ManualClock, tmp_path: Path
) -> None:
    spy = SpyExchange(DayAheadAuction(clock), down=True)
    gw = make_gateway(gate, spy, audit, clock)
    [r] = gw.submit_schedule(ALICE, schedule())
    assert r.status is GatewayStatus.EXCHANGE_ERROR
    [resp] = events(tmp_path, "market.exchange_response")
    assert resp["decision"] == "deny" and resp["reason"] == "EXCHANGE_ERROR"


def test_manual_override_needs_four_eyes(gw: MarketGateway, spy: SpyExchange) -> None:
    terms = schedule().bids[0].terms()
    assert gw.manual_override(ALICE, terms, "hedge").status is GatewayStatus.DENIED
    assert spy.calls == []
    assert gw.manual_override(ALICE, terms, "hedge", (BOB_ID,)).status is GatewayStatus.ACCEPTED


def test_schedule_cannot_hold_two_bids_for_the_same_period() -> None:
    bid = ScheduledBid(Product.DAY_AHEAD, Side.SELL, DELIVERY_MS, 1.0, 50.0)
    with pytest.raises(ValueError):
        BidSchedule("x", (bid, bid))
    with pytest.raises(ValueError):
        ScheduledBid(Product.DAY_AHEAD, Side.SELL, DELIVERY_MS, -1.0, 50.0)


def test_unknown_order_is_refused_and_audited(
    gw: MarketGateway, spy: SpyExchange, tmp_path: Path
) -> None:
    assert gw.cancel(ALICE, "day-ahead-999").status is GatewayStatus.UNKNOWN_ORDER
    assert gw.modify(ALICE, "day-ahead-999", schedule(), 0).status is GatewayStatus.UNKNOWN_ORDER
    assert spy.calls == []
    recs = events(tmp_path, "market.gateway_refusal")
    assert [r["reason"] for r in recs] == ["UNKNOWN_ORDER", "UNKNOWN_ORDER"]


def test_resubmission_is_refused_and_audited(gw: MarketGateway, tmp_path: Path) -> None:
    sched = schedule()
    gw.submit_schedule(ALICE, sched)
    gw.submit_schedule(ALICE, sched)
    [rec] = events(tmp_path, "market.gateway_refusal")
    assert rec["reason"] == "ALREADY_SUBMITTED" and rec["identity"] == ALICE.spiffe_id


def test_adapter_crash_is_an_audited_exchange_error(
    gate: PolicyGate, audit: AuditLog, clock: ManualClock, tmp_path: Path
) -> None:
    gw = make_gateway(gate, SpyExchange(DayAheadAuction(clock), crash=True), audit, clock)
    [r] = gw.submit_schedule(ALICE, schedule())
    assert r.status is GatewayStatus.EXCHANGE_ERROR
    [resp] = events(tmp_path, "market.exchange_response")
    assert resp["details"]["message"] == "unexpected RuntimeError"


def test_reserve_products_held_in_one_period_share_the_flexibility(
    gate: PolicyGate, audit: AuditLog, clock: ManualClock
) -> None:
    """FCR holds power up and down; aFRR+ in the same 4-h block draws on the same upward
    flexibility, so 2 MW of FCR leave 1 MW of 3 for aFRR+ (and nothing is double sold)."""
    from control_plane.markets.exchanges.base import delivery_starts
    from control_plane.markets.exchanges.reserves import ReserveAuction

    reserves = SpyExchange(ReserveAuction(clock, seed=0))  # type: ignore[arg-type]
    gw = MarketGateway(
        gate,
        [reserves],
        audit,
        clock,
        trust_domain=TD,
        flexibility=Flex(3.0),
        reference_prices=lambda product, start: 75.0,
    )
    block = delivery_starts(Product.FCR, date(2026, 6, 2))[2]

    def bid(product: Product, mw: float, sid: str) -> BidSchedule:
        return BidSchedule(sid, (ScheduledBid(product, Side.SELL, block, mw, 75.0),))

    assert gw.submit_schedule(ALICE, bid(Product.FCR, 2.0, "fcr"))[0].sent
    [too_much] = gw.submit_schedule(ALICE, bid(Product.AFRR_POS, 2.0, "afrr-2"))
    assert too_much.status is GatewayStatus.DENIED
    assert too_much.decision is not None
    assert "ABOVE_VERIFIED_FLEXIBILITY" in too_much.decision.reason_codes
    assert gw.submit_schedule(ALICE, bid(Product.AFRR_POS, 1.0, "afrr-1"))[0].sent
    assert len(reserves.calls) == 2
