# Market actions: default deny; every deny reason is "CODE: message".
#
# Entry point: `decision` = {"allow": bool, "reasons": [string]}, the one document the
# engines query. Input schema and reason codes: docs/policy-writing.md.
#
# Two paths, one decision:
#   - shape_ok: every field the action kind needs is present and has its type. Then the
#     `violations` rules apply every market rule, reading fields by plain reference;
#   - otherwise `shape_errors` names each missing or ill-typed field (and nothing else:
#     an incomplete document is denied for being incomplete); if it names nothing,
#     INPUT_INCOMPLETE still denies, so the two paths cannot both miss.
# Rules read `input` directly (no fixtures as function arguments), so the tests are a
# table of input documents (`cases` in market_test.rego) that the loader decides one by
# one; `test_*` rules test the helper functions. This shape is also what keeps a decision
# cheap in the embedded engine (docs/policy-writing.md, "Decision latency"): every
# shared value (action, context, kind, volume, identity parts) is a rule, evaluated once
# per decision; the rule path calls no object.get, object.keys or object constructor
# (each costs about ten comparisons there); the limits are a data document (a lookup into
# `data` is far cheaper there than into a constant rule object); a rule checks its
# cheapest selector first (trade, order, id_ok) and builds its message only after its
# condition held.
#
# Workarounds for regopy 1.5.2, all portable Rego that OPA evaluates the same way:
#   - `with input as ...` aborts the embedded engine (the whole process): never use it;
#   - messages are built with concat(), never sprintf() on strings (it quotes them
#     without escaping); text() keeps a hostile non-string out of a message;
#   - multiple_of() instead of `%` (5000 % 100 comes back as "00", which is != 0);
#   - larger() instead of max() (max([1950, 30]) comes back as 30);
#   - inside a comprehension, a function argument used as a key (m[k]) is treated as
#     unbound and iterates over every key: bind such keys to a local first;
#   - `some k, v in x` does not parse inside a one-line comprehension: use `v := x[k]`.
package gridfort.market

import rego.v1

# The limits: a data document (policies/market_params.json), part of the policy version.
import data.gridfort.market_params as params

decision := {"allow": count(reasons) == 0, "reasons": sort(reasons)}

reasons := violations if {
	shape_ok
} else := shape_reasons

trade_kinds := {"submit", "modify", "manual_override"}

order_kinds := {"submit", "modify", "manual_override", "cancel"}

action_kinds := {"submit", "modify", "manual_override", "cancel", "kill_switch"}

products := {"day_ahead", "intraday", "capacity", "fcr", "afrr_pos", "afrr_neg", "afrr_energy_pos", "afrr_energy_neg"}

# Reserves: offered (sell) only; a buy of one is not a market action here.
reserve_products := {"fcr", "afrr_pos", "afrr_neg", "afrr_energy_pos", "afrr_energy_neg", "capacity"}

sides := {"buy", "sell"}

# -- shared values, each evaluated once per decision ---------------------------------------------

a := input.action

c := input.context

actor := input.actor

kind := a.kind

trade := kind in trade_kinds

order := kind in order_kinds

product := a.product

vol := a.volume_kw

price := a.price_eur_per_mwh

actor_id := actor.spiffe_id

id_ok := well_formed(actor_id)

# [trust domain, role, name] of the actor's SPIFFE ID ("" when it is malformed).
id_parts := spiffe_parts(actor_id, id_ok)

# -- the shape of a decidable input ---------------------------------------------------------------

shape_ok if {
	is_string(actor.spiffe_id)
	is_string(actor.role)
	is_number(c.now_ms)
	is_string(c.trust_domain)
	is_boolean(c.kill_switch_on)
	is_array(c.approvals)
	kind_shape_ok(kind)
}

kind_shape_ok("submit") if trade_shape_ok

kind_shape_ok("modify") if {
	is_string(a.order_id)
	trade_shape_ok
}

kind_shape_ok("manual_override") if trade_shape_ok

kind_shape_ok("cancel") if {
	is_string(a.order_id)
	product in products
	is_number(a.delivery_start_ms)
	is_number(c.gate_closure_ms)
}

kind_shape_ok("kill_switch") if is_boolean(a.kill_switch_on)

trade_shape_ok if {
	product in products
	a.side in sides
	is_number(vol)
	is_number(price)
	is_number(a.delivery_start_ms)
	is_number(c.gate_closure_ms)
	is_boolean(c.delivery_aligned)
	is_number(c.verified_flexibility_kw)
	is_number(c.position_kw)
	is_number(c.exposure_eur)
	reference_ok(c.reference_price_eur_per_mwh)
}

reference_ok(null)

reference_ok(x) if is_number(x)

# -- why an input is not decidable (only evaluated when it is not) --------------------------------

shape_reasons := shape_errors if {
	count(shape_errors) > 0
} else := {"INPUT_INCOMPLETE: the input document does not match the market action schema"}

required_fields := {
	"submit": ["product", "side", "volume_kw", "price_eur_per_mwh", "delivery_start_ms"],
	"modify": ["order_id", "product", "side", "volume_kw", "price_eur_per_mwh", "delivery_start_ms"],
	"manual_override": ["product", "side", "volume_kw", "price_eur_per_mwh", "delivery_start_ms"],
	"cancel": ["order_id", "product", "delivery_start_ms"],
	"kill_switch": ["kill_switch_on"],
}

base_context := ["now_ms", "trust_domain", "kill_switch_on", "approvals"]

trade_context := array.concat(base_context, ["gate_closure_ms", "delivery_aligned", "verified_flexibility_kw", "position_kw", "exposure_eur"])

required_context := {
	"submit": trade_context,
	"modify": trade_context,
	"manual_override": trade_context,
	"cancel": array.concat(base_context, ["gate_closure_ms"]),
	"kill_switch": base_context,
}

# The type each field must have.
field_types := {
	"order_id": "string",
	"product": "string",
	"side": "string",
	"volume_kw": "number",
	"price_eur_per_mwh": "number",
	"delivery_start_ms": "number",
	"kill_switch_on": "boolean",
	"now_ms": "number",
	"trust_domain": "string",
	"approvals": "array",
	"gate_closure_ms": "number",
	"delivery_aligned": "boolean",
	"verified_flexibility_kw": "number",
	"position_kw": "number",
	"exposure_eur": "number",
}

has_type(x, "string") if is_string(x)

has_type(x, "number") if is_number(x)

has_type(x, "boolean") if is_boolean(x)

has_type(x, "array") if is_array(x)

# An ill-typed volume or price keeps the code of the rule it feeds.
type_codes := {"volume_kw": "LOT_INVALID", "price_eur_per_mwh": "PRICE_INVALID"}

shape_errors contains "INPUT_INCOMPLETE: the input document is not an object" if not is_object(input)

shape_errors contains msg if {
	some part in ["action", "context", "actor"]
	not is_object(object.get(input, part, null))
	msg := concat("", ["INPUT_INCOMPLETE: the input document has no ", part, " object"])
}

raw_action := object.get(input, "action", {})

raw_context := object.get(input, "context", {})

raw_actor := object.get(input, "actor", {})

raw_kind := object.get(raw_action, "kind", "")

shape_errors contains msg if {
	not raw_kind in action_kinds
	msg := concat("", ["UNKNOWN_ACTION: action kind ", text(raw_kind), " is not one of cancel, kill_switch, manual_override, modify, submit"])
}

shape_errors contains msg if {
	k := raw_kind
	some field in required_fields[k]
	object.get(raw_action, field, null) == null
	msg := concat("", ["INPUT_INCOMPLETE: ", k, " action has no ", field])
}

shape_errors contains msg if {
	k := raw_kind
	some field in object.get(required_context, k, base_context)
	object.get(raw_context, field, null) == null
	msg := concat("", ["INPUT_INCOMPLETE: context has no ", field])
}

shape_errors contains msg if {
	k := raw_kind
	some field in required_fields[k]
	msg := type_error(field, object.get(raw_action, field, null))
}

shape_errors contains msg if {
	k := raw_kind
	some field in object.get(required_context, k, base_context)
	msg := type_error(field, object.get(raw_context, field, null))
}

type_error(field, value) := msg if {
	value != null
	t := field_types[field]
	not has_type(value, t)
	code := object.get(type_codes, field, "INPUT_INCOMPLETE")
	msg := concat("", [code, ": ", field, " is not of type ", t])
}

shape_errors contains msg if {
	raw_kind in order_kinds
	p := object.get(raw_action, "product", null)
	is_string(p)
	not p in products
	msg := concat("", ["UNKNOWN_PRODUCT: product ", p, " is not one of afrr_energy_neg, afrr_energy_pos, afrr_neg, afrr_pos, capacity, day_ahead, fcr, intraday"])
}

shape_errors contains msg if {
	raw_kind in trade_kinds
	side := object.get(raw_action, "side", null)
	is_string(side)
	not side in sides
	msg := concat("", ["INPUT_INCOMPLETE: side ", side, " is neither buy nor sell"])
}

shape_errors contains "PRICE_NO_REFERENCE: the reference price is neither a number nor null" if {
	raw_kind in trade_kinds
	not reference_ok(object.get(raw_context, "reference_price_eur_per_mwh", null))
}

shape_errors contains msg if {
	id := object.get(raw_actor, "spiffe_id", null)
	not is_string(id)
	msg := concat("", ["ACTOR_MALFORMED: actor ", text(id), " is not a SPIFFE ID spiffe://<domain>/<role>/<name> (no spiffe_id string)"])
}

shape_errors contains "INPUT_INCOMPLETE: actor has no role" if not is_string(object.get(raw_actor, "role", null))

# -- helpers ------------------------------------------------------------------------------------

spiffe_re := `^spiffe://[a-z0-9._-]+/(edge|control-plane|operator|soc)/[A-Za-z0-9_-][A-Za-z0-9._-]{0,63}$`

# spiffe://<trust-domain>/<role>/<name>, the strict subset security/identity.py accepts.
well_formed(id) := true if {
	is_string(id)
	regex.match(spiffe_re, id)
	not contains(id, "..")
} else := false

spiffe_parts(id, true) := split(trim_prefix(id, "spiffe://"), "/")

spiffe_parts(_, false) := ["", "", ""]

text(x) := x if is_string(x)

text(x) := "(not a string)" if not is_string(x)

num(x) := sprintf("%v", [x]) if is_number(x)

num(x) := "(not a number)" if not is_number(x)

multiple_of(v, inc) if {
	q := v / inc
	q == floor(q)
}

larger(x, y) := x if x >= y

larger(x, y) := y if x < y

in_range(x, lo, hi) if {
	x >= lo
	x <= hi
}

local_start := text(object.get(c, "delivery_start_local", "?"))

local_gate := text(object.get(c, "gate_closure_local", "?"))

# -- identity: a well-formed SPIFFE ID of our trust domain whose role matches the claim ----------

violations contains msg if {
	not id_ok
	msg := concat("", ["ACTOR_MALFORMED: actor ", actor_id, " is not a SPIFFE ID spiffe://<domain>/<role>/<name> (", text(object.get(actor, "parse_error", "")), ")"])
}

violations contains msg if {
	id_ok
	id_parts[0] != c.trust_domain
	msg := concat("", ["WRONG_TRUST_DOMAIN: actor ", actor_id, " is of trust domain ", id_parts[0], ", not ", c.trust_domain])
}

violations contains msg if {
	id_ok
	actor.role != id_parts[1]
	msg := concat("", ["ROLE_MISMATCH: actor claims role ", actor.role, " but its SPIFFE ID says ", id_parts[1]])
}

# -- roles: operators trade, the SOC flips the kill switch ---------------------------------------

violations contains msg if {
	order
	id_ok
	id_parts[1] != "operator"
	msg := concat("", ["ROLE_NOT_ALLOWED: role ", id_parts[1], " may not ", kind, "; only operator identities trade"])
}

violations contains msg if {
	kind == "kill_switch"
	id_ok
	id_parts[1] != "soc"
	msg := concat("", ["ROLE_NOT_ALLOWED: role ", id_parts[1], " may not flip the market kill switch; only soc identities may"])
}

# -- kill switch: when on, everything is denied except the SOC switching it off ------------------

violations contains msg if {
	c.kill_switch_on == true
	not switching_off
	msg := concat("", ["KILL_SWITCH_ON: the market kill switch is on; ", kind, " denied until the SOC switches it off"])
}

switching_off if {
	kind == "kill_switch"
	a.kill_switch_on == false
}

# -- gate closure (every order action, cancel included) and delivery period ----------------------

violations contains msg if {
	order
	c.now_ms >= c.gate_closure_ms
	msg := concat("", ["GATE_CLOSED: ", product, " gate for delivery ", local_start, " closed at ", local_gate])
}

violations contains msg if {
	trade
	c.delivery_aligned != true
	msg := concat("", ["DELIVERY_NOT_ALIGNED: delivery start ", local_start, " is not the start of a ", product, " product period"])
}

# -- reserves and capacity are offered, never bought ----------------------------------------------

violations contains msg if {
	trade
	product in reserve_products
	a.side == "buy"
	msg := concat("", ["WRONG_SIDE: ", product, " is offered (sell) only; Gridfort does not buy reserves or capacity"])
}

# -- lot size and increments ----------------------------------------------------------------------

violations contains msg if {
	trade
	min_kw := params.lot_min_kw[product]
	vol < min_kw
	msg := concat("", ["LOT_TOO_SMALL: ", num(vol / 1000), " MW is below the ", product, " minimum of ", num(min_kw / 1000), " MW"])
}

violations contains msg if {
	trade
	max_kw := params.lot_max_kw[product]
	vol > max_kw
	msg := concat("", ["LOT_TOO_LARGE: ", num(vol / 1000), " MW is above the ", product, " maximum of ", num(max_kw / 1000), " MW per order"])
}

violations contains msg if {
	trade
	inc := params.lot_increment_kw[product]
	not multiple_of(vol, inc)
	msg := concat("", ["LOT_INCREMENT: ", num(vol / 1000), " MW is not a multiple of the ", product, " increment of ", num(inc / 1000), " MW"])
}

# -- volume within the verified available flexibility (computed from gated state only) -----------

violations contains msg if {
	trade
	flex := c.verified_flexibility_kw
	vol > flex
	msg := concat("", ["ABOVE_VERIFIED_FLEXIBILITY: ", num(vol / 1000), " MW exceeds the verified available flexibility of ", num(flex / 1000), " MW", flexibility_basis_text])
}

# What the verified flexibility rests on, when the caller says (context.verified_flexibility_basis).
flexibility_basis_text := t if {
	b := c.verified_flexibility_basis
	t := concat("", [" (gated state of ", num(object.get(b, "counted", null)), " assets; left out: ", num(object.get(b, "suspect", null)), " suspect after a gate quarantine, ", num(object.get(b, "stale", null)), " stale, ", num(object.get(b, "no_state", null)), " without state)"])
} else := ""

# -- position and exposure limits -----------------------------------------------------------------

signed_kw("sell", v) := v

signed_kw("buy", v) := 0 - v

violations contains msg if {
	trade
	after := c.position_kw + signed_kw(a.side, vol)
	abs(after) > params.position_limit_kw
	msg := concat("", ["POSITION_LIMIT: net position would be ", num(after / 1000), " MW, beyond the limit of ", num(params.position_limit_kw / 1000), " MW"])
}

violations contains msg if {
	trade
	hours := params.product_duration_h[product]
	after := c.exposure_eur + (((vol / 1000) * abs(price)) * hours)
	after > params.exposure_limit_eur
	msg := concat("", ["EXPOSURE_LIMIT: open exposure would be ", num(after), " EUR, beyond the limit of ", num(params.exposure_limit_eur), " EUR"])
}

# -- price sanity: market limits and a band around the reference price ---------------------------

band_eur(ref) := larger((abs(ref) * params.price_band_pct) / 100, params.price_band_floor_eur_per_mwh)

violations contains msg if {
	trade
	lo := params.price_min_eur_per_mwh[product]
	hi := params.price_max_eur_per_mwh[product]
	not in_range(price, lo, hi)
	msg := concat("", ["PRICE_OUT_OF_MARKET_LIMITS: ", num(price), " EUR/MWh is outside the ", product, " limits ", num(lo), "..", num(hi), " EUR/MWh"])
}

violations contains "PRICE_NO_REFERENCE: no reference price to check the order price against" if {
	trade
	c.reference_price_eur_per_mwh == null
}

violations contains msg if {
	trade
	ref := c.reference_price_eur_per_mwh
	is_number(ref)
	band := band_eur(ref)
	abs(price - ref) > band
	msg := concat("", ["PRICE_OUT_OF_BAND: ", num(price), " EUR/MWh deviates from the reference ", num(ref), " EUR/MWh by more than ", num(band), " EUR/MWh"])
}

# -- four eyes: a different operator of our domain approves large orders and every override ------

needs_four_eyes if {
	trade
	vol > params.four_eyes_threshold_kw
}

needs_four_eyes if kind == "manual_override"

valid_approval(x) if {
	x != actor_id
	well_formed(x) == true
	parts := spiffe_parts(x, true)
	parts[0] == c.trust_domain
	parts[1] == "operator"
}

violations contains msg if {
	needs_four_eyes
	count([x | some x in c.approvals; valid_approval(x)]) == 0
	why := four_eyes_why
	msg := concat("", ["FOUR_EYES_REQUIRED: ", kind, " of ", num(vol / 1000), " MW needs the approval of a second operator (", why, ")"])
}

four_eyes_why := "self-approval does not count" if actor_id in c.approvals

four_eyes_why := "no valid approval" if not actor_id in c.approvals
