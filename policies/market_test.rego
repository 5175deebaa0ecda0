# Tests of market.rego. The loader runs every test_* rule and loads the policy set only
# when all pass. Fixtures are passed to decision_for(); no `with input as` (see market.rego).
package gridfort.market_test

import rego.v1

import data.gridfort.market

# A valid order: sell 5 MW day-ahead at 80 EUR/MWh, 1 h before gate closure.
base := {
	"action": {
		"kind": "submit",
		"product": "day_ahead",
		"side": "sell",
		"volume_kw": 5000,
		"price_eur_per_mwh": 80,
		"delivery_start_ms": 1780351200000,
	},
	"actor": {"spiffe_id": "spiffe://gridfort.test/operator/alice", "role": "operator"},
	"context": {
		"trust_domain": "gridfort.test",
		"now_ms": 1780221600000,
		"gate_closure_ms": 1780225200000,
		"delivery_aligned": true,
		"verified_flexibility_kw": 20000,
		"position_kw": 0,
		"exposure_eur": 0,
		"reference_price_eur_per_mwh": 75,
		"kill_switch_on": false,
		"approvals": [],
	},
}

# object.union is not recursive in the embedded engine: patch one level explicitly.
patched(inp, action_patch, actor_patch, context_patch) := {
	"action": object.union(inp.action, action_patch),
	"actor": object.union(inp.actor, actor_patch),
	"context": object.union(inp.context, context_patch),
}

with_action(patch) := patched(base, patch, {}, {})

with_context(patch) := patched(base, {}, {}, patch)

with_actor(id, role) := patched(base, {}, {"spiffe_id": id, "role": role}, {})

denied_for(inp, code) if {
	d := market.decision_for(inp)
	d.allow == false
	prefix := concat("", [code, ":"])
	some r in d.reasons
	startswith(r, prefix)
}

allowed(inp) if {
	d := market.decision_for(inp)
	d.allow == true
	count(d.reasons) == 0
}

test_valid_order_is_allowed if allowed(base)

test_patch_keeps_other_fields if {
	inp := with_action({"volume_kw": 6000})
	inp.action.product == "day_ahead"
	allowed(inp)
}

test_undersized_bid_is_denied if denied_for(with_action({"volume_kw": 50}), "LOT_TOO_SMALL")

test_oversized_bid_is_denied if {
	inp := patched(base, {"volume_kw": 150000}, {}, {"verified_flexibility_kw": 500000})
	denied_for(inp, "LOT_TOO_LARGE")
}

test_wrong_energy_increment_is_denied if denied_for(with_action({"volume_kw": 5050}), "LOT_INCREMENT")

test_fractional_fcr_mw_is_denied if {
	denied_for(with_action({"product": "fcr", "volume_kw": 1500}), "LOT_INCREMENT")
}

test_fcr_below_one_mw_is_denied if {
	denied_for(with_action({"product": "fcr", "volume_kw": 900}), "LOT_TOO_SMALL")
}

test_order_after_gate_closure_is_denied if {
	denied_for(with_context({"now_ms": 1780225200000}), "GATE_CLOSED")
}

test_misaligned_delivery_is_denied if {
	denied_for(with_context({"delivery_aligned": false}), "DELIVERY_NOT_ALIGNED")
}

test_volume_above_verified_flexibility_is_denied if {
	denied_for(with_context({"verified_flexibility_kw": 4000}), "ABOVE_VERIFIED_FLEXIBILITY")
}

test_trader_without_operator_role_is_denied if {
	denied_for(with_actor("spiffe://gridfort.test/soc/eve", "soc"), "ROLE_NOT_ALLOWED")
}

test_edge_identity_cannot_trade if {
	denied_for(with_actor("spiffe://gridfort.test/edge/site-1", "edge"), "ROLE_NOT_ALLOWED")
}

test_actor_of_other_trust_domain_is_denied if {
	denied_for(with_actor("spiffe://evil.test/operator/alice", "operator"), "WRONG_TRUST_DOMAIN")
}

test_malformed_actor_is_denied if {
	denied_for(with_actor("spiffe://gridfort.test/operator/alice/extra", "operator"), "ACTOR_MALFORMED")
}

test_path_traversal_actor_is_denied if {
	denied_for(with_actor("spiffe://gridfort.test/operator/..", "operator"), "ACTOR_MALFORMED")
}

test_claimed_role_must_match_spiffe_id if {
	denied_for(with_actor("spiffe://gridfort.test/soc/eve", "operator"), "ROLE_MISMATCH")
}

test_price_spike_outside_band_is_denied if {
	denied_for(with_action({"price_eur_per_mwh": 900}), "PRICE_OUT_OF_BAND")
}

test_manipulated_reference_far_from_order_is_denied if {
	denied_for(with_context({"reference_price_eur_per_mwh": 3000}), "PRICE_OUT_OF_BAND")
}

test_band_is_relative_for_large_reference_prices if {
	market.band_eur(3900) == 1950
	market.band_eur(10) == 30
}

test_price_beyond_market_limits_is_denied if {
	inp := patched(base, {"price_eur_per_mwh": 5000}, {}, {"reference_price_eur_per_mwh": 4500})
	denied_for(inp, "PRICE_OUT_OF_MARKET_LIMITS")
}

test_missing_reference_price_is_denied if {
	denied_for(with_context({"reference_price_eur_per_mwh": null}), "PRICE_NO_REFERENCE")
}

test_kill_switch_on_denies_orders if denied_for(with_context({"kill_switch_on": true}), "KILL_SWITCH_ON")

test_kill_switch_on_denies_cancel if {
	inp := patched(base, {"kind": "cancel", "order_id": "o-1"}, {}, {"kill_switch_on": true})
	denied_for(inp, "KILL_SWITCH_ON")
}

soc_switch(on, ks_state) := {
	"action": {"kind": "kill_switch", "kill_switch_on": on},
	"actor": {"spiffe_id": "spiffe://gridfort.test/soc/sam", "role": "soc"},
	"context": object.union(base.context, {"kill_switch_on": ks_state}),
}

test_soc_may_engage_kill_switch if allowed(soc_switch(true, false))

test_soc_cannot_reengage_while_on if denied_for(soc_switch(true, true), "KILL_SWITCH_ON")

test_soc_may_switch_kill_switch_off if allowed(soc_switch(false, true))

test_operator_cannot_flip_kill_switch if {
	inp := patched(soc_switch(false, true), {}, base.actor, {})
	denied_for(inp, "ROLE_NOT_ALLOWED")
}

test_large_order_needs_four_eyes if denied_for(with_action({"volume_kw": 15000}), "FOUR_EYES_REQUIRED")

test_self_approval_is_a_four_eyes_bypass if {
	inp := patched(base, {"volume_kw": 15000}, {}, {"approvals": ["spiffe://gridfort.test/operator/alice"]})
	denied_for(inp, "FOUR_EYES_REQUIRED")
}

test_soc_approval_does_not_count if {
	inp := patched(base, {"volume_kw": 15000}, {}, {"approvals": ["spiffe://gridfort.test/soc/sam"]})
	denied_for(inp, "FOUR_EYES_REQUIRED")
}

test_second_operator_approval_allows_large_order if {
	inp := patched(base, {"volume_kw": 15000}, {}, {"approvals": ["spiffe://gridfort.test/operator/bob"]})
	allowed(inp)
}

test_manual_override_always_needs_four_eyes if {
	denied_for(with_action({"kind": "manual_override", "note": "storm"}), "FOUR_EYES_REQUIRED")
}

test_position_limit_is_enforced if denied_for(with_context({"position_kw": 198000}), "POSITION_LIMIT")

test_buy_reduces_position if {
	inp := patched(base, {"side": "buy"}, {}, {"position_kw": 198000})
	allowed(inp)
}

test_exposure_limit_is_enforced if denied_for(with_context({"exposure_eur": 1999950}), "EXPOSURE_LIMIT")

test_unknown_action_is_denied if denied_for(with_action({"kind": "withdraw_all"}), "UNKNOWN_ACTION")

test_unknown_product_is_denied if denied_for(with_action({"product": "balancing_xyz"}), "UNKNOWN_PRODUCT")

test_incomplete_input_is_denied if {
	denied_for({"action": {"kind": "submit"}}, "INPUT_INCOMPLETE")
}

test_empty_input_is_denied if denied_for({}, "UNKNOWN_ACTION")
