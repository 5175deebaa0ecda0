# Tests of market.rego. The loader runs them all and loads the policy set only when every
# one passes:
#   - `cases`: a table of input documents. For each, the loader sets it as the input,
#     evaluates data.gridfort.market.decision, and expects either "allow": true (allowed,
#     no reasons) or "deny": the exact set of reason codes. The same table runs through
#     every engine (`opa eval -i` works the same way); no `with input as`, which aborts
#     the embedded engine (see market.rego);
#   - `test_*` rules: the helper functions, called directly.
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

soc_switch(on, ks_state) := {
	"action": {"kind": "kill_switch", "kill_switch_on": on},
	"actor": {"spiffe_id": "spiffe://gridfort.test/soc/sam", "role": "soc"},
	"context": object.union(base.context, {"kill_switch_on": ks_state}),
}

cancel_order := patched(base, {"kind": "cancel", "order_id": "o-1"}, {}, {})

bob := "spiffe://gridfort.test/operator/bob"

cases := {
	"valid_order_is_allowed": {"input": base, "allow": true},
	"patch_keeps_other_fields": {"input": with_action({"volume_kw": 6000}), "allow": true},
	"undersized_bid_is_denied": {"input": with_action({"volume_kw": 50}), "deny": ["LOT_TOO_SMALL", "LOT_INCREMENT"]},
	"oversized_bid_is_denied": {
		"input": patched(base, {"volume_kw": 150000}, {}, {"verified_flexibility_kw": 500000, "approvals": [bob]}),
		"deny": ["LOT_TOO_LARGE"],
	},
	"wrong_energy_increment_is_denied": {"input": with_action({"volume_kw": 5050}), "deny": ["LOT_INCREMENT"]},
	"fractional_fcr_mw_is_denied": {"input": with_action({"product": "fcr", "volume_kw": 1500}), "deny": ["LOT_INCREMENT"]},
	"fcr_below_one_mw_is_denied": {"input": with_action({"product": "fcr", "volume_kw": 900}), "deny": ["LOT_TOO_SMALL", "LOT_INCREMENT"]},
	"order_after_gate_closure_is_denied": {"input": with_context({"now_ms": 1780225200000}), "deny": ["GATE_CLOSED"]},
	"misaligned_delivery_is_denied": {"input": with_context({"delivery_aligned": false}), "deny": ["DELIVERY_NOT_ALIGNED"]},
	"volume_above_verified_flexibility_is_denied": {"input": with_context({"verified_flexibility_kw": 4000}), "deny": ["ABOVE_VERIFIED_FLEXIBILITY"]},
	"no_verified_flexibility_denies_every_trade": {
		"input": with_context({"verified_flexibility_kw": 0}),
		"deny": ["ABOVE_VERIFIED_FLEXIBILITY"],
	},
	"flexibility_basis_only_explains_the_deny": {
		"input": with_context({"verified_flexibility_kw": 2000, "verified_flexibility_basis": {"counted": 1, "suspect": 1, "stale": 0, "no_state": 0}}),
		"deny": ["ABOVE_VERIFIED_FLEXIBILITY"],
	},
	"malformed_flexibility_basis_changes_nothing": {
		"input": with_context({"verified_flexibility_basis": "lots"}),
		"allow": true,
	},
	"afrr_pos_block_is_allowed": {
		"input": patched(base, {"product": "afrr_pos", "volume_kw": 3000, "price_eur_per_mwh": 8}, {}, {"reference_price_eur_per_mwh": 8}),
		"allow": true,
	},
	"afrr_neg_block_is_allowed": {
		"input": patched(base, {"product": "afrr_neg", "volume_kw": 3000, "price_eur_per_mwh": 6}, {}, {"reference_price_eur_per_mwh": 6}),
		"allow": true,
	},
	"afrr_energy_may_have_a_negative_price": {
		"input": patched(base, {"product": "afrr_energy_neg", "volume_kw": 2000, "price_eur_per_mwh": -20}, {}, {"reference_price_eur_per_mwh": -10}),
		"allow": true,
	},
	"afrr_energy_below_one_mw_is_denied": {"input": with_action({"product": "afrr_energy_pos", "volume_kw": 500}), "deny": ["LOT_TOO_SMALL", "LOT_INCREMENT"]},
	"buying_reserve_is_denied": {"input": with_action({"product": "fcr", "side": "buy", "volume_kw": 2000}), "deny": ["WRONG_SIDE"]},
	"trader_without_operator_role_is_denied": {"input": with_actor("spiffe://gridfort.test/soc/eve", "soc"), "deny": ["ROLE_NOT_ALLOWED"]},
	"edge_identity_cannot_trade": {"input": with_actor("spiffe://gridfort.test/edge/site-1", "edge"), "deny": ["ROLE_NOT_ALLOWED"]},
	"actor_of_other_trust_domain_is_denied": {"input": with_actor("spiffe://evil.test/operator/alice", "operator"), "deny": ["WRONG_TRUST_DOMAIN"]},
	"malformed_actor_is_denied": {"input": with_actor("spiffe://gridfort.test/operator/alice/extra", "operator"), "deny": ["ACTOR_MALFORMED"]},
	"path_traversal_actor_is_denied": {"input": with_actor("spiffe://gridfort.test/operator/..", "operator"), "deny": ["ACTOR_MALFORMED"]},
	"claimed_role_must_match_spiffe_id": {"input": with_actor("spiffe://gridfort.test/soc/eve", "operator"), "deny": ["ROLE_MISMATCH", "ROLE_NOT_ALLOWED"]},
	"price_spike_outside_band_is_denied": {"input": with_action({"price_eur_per_mwh": 900}), "deny": ["PRICE_OUT_OF_BAND"]},
	"manipulated_reference_far_from_order_is_denied": {"input": with_context({"reference_price_eur_per_mwh": 3000}), "deny": ["PRICE_OUT_OF_BAND"]},
	"price_beyond_market_limits_is_denied": {
		"input": patched(base, {"price_eur_per_mwh": 5000}, {}, {"reference_price_eur_per_mwh": 4500}),
		"deny": ["PRICE_OUT_OF_MARKET_LIMITS"],
	},
	"missing_reference_price_is_denied": {"input": with_context({"reference_price_eur_per_mwh": null}), "deny": ["PRICE_NO_REFERENCE"]},
	"kill_switch_on_denies_orders": {"input": with_context({"kill_switch_on": true}), "deny": ["KILL_SWITCH_ON"]},
	"kill_switch_on_denies_cancel": {
		"input": patched(cancel_order, {}, {}, {"kill_switch_on": true}),
		"deny": ["KILL_SWITCH_ON"],
	},
	"cancel_before_gate_is_allowed": {"input": cancel_order, "allow": true},
	"cancel_after_gate_is_denied": {"input": patched(cancel_order, {}, {}, {"now_ms": 1780225200000}), "deny": ["GATE_CLOSED"]},
	"soc_may_engage_kill_switch": {"input": soc_switch(true, false), "allow": true},
	"soc_cannot_reengage_while_on": {"input": soc_switch(true, true), "deny": ["KILL_SWITCH_ON"]},
	"soc_may_switch_kill_switch_off": {"input": soc_switch(false, true), "allow": true},
	"operator_cannot_flip_kill_switch": {"input": patched(soc_switch(false, true), {}, base.actor, {}), "deny": ["ROLE_NOT_ALLOWED"]},
	"large_order_needs_four_eyes": {"input": with_action({"volume_kw": 15000}), "deny": ["FOUR_EYES_REQUIRED"]},
	"self_approval_is_a_four_eyes_bypass": {
		"input": patched(base, {"volume_kw": 15000}, {}, {"approvals": ["spiffe://gridfort.test/operator/alice"]}),
		"deny": ["FOUR_EYES_REQUIRED"],
	},
	"soc_approval_does_not_count": {
		"input": patched(base, {"volume_kw": 15000}, {}, {"approvals": ["spiffe://gridfort.test/soc/sam"]}),
		"deny": ["FOUR_EYES_REQUIRED"],
	},
	"second_operator_approval_allows_large_order": {
		"input": patched(base, {"volume_kw": 15000}, {}, {"approvals": [bob]}),
		"allow": true,
	},
	"manual_override_always_needs_four_eyes": {"input": with_action({"kind": "manual_override", "note": "storm"}), "deny": ["FOUR_EYES_REQUIRED"]},
	"position_limit_is_enforced": {"input": with_context({"position_kw": 198000}), "deny": ["POSITION_LIMIT"]},
	"buy_reduces_position": {"input": patched(base, {"side": "buy"}, {}, {"position_kw": 198000}), "allow": true},
	"exposure_limit_is_enforced": {"input": with_context({"exposure_eur": 1999950}), "deny": ["EXPOSURE_LIMIT"]},
	"unknown_action_is_denied": {"input": with_action({"kind": "withdraw_all"}), "deny": ["UNKNOWN_ACTION"]},
	"unknown_product_is_denied": {"input": with_action({"product": "balancing_xyz"}), "deny": ["UNKNOWN_PRODUCT"]},
	"incomplete_input_is_denied": {
		"input": {"action": {"kind": "submit"}},
		"deny": ["INPUT_INCOMPLETE", "ACTOR_MALFORMED"],
	},
	"empty_input_is_denied": {"input": {}, "deny": ["INPUT_INCOMPLETE", "UNKNOWN_ACTION", "ACTOR_MALFORMED"]},
	"non_numeric_volume_is_denied": {"input": with_action({"volume_kw": "5000"}), "deny": ["LOT_INVALID"]},
	"non_numeric_price_is_denied": {"input": with_action({"price_eur_per_mwh": "80"}), "deny": ["PRICE_INVALID"]},
	"string_flexibility_does_not_pass_as_large": {
		"input": with_context({"verified_flexibility_kw": "999999"}),
		"deny": ["INPUT_INCOMPLETE"],
	},
	"null_gate_closure_is_incomplete": {"input": with_context({"gate_closure_ms": null}), "deny": ["INPUT_INCOMPLETE"]},
	"approvals_must_be_a_list": {
		"input": patched(base, {"volume_kw": 15000}, {}, {"approvals": bob}),
		"deny": ["INPUT_INCOMPLETE"],
	},
	"kill_switch_needs_a_boolean": {"input": soc_switch("off", true), "deny": ["INPUT_INCOMPLETE"]},
}

test_band_is_relative_for_large_reference_prices if {
	market.band_eur(3900) == 1950
	market.band_eur(10) == 30
}

test_well_formed_rejects_traversal_and_foreign_schemes if {
	market.well_formed("spiffe://gridfort.test/operator/alice") == true
	market.well_formed("spiffe://gridfort.test/operator/..") == false
	market.well_formed("https://gridfort.test/operator/alice") == false
	market.well_formed(42) == false
}

test_multiple_of_is_exact_for_kw if {
	market.multiple_of(5000, 100)
	not market.multiple_of(5050, 100)
	market.multiple_of(0, 1000)
}

test_larger_works_around_max if {
	market.larger(1950, 30) == 1950
	market.larger(10, 30) == 30
}
