# Market actions: default deny; every deny reason is "CODE: message".
#
# The decision is a function of the input document, decision_for(inp), so the tests in
# market_test.rego call it with fixtures instead of `with input as` (which the embedded
# engine, regopy 1.5.2, cannot evaluate). `decision` is the entry point the engines
# query. facts(inp) reads every field once (rule bodies then do cheap lookups: this keeps
# a decision well under 1 ms). Input schema and reason codes: docs/policy-writing.md.
#
# Workarounds for regopy 1.5.2, all portable Rego that OPA evaluates the same way:
#   - messages are built with concat(), never sprintf() on strings (it quotes them
#     without escaping); text() keeps a hostile non-string out of a message;
#   - multiple_of() instead of `%` (5000 % 100 comes back as "00", which is != 0);
#   - larger() instead of max() (max([1950, 30]) comes back as 30);
#   - index lookups like lot_min_kw[f.product] bind the key first (no calls in the key).
package gridfort.market

import rego.v1

decision := decision_for(input)

decision_for(inp) := {"allow": count(r) == 0, "reasons": sort([m | some m in r])} if {
	f := facts(inp)
	r := reasons(f)
}

reasons(f) := (((((((((input_reasons(f) | identity_reasons(f)) | role_reasons(f)) | kill_switch_reasons(f)) | lot_reasons(f)) | gate_reasons(f)) | flexibility_reasons(f)) | limit_reasons(f)) | price_reasons(f)) | four_eyes_reasons(f))

trade_kinds := {"submit", "modify", "manual_override"}

order_kinds := {"submit", "modify", "manual_override", "cancel"}

action_kinds := {"submit", "modify", "manual_override", "cancel", "kill_switch"}

products := {"day_ahead", "intraday", "capacity", "fcr", "afrr"}

required_fields := {
	"submit": ["product", "side", "volume_kw", "price_eur_per_mwh", "delivery_start_ms"],
	"modify": ["order_id", "product", "side", "volume_kw", "price_eur_per_mwh", "delivery_start_ms"],
	"manual_override": ["product", "side", "volume_kw", "price_eur_per_mwh", "delivery_start_ms"],
	"cancel": ["order_id", "product", "delivery_start_ms"],
	"kill_switch": ["kill_switch_on"],
}

trade_context := ["now_ms", "trust_domain", "kill_switch_on", "gate_closure_ms", "delivery_aligned", "verified_flexibility_kw", "position_kw", "exposure_eur"]

required_context := {
	"submit": trade_context,
	"modify": trade_context,
	"manual_override": trade_context,
	"cancel": ["now_ms", "trust_domain", "kill_switch_on", "gate_closure_ms"],
	"kill_switch": ["now_ms", "trust_domain", "kill_switch_on"],
}

# -- facts: every field read once, with defaults -------------------------------------------------

facts(inp) := {
	"action": a,
	"ctx": c,
	"kind": k,
	"trade": k in trade_kinds,
	"order": k in order_kinds,
	"product": object.get(a, "product", ""),
	"side": object.get(a, "side", ""),
	"volume_kw": object.get(a, "volume_kw", null),
	"price": object.get(a, "price_eur_per_mwh", null),
	"actor_id": id,
	"claimed_role": object.get(actor, "role", ""),
	"parse_error": object.get(actor, "parse_error", ""),
	"id_ok": ok,
	"domain": spiffe_part(id, ok, 0),
	"role": spiffe_part(id, ok, 1),
	"trust_domain": object.get(c, "trust_domain", ""),
	"approvals": object.get(c, "approvals", []),
} if {
	a := object.get(inp, "action", {})
	c := object.get(inp, "context", {})
	actor := object.get(inp, "actor", {})
	k := object.get(a, "kind", "")
	id := object.get(actor, "spiffe_id", "")
	ok := well_formed(id)
}

spiffe_re := `^spiffe://[a-z0-9._-]+/(edge|control-plane|operator|soc)/[A-Za-z0-9_-][A-Za-z0-9._-]{0,63}$`

# spiffe://<trust-domain>/<role>/<name>, the strict subset security/identity.py accepts.
well_formed(id) := true if {
	is_string(id)
	regex.match(spiffe_re, id)
	not contains(id, "..")
} else := false

spiffe_part(id, true, i) := split(trim_prefix(id, "spiffe://"), "/")[i]

spiffe_part(_, false, _) := ""

text(x) := x if is_string(x)

text(x) := "(not a string)" if not is_string(x)

num(x) := sprintf("%v", [x]) if is_number(x)

num(x) := "(not a number)" if not is_number(x)

multiple_of(v, inc) if {
	q := v / inc
	q == floor(q)
}

larger(a, b) := a if a >= b

larger(a, b) := b if a < b

in_range(x, lo, hi) if {
	x >= lo
	x <= hi
}

# -- input completeness --------------------------------------------------------------------------

input_reasons(f) := {msg |
	not f.kind in action_kinds
	msg := concat("", ["UNKNOWN_ACTION: action kind ", text(f.kind), " is not one of cancel, kill_switch, manual_override, modify, submit"])
} | {msg |
	k := f.kind
	some field in required_fields[k]
	object.get(f.action, field, null) == null
	msg := concat("", ["INPUT_INCOMPLETE: ", k, " action has no ", field])
} | {msg |
	k := f.kind
	some field in object.get(required_context, k, ["now_ms", "trust_domain", "kill_switch_on"])
	object.get(f.ctx, field, null) == null
	msg := concat("", ["INPUT_INCOMPLETE: context has no ", field])
} | {msg |
	f.order
	not f.product in products
	msg := concat("", ["UNKNOWN_PRODUCT: product ", text(f.product), " is not one of afrr, capacity, day_ahead, fcr, intraday"])
} | {msg |
	f.trade
	not f.side in {"buy", "sell"}
	msg := concat("", ["INPUT_INCOMPLETE: side ", text(f.side), " is neither buy nor sell"])
}

# -- identity: a well-formed SPIFFE ID of our trust domain whose role matches the claim ----------

identity_reasons(f) := {msg |
	f.id_ok == false
	msg := concat("", ["ACTOR_MALFORMED: actor ", text(f.actor_id), " is not a SPIFFE ID spiffe://<domain>/<role>/<name> (", text(f.parse_error), ")"])
} | {msg |
	f.id_ok == true
	f.domain != f.trust_domain
	msg := concat("", ["WRONG_TRUST_DOMAIN: actor ", f.actor_id, " is of trust domain ", f.domain, ", not ", text(f.trust_domain)])
} | {msg |
	f.id_ok == true
	f.claimed_role != f.role
	msg := concat("", ["ROLE_MISMATCH: actor claims role ", text(f.claimed_role), " but its SPIFFE ID says ", f.role])
}

# -- roles: operators trade, the SOC flips the kill switch ---------------------------------------

role_reasons(f) := {msg |
	f.order
	f.id_ok == true
	f.role != "operator"
	msg := concat("", ["ROLE_NOT_ALLOWED: role ", f.role, " may not ", f.kind, "; only operator identities trade"])
} | {msg |
	f.kind == "kill_switch"
	f.id_ok == true
	f.role != "soc"
	msg := concat("", ["ROLE_NOT_ALLOWED: role ", f.role, " may not flip the market kill switch; only soc identities may"])
}

# -- kill switch: when on, everything is denied except the SOC switching it off ------------------

kill_switch_reasons(f) := {msg |
	f.ctx.kill_switch_on == true
	not switching_off(f)
	msg := concat("", ["KILL_SWITCH_ON: the market kill switch is on; ", text(f.kind), " denied until the SOC switches it off"])
}

switching_off(f) if {
	f.kind == "kill_switch"
	f.action.kill_switch_on == false
}

# -- lot size and increments ----------------------------------------------------------------------

lot_reasons(f) := {msg |
	f.trade
	not is_number(f.volume_kw)
	msg := "LOT_INVALID: volume_kw is not a number"
} | {msg |
	f.trade
	p := f.product
	min_kw := lot_min_kw[p]
	f.volume_kw < min_kw
	msg := concat("", ["LOT_TOO_SMALL: ", num(f.volume_kw / 1000), " MW is below the ", p, " minimum of ", num(min_kw / 1000), " MW"])
} | {msg |
	f.trade
	p := f.product
	max_kw := lot_max_kw[p]
	f.volume_kw > max_kw
	msg := concat("", ["LOT_TOO_LARGE: ", num(f.volume_kw / 1000), " MW is above the ", p, " maximum of ", num(max_kw / 1000), " MW per order"])
} | {msg |
	f.trade
	is_number(f.volume_kw)
	p := f.product
	inc := lot_increment_kw[p]
	not multiple_of(f.volume_kw, inc)
	msg := concat("", ["LOT_INCREMENT: ", num(f.volume_kw / 1000), " MW is not a multiple of the ", p, " increment of ", num(inc / 1000), " MW"])
}

# -- gate closure and delivery period -------------------------------------------------------------

gate_reasons(f) := {msg |
	f.order
	f.ctx.now_ms >= f.ctx.gate_closure_ms
	msg := concat("", ["GATE_CLOSED: ", text(f.product), " gate for delivery ", text(object.get(f.ctx, "delivery_start_local", "?")), " closed at ", text(object.get(f.ctx, "gate_closure_local", "?"))])
} | {msg |
	f.trade
	f.ctx.delivery_aligned != true
	msg := concat("", ["DELIVERY_NOT_ALIGNED: delivery start ", text(object.get(f.ctx, "delivery_start_local", "?")), " is not the start of a ", text(f.product), " product period"])
}

# -- volume within the verified available flexibility (computed from gated state only) -----------

flexibility_reasons(f) := {msg |
	f.trade
	flex := f.ctx.verified_flexibility_kw
	f.volume_kw > flex
	msg := concat("", ["ABOVE_VERIFIED_FLEXIBILITY: ", num(f.volume_kw / 1000), " MW exceeds the verified available flexibility of ", num(flex / 1000), " MW"])
}

# -- position and exposure limits -----------------------------------------------------------------

signed_kw(f) := f.volume_kw if f.side == "sell"

signed_kw(f) := 0 - f.volume_kw if f.side == "buy"

limit_reasons(f) := {msg |
	f.trade
	after := f.ctx.position_kw + signed_kw(f)
	abs(after) > position_limit_kw
	msg := concat("", ["POSITION_LIMIT: net position would be ", num(after / 1000), " MW, beyond the limit of ", num(position_limit_kw / 1000), " MW"])
} | {msg |
	f.trade
	p := f.product
	hours := product_duration_h[p]
	after := f.ctx.exposure_eur + (((f.volume_kw / 1000) * abs(f.price)) * hours)
	after > exposure_limit_eur
	msg := concat("", ["EXPOSURE_LIMIT: open exposure would be ", num(after), " EUR, beyond the limit of ", num(exposure_limit_eur), " EUR"])
}

# -- price sanity: market limits and a band around the reference price ---------------------------

band_eur(ref) := larger((abs(ref) * price_band_pct) / 100, price_band_floor_eur_per_mwh)

price_reasons(f) := {msg |
	f.trade
	not is_number(f.price)
	msg := "PRICE_INVALID: price_eur_per_mwh is not a number"
} | {msg |
	f.trade
	is_number(f.price)
	p := f.product
	lo := price_min_eur_per_mwh[p]
	hi := price_max_eur_per_mwh[p]
	not in_range(f.price, lo, hi)
	msg := concat("", ["PRICE_OUT_OF_MARKET_LIMITS: ", num(f.price), " EUR/MWh is outside the ", p, " limits ", num(lo), "..", num(hi), " EUR/MWh"])
} | {msg |
	f.trade
	not is_number(object.get(f.ctx, "reference_price_eur_per_mwh", null))
	msg := "PRICE_NO_REFERENCE: no reference price to check the order price against"
} | {msg |
	f.trade
	is_number(f.price)
	ref := f.ctx.reference_price_eur_per_mwh
	is_number(ref)
	band := band_eur(ref)
	abs(f.price - ref) > band
	msg := concat("", ["PRICE_OUT_OF_BAND: ", num(f.price), " EUR/MWh deviates from the reference ", num(ref), " EUR/MWh by more than ", num(band), " EUR/MWh"])
}

# -- four eyes: a different operator of our domain approves large orders and every override ------

needs_four_eyes(f) if {
	f.trade
	f.volume_kw > four_eyes_threshold_kw
}

needs_four_eyes(f) if f.kind == "manual_override"

valid_approval(f, a) if {
	a != f.actor_id
	well_formed(a) == true
	spiffe_part(a, true, 0) == f.trust_domain
	spiffe_part(a, true, 1) == "operator"
}

four_eyes_reasons(f) := {msg |
	needs_four_eyes(f)
	count([a | some a in f.approvals; valid_approval(f, a)]) == 0
	why := four_eyes_why(f)
	msg := concat("", ["FOUR_EYES_REQUIRED: ", f.kind, " of ", num(f.volume_kw / 1000), " MW needs the approval of a second operator (", why, ")"])
}

four_eyes_why(f) := "self-approval does not count" if f.actor_id in f.approvals

four_eyes_why(f) := "no valid approval" if not f.actor_id in f.approvals
