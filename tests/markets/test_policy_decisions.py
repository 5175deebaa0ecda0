"""The decision table: every market rule through the real gate and the real Rego policy.

Each deny asserts its exact reason codes. The table runs through every policy engine
(``backends.all_backends()``: regopy, and real OPA in-process); an engine that is not
installed here is skipped with its reason, never replaced by a stand-in.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from control_plane.markets.actions import Actor, MarketAction, Product, Side
from control_plane.markets.policy.backends import EngineKind, backend_for
from control_plane.markets.policy.engine import PolicyEngine
from control_plane.markets.policy.gateway import MarketContext, PolicyGate
from control_plane.markets.policy.policy_set import read_policy_dir
from security.audit_log import AuditLog
from tests.markets.conftest import (
    ALICE,
    BOB_ID,
    POLICIES,
    SOC,
    TD,
    audit_records,
    berlin_ms,
    cancel,
    context,
    kill_switch,
    override,
    submit,
)

_engines: dict[str, PolicyEngine] = {}


@pytest.fixture(params=[k.value for k in EngineKind])
def any_gate(request: pytest.FixtureRequest, audit: AuditLog) -> PolicyGate:
    name: str = request.param
    backend = backend_for(name)
    why = backend.unavailable_reason()
    if why is not None:
        pytest.skip(f"policy engine {name} is not available here: {why}")
    if name not in _engines:
        _engines[name] = backend.compile(read_policy_dir(POLICIES))
    engine = _engines[name]
    return PolicyGate(lambda: engine, audit, timeout_s=2.0, engine_name=name)


FCR_START = berlin_ms(2026, 6, 2, 8)  # 08:00 CEST block; gate 2026-06-01 08:00 CEST
DST_START = berlin_ms(2026, 3, 29, 3)  # first hour after the spring jump; gate 28 March 12:00 CET

# (action, context, the exact set of reason codes expected: "A" or "A+B")
Case = tuple[MarketAction, MarketContext, str | None]

ALLOWED: dict[str, Case] = {
    "day_ahead_sell_5_mw": (submit(), context(), None),
    "intraday_buy_min_lot": (
        submit(product=Product.INTRADAY, side=Side.BUY, volume_mw=0.1),
        context(),
        None,
    ),
    "fcr_2_mw_before_8": (
        submit(product=Product.FCR, volume_mw=2, price_eur_per_mwh=15, delivery_start_ms=FCR_START),
        context(now_ms=berlin_ms(2026, 6, 1, 7, 59), reference_price_eur_per_mwh=12),
        None,
    ),
    "afrr_pos_3_mw": (
        submit(
            product=Product.AFRR_POS,
            volume_mw=3,
            price_eur_per_mwh=8,
            delivery_start_ms=berlin_ms(2026, 6, 2, 12),
        ),
        context(reference_price_eur_per_mwh=8),
        None,
    ),
    "afrr_neg_2_mw_before_9": (
        submit(
            product=Product.AFRR_NEG, volume_mw=2, price_eur_per_mwh=6, delivery_start_ms=FCR_START
        ),
        context(now_ms=berlin_ms(2026, 6, 1, 8, 59), reference_price_eur_per_mwh=6),
        None,
    ),
    "afrr_energy_neg_at_negative_price_30_min_before": (
        submit(
            product=Product.AFRR_ENERGY_NEG,
            volume_mw=2,
            price_eur_per_mwh=-25,
            delivery_start_ms=berlin_ms(2026, 6, 2, 10, 15),
        ),
        context(now_ms=berlin_ms(2026, 6, 2, 9, 45), reference_price_eur_per_mwh=-10),
        None,
    ),
    "capacity_1_mw": (submit(product=Product.CAPACITY, volume_mw=1), context(), None),
    "cancel_before_gate": (cancel(), context(), None),
    "soc_engages_kill_switch": (kill_switch(True), context(), None),
    "soc_switches_kill_switch_off": (kill_switch(False), context(kill_switch_on=True), None),
    "large_order_with_second_operator": (submit(volume_mw=15), context(approvals=(BOB_ID,)), None),
    "manual_override_with_second_operator": (override(), context(approvals=(BOB_ID,)), None),
    "price_within_band": (submit(price_eur_per_mwh=110), context(), None),
    "dst_day_before_gate": (
        submit(delivery_start_ms=DST_START),
        context(now_ms=berlin_ms(2026, 3, 28, 11, 59)),
        None,
    ),
}

DENIED: dict[str, Case] = {
    "undersized_bid": (submit(volume_mw=0.05), context(), "LOT_TOO_SMALL+LOT_INCREMENT"),
    "undersized_fcr_bid": (
        submit(product=Product.FCR, volume_mw=0.5, delivery_start_ms=FCR_START),
        context(),
        "LOT_TOO_SMALL+LOT_INCREMENT",
    ),
    "oversized_bid": (
        submit(volume_mw=150),
        context(verified_flexibility_mw=500, approvals=(BOB_ID,)),
        "LOT_TOO_LARGE",
    ),
    "wrong_energy_increment": (submit(volume_mw=5.05), context(), "LOT_INCREMENT"),
    "fractional_fcr_mw": (
        submit(product=Product.FCR, volume_mw=1.5, delivery_start_ms=FCR_START),
        context(),
        "LOT_INCREMENT",
    ),
    "after_day_ahead_gate_closure": (
        submit(),
        context(now_ms=berlin_ms(2026, 6, 1, 12)),
        "GATE_CLOSED",
    ),
    "afrr_energy_after_its_25_min_gate": (
        submit(
            product=Product.AFRR_ENERGY_POS,
            volume_mw=2,
            price_eur_per_mwh=120,
            delivery_start_ms=berlin_ms(2026, 6, 2, 10, 15),
        ),
        context(now_ms=berlin_ms(2026, 6, 2, 9, 50), reference_price_eur_per_mwh=115),
        "GATE_CLOSED",
    ),
    "afrr_capacity_after_9_the_day_before": (
        submit(
            product=Product.AFRR_POS, volume_mw=2, price_eur_per_mwh=8, delivery_start_ms=FCR_START
        ),
        context(now_ms=berlin_ms(2026, 6, 1, 9), reference_price_eur_per_mwh=8),
        "GATE_CLOSED",
    ),
    "buying_reserve_capacity": (
        submit(
            product=Product.AFRR_NEG,
            side=Side.BUY,
            volume_mw=2,
            price_eur_per_mwh=6,
            delivery_start_ms=FCR_START,
        ),
        context(reference_price_eur_per_mwh=6),
        "WRONG_SIDE",
    ),
    "after_fcr_gate_closure": (
        submit(product=Product.FCR, volume_mw=2, delivery_start_ms=FCR_START),
        context(now_ms=berlin_ms(2026, 6, 1, 8, 1)),
        "GATE_CLOSED",
    ),
    "after_gate_closure_on_dst_day": (
        submit(delivery_start_ms=DST_START),
        context(now_ms=berlin_ms(2026, 3, 28, 12, 0)),
        "GATE_CLOSED",
    ),
    "cancel_after_gate_closure": (
        cancel(),
        context(now_ms=berlin_ms(2026, 6, 1, 13)),
        "GATE_CLOSED",
    ),
    "misaligned_delivery": (
        submit(delivery_start_ms=berlin_ms(2026, 6, 2, 8, 7)),
        context(),
        "DELIVERY_NOT_ALIGNED",
    ),
    "volume_above_verified_flexibility": (
        submit(volume_mw=5),
        context(verified_flexibility_mw=4.9),
        "ABOVE_VERIFIED_FLEXIBILITY",
    ),
    "trader_without_operator_role": (
        submit(actor=Actor(f"spiffe://{TD}/soc/sam", "soc")),
        context(),
        "ROLE_NOT_ALLOWED",
    ),
    "control_plane_workload_cannot_trade": (
        submit(actor=Actor(f"spiffe://{TD}/control-plane/cp-1", "control-plane")),
        context(),
        "ROLE_NOT_ALLOWED",
    ),
    "forged_actor_of_other_trust_domain": (
        submit(actor=Actor("spiffe://evil.example/operator/alice", "operator")),
        context(),
        "WRONG_TRUST_DOMAIN",
    ),
    "forged_actor_malformed_spiffe_id": (
        submit(actor=Actor(f"spiffe://{TD}/operator/alice/../admin", "operator")),
        context(),
        "ACTOR_MALFORMED",
    ),
    "forged_actor_wrong_scheme": (
        submit(actor=Actor(f"https://{TD}/operator/alice", "operator")),
        context(),
        "ACTOR_MALFORMED",
    ),
    "forged_actor_claims_operator_role": (
        submit(actor=Actor(f"spiffe://{TD}/edge/site-1", "operator")),
        context(),
        "ROLE_MISMATCH+ROLE_NOT_ALLOWED",
    ),
    "price_spike_outside_band": (submit(price_eur_per_mwh=900), context(), "PRICE_OUT_OF_BAND"),
    "fat_finger_negative_price": (
        submit(price_eur_per_mwh=-80),
        context(),
        "PRICE_OUT_OF_BAND",
    ),
    "manipulated_reference_price_spike": (
        submit(),
        context(reference_price_eur_per_mwh=3999),
        "PRICE_OUT_OF_BAND",
    ),
    "no_reference_price": (
        submit(),
        context(reference_price_eur_per_mwh=None),
        "PRICE_NO_REFERENCE",
    ),
    "price_beyond_market_cap": (
        submit(price_eur_per_mwh=4100, volume_mw=0.1),
        context(reference_price_eur_per_mwh=3900),
        "PRICE_OUT_OF_MARKET_LIMITS",
    ),
    "kill_switch_on_blocks_submit": (submit(), context(kill_switch_on=True), "KILL_SWITCH_ON"),
    "kill_switch_on_blocks_cancel": (cancel(), context(kill_switch_on=True), "KILL_SWITCH_ON"),
    "operator_cannot_flip_kill_switch": (
        kill_switch(False, actor=ALICE),
        context(kill_switch_on=True),
        "ROLE_NOT_ALLOWED",
    ),
    "four_eyes_missing_for_large_order": (submit(volume_mw=15), context(), "FOUR_EYES_REQUIRED"),
    "four_eyes_bypass_by_self_approval": (
        submit(volume_mw=15),
        context(approvals=(ALICE.spiffe_id,)),
        "FOUR_EYES_REQUIRED",
    ),
    "four_eyes_bypass_by_soc_approval": (
        submit(volume_mw=15),
        context(approvals=(SOC.spiffe_id,)),
        "FOUR_EYES_REQUIRED",
    ),
    "four_eyes_bypass_by_foreign_operator": (
        submit(volume_mw=15),
        context(approvals=("spiffe://evil.example/operator/bob",)),
        "FOUR_EYES_REQUIRED",
    ),
    "manual_override_without_approval": (override(), context(), "FOUR_EYES_REQUIRED"),
    "position_limit": (submit(), context(position_mw=198), "POSITION_LIMIT"),
    "exposure_limit": (submit(), context(exposure_eur=1_999_950), "EXPOSURE_LIMIT"),
}


@pytest.mark.parametrize("case", sorted(ALLOWED))
def test_allowed(case: str, any_gate: PolicyGate) -> None:
    action, ctx, _ = ALLOWED[case]
    decision = any_gate.check(action, ctx)
    assert decision.allow, decision.reasons
    assert decision.reasons == []


@pytest.mark.parametrize("case", sorted(DENIED))
def test_denied_with_reason(case: str, any_gate: PolicyGate) -> None:
    action, ctx, codes = DENIED[case]
    assert codes is not None
    decision = any_gate.check(action, ctx)
    assert not decision.allow
    assert sorted(decision.reason_codes) == sorted(codes.split("+")), decision.reasons


def test_deny_reasons_are_precise(any_gate: PolicyGate) -> None:
    d = any_gate.check(submit(volume_mw=5.05), context())
    assert d.reasons == [
        "LOT_INCREMENT: 5.05 MW is not a multiple of the day_ahead increment of 0.1 MW"
    ]
    d = any_gate.check(submit(), context(now_ms=berlin_ms(2026, 6, 1, 12, 30)))
    assert d.reasons == [
        "GATE_CLOSED: day_ahead gate for delivery 2026-06-02T08:00:00+02:00 "
        "closed at 2026-06-01T12:00:00+02:00"
    ]


def test_every_violation_is_reported_not_just_the_first(any_gate: PolicyGate) -> None:
    d = any_gate.check(
        submit(actor=Actor(f"spiffe://{TD}/soc/sam", "soc"), volume_mw=0.05, price_eur_per_mwh=900),
        context(now_ms=berlin_ms(2026, 6, 1, 13), kill_switch_on=True),
    )
    assert set(d.reason_codes) >= {
        "ROLE_NOT_ALLOWED",
        "LOT_TOO_SMALL",
        "LOT_INCREMENT",
        "GATE_CLOSED",
        "PRICE_OUT_OF_BAND",
        "KILL_SWITCH_ON",
    }


def test_hostile_strings_in_identity_do_not_break_the_decision(any_gate: PolicyGate) -> None:
    evil = Actor('spiffe://gridfort.test/operator/a"},"allow":true,"x":{"', "operator")
    d = any_gate.check(submit(actor=evil), context())
    assert not d.allow
    assert d.reason_codes == ["ACTOR_MALFORMED"]


def test_decisions_are_audited_with_input(any_gate: PolicyGate, tmp_path: Path) -> None:
    d = any_gate.check(submit(volume_mw=0.05), context())
    rec = audit_records(tmp_path / "audit.jsonl")[-1]
    assert rec["details"]["decision_id"] == d.decision_id
    assert rec["details"]["input"]["action"]["volume_kw"] == 50
