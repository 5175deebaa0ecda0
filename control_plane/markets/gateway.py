"""The market gateway: the only way an order leaves Gridfort.

Every action goes through the :class:`~control_plane.markets.policy.gateway.PolicyGate`
first (which audits the decision); a denied action never reaches an exchange. An allowed
action is audited again as ``market.exchange_request`` *before* it is sent (if that
record cannot be written, nothing is sent) and the exchange's answer as
``market.exchange_response``; fills collected from the exchanges are audited as
``market.fill``.

Volume comes from the optimizer only: orders are submitted from a :class:`BidSchedule`,
verbatim, each scheduled bid at most once; the gateway never invents, scales or rounds
volume. The one human path, :meth:`MarketGateway.manual_override`, is four-eyes by policy.

The SOC's kill switch is flipped by a policy-checked :class:`KillSwitch` action; while
it is on, the policy denies every new action, and the gateway refuses to forward one
even if a (broken) policy allowed it.

The policy context is computed here, from injected sources: the verified available
flexibility (:class:`FlexibilitySource`, from gated state only) minus what our open and
filled orders of the same product, period and side already commit; the net position from
fills; the open exposure of our open orders; a reference price per product and period.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol, runtime_checkable

from control_plane.markets.actions import (
    Actor,
    CancelOrder,
    KillSwitch,
    ManualOverride,
    MarketAction,
    ModifyOrder,
    OrderTerms,
    Product,
    Side,
    SubmitOrder,
)
from control_plane.markets.exchanges.base import (
    ExchangeError,
    Fill,
    MarketAdapter,
    OrderRejected,
    period_hours,
)
from control_plane.markets.policy.engine import Decision
from control_plane.markets.policy.gateway import MarketContext, PolicyGate
from security.audit_log import AuditLog
from security.clock import Clock

log = logging.getLogger(__name__)

REQUEST_EVENT = "market.exchange_request"
RESPONSE_EVENT = "market.exchange_response"
FILL_EVENT = "market.fill"
KILL_SWITCH_EVENT = "market.kill_switch"
REFUSAL_EVENT = "market.gateway_refusal"


@dataclass(frozen=True, slots=True)
class ScheduledBid:
    """One bid of the optimizer's schedule: volume [MW] at a price limit [EUR/MWh or EUR/MW/h]."""

    product: Product
    side: Side
    delivery_start_ms: int
    volume_mw: float
    price_limit_eur_per_mwh: float

    def __post_init__(self) -> None:
        self.terms()  # a bid that is not a well-typed order cannot exist

    def terms(self) -> OrderTerms:
        return OrderTerms(
            product=self.product,
            side=self.side,
            volume_mw=self.volume_mw,
            price_eur_per_mwh=self.price_limit_eur_per_mwh,
            delivery_start_ms=self.delivery_start_ms,
        )


@dataclass(frozen=True, slots=True)
class BidSchedule:
    """The optimizer's bids (its output type is adapted to this at the seam).

    ``schedule_id`` identifies the optimizer run; at most one bid per product, delivery
    period and side.
    """

    schedule_id: str
    bids: tuple[ScheduledBid, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        if not isinstance(self.schedule_id, str) or not self.schedule_id:
            raise ValueError("schedule_id must be a non-empty string")
        bids = tuple(self.bids)
        if not all(isinstance(b, ScheduledBid) for b in bids):
            raise ValueError("bids must be ScheduledBid values")
        keys = [(b.product, b.delivery_start_ms, b.side) for b in bids]
        if len(set(keys)) != len(keys):
            raise ValueError("at most one bid per product, delivery period and side")
        object.__setattr__(self, "bids", bids)


class FlexibilitySource(Protocol):
    def verified_flexibility_mw(
        self, product: Product, side: Side, delivery_start_ms: int
    ) -> float:
        """The fleet's available flexibility [MW] for this product period and direction,
        computed from gated state only (measurements that passed the false-data-injection
        gate; never from quarantined data)."""
        ...


@runtime_checkable
class ExplainedFlexibility(Protocol):
    """A :class:`FlexibilitySource` that also says what its number rests on (e.g.
    :class:`~control_plane.markets.flexibility.GatedFlexibility`); the gateway then puts
    the counts into the policy input, so a deny names the suspect and stale assets."""

    def assess(self, product: Product, side: Side, delivery_start_ms: int) -> _Assessment: ...


class _Assessment(Protocol):
    def kw_for(self, product: Product, side: Side) -> float: ...

    def basis(self) -> dict[str, int]: ...


#: The directions of flexibility each reserve-capacity product holds: offering one
#: leaves less for another held in an overlapping period (the gateway counts it).
RESERVE_DIRECTIONS: dict[Product, frozenset[str]] = {
    Product.FCR: frozenset({"up", "down"}),
    Product.AFRR_POS: frozenset({"up"}),
    Product.AFRR_NEG: frozenset({"down"}),
}

#: Reference price [EUR/MWh or EUR/MW/h] per product and delivery start (None: unknown).
ReferencePrices = Callable[[Product, int], float | None]


class GatewayStatus(StrEnum):
    DENIED = "denied"  # by policy; never sent
    KILL_SWITCH = "kill_switch"  # the policy allowed, the kill switch is on; never sent
    ALREADY_SUBMITTED = "already_submitted"  # this scheduled bid was sent before; not resent
    NO_EXCHANGE = "no_exchange"  # no adapter trades the product; never sent
    AUDIT_UNAVAILABLE = "audit_unavailable"  # the request could not be audited; never sent
    ACCEPTED = "accepted"  # the exchange took it
    REJECTED = "rejected"  # the exchange refused it
    EXCHANGE_ERROR = "exchange_error"  # the exchange failed or did not answer
    UNKNOWN_ORDER = "unknown_order"  # modify/cancel of an order we never placed; never sent
    APPLIED = "applied"  # a kill-switch change took effect


@dataclass(frozen=True, slots=True)
class GatewayResult:
    status: GatewayStatus
    decision: Decision | None
    order_id: str | None = None
    reason: str = ""

    @property
    def sent(self) -> bool:
        return self.status in (
            GatewayStatus.ACCEPTED,
            GatewayStatus.REJECTED,
            GatewayStatus.EXCHANGE_ERROR,
        )


@dataclass(slots=True)
class _Placed:
    exchange: MarketAdapter
    terms: OrderTerms


class MarketGateway:
    """Sends policy-allowed actions to the exchange adapter of their product; audits all."""

    def __init__(
        self,
        gate: PolicyGate,
        exchanges: Iterable[MarketAdapter],
        audit: AuditLog,
        clock: Clock,
        *,
        trust_domain: str,
        flexibility: FlexibilitySource,
        reference_prices: ReferencePrices,
    ) -> None:
        self._gate = gate
        self._audit = audit
        self._clock = clock
        self._trust_domain = trust_domain
        self._flexibility = flexibility
        self._reference_prices = reference_prices
        self._exchanges: dict[Product, MarketAdapter] = {}
        for ex in exchanges:
            for product in ex.products:
                if product in self._exchanges:
                    raise ValueError(f"two exchanges trade {product}")
                self._exchanges[product] = ex
        self._kill_switch_on = False
        self._orders: dict[str, _Placed] = {}
        self._submitted: set[tuple[str, int]] = set()
        self._fill_seq: dict[str, int] = {}
        self._fills: list[Fill] = []

    @property
    def kill_switch_on(self) -> bool:
        return self._kill_switch_on

    def fills(self) -> list[Fill]:
        """Every fill collected so far."""
        return list(self._fills)

    def position_mw(self, product: Product, delivery_start_ms: int) -> float:
        """Net filled position [MW] of one product period, sell positive."""
        kw = sum(
            f.volume_kw if f.side is Side.SELL else -f.volume_kw
            for f in self._fills
            if (f.product, f.delivery_start_ms) == (product, delivery_start_ms)
        )
        return kw / 1000

    # -- context -------------------------------------------------------------------------------

    def _open_kw(self, order_id: str, placed: _Placed) -> tuple[int, int]:
        """(open, filled) kW of a placed order; an order the exchange lost counts as open."""
        try:
            state = placed.exchange.order_status(order_id)
        except ExchangeError:
            return placed.terms.volume_kw, 0
        return state.open_kw, state.filled_kw

    def _context(
        self,
        terms: OrderTerms | None,
        approvals: Sequence[str],
        replacing: str | None = None,
    ) -> MarketContext:
        now = self._clock.now_ms()
        if terms is None:
            return MarketContext(
                trust_domain=self._trust_domain,
                now_ms=now,
                kill_switch_on=self._kill_switch_on,
                approvals=tuple(approvals),
            )
        committed_kw = 0
        exposure = 0.0
        draws = RESERVE_DIRECTIONS.get(terms.product, frozenset())
        start = terms.delivery_start_ms
        end = start + int(period_hours(terms.product, start) * 3_600_000)
        for order_id, placed in self._orders.items():
            open_kw, filled_kw = self._open_kw(order_id, placed)
            t = placed.terms
            hours = period_hours(t.product, t.delivery_start_ms)
            exposure += open_kw / 1000 * abs(t.price_eur_per_mwh) * hours
            same = (t.product, t.delivery_start_ms, t.side) == (
                terms.product,
                terms.delivery_start_ms,
                terms.side,
            )
            # Reserve capacity of another product held in an overlapping period draws on
            # the same stored energy and power (FCR both ways, aFRR+ up, aFRR- down).
            shared = (
                not same
                and draws & RESERVE_DIRECTIONS.get(t.product, frozenset())
                and t.delivery_start_ms < end
                and start < t.delivery_start_ms + int(hours * 3_600_000)
            )
            if (same or shared) and order_id != replacing:
                committed_kw += open_kw + filled_kw
            elif same:
                committed_kw += filled_kw
        basis: dict[str, int] | None = None
        if isinstance(self._flexibility, ExplainedFlexibility):
            assessment = self._flexibility.assess(
                terms.product, terms.side, terms.delivery_start_ms
            )
            flex = assessment.kw_for(terms.product, terms.side) / 1000
            basis = assessment.basis()
        else:
            flex = self._flexibility.verified_flexibility_mw(
                terms.product, terms.side, terms.delivery_start_ms
            )
        if not math.isfinite(flex) or flex < 0:
            flex = 0.0  # unknown or nonsense flexibility: nothing is available
        available = max(0.0, flex - committed_kw / 1000)
        return MarketContext(
            trust_domain=self._trust_domain,
            now_ms=now,
            verified_flexibility_mw=available,
            position_mw=self.position_mw(terms.product, terms.delivery_start_ms),
            exposure_eur=exposure,
            reference_price_eur_per_mwh=self._reference_prices(
                terms.product, terms.delivery_start_ms
            ),
            kill_switch_on=self._kill_switch_on,
            approvals=tuple(approvals),
            flexibility_basis=basis,
        )

    # -- actions -------------------------------------------------------------------------------

    def submit_schedule(
        self, actor: Actor, schedule: BidSchedule, approvals: Sequence[str] = ()
    ) -> list[GatewayResult]:
        """Submit every bid of the schedule, in order; one result per bid."""
        return [self.submit_bid(actor, schedule, i, approvals) for i in range(len(schedule.bids))]

    def submit_bid(
        self, actor: Actor, schedule: BidSchedule, index: int, approvals: Sequence[str] = ()
    ) -> GatewayResult:
        """Submit bid ``index`` of ``schedule`` exactly as scheduled (at most once)."""
        bid = schedule.bids[index]
        action = SubmitOrder(actor, bid.terms())
        if (schedule.schedule_id, index) in self._submitted:
            return self._refuse(
                actor,
                action.to_input(),
                GatewayStatus.ALREADY_SUBMITTED,
                f"{schedule.schedule_id}[{index}] was sent before",
            )
        result = self._decide_and_send(action, self._context(action.terms, approvals))
        if result.sent:
            self._submitted.add((schedule.schedule_id, index))
        return result

    def modify(
        self,
        actor: Actor,
        order_id: str,
        schedule: BidSchedule,
        index: int,
        approvals: Sequence[str] = (),
    ) -> GatewayResult:
        """Replace an open order's terms with bid ``index`` of a (newer) schedule."""
        action = ModifyOrder(actor, order_id, schedule.bids[index].terms())
        if order_id not in self._orders:
            return self._refuse(
                actor, action.to_input(), GatewayStatus.UNKNOWN_ORDER, "no order of ours has it"
            )
        ctx = self._context(action.terms, approvals, replacing=order_id)
        return self._decide_and_send(action, ctx)

    def cancel(
        self,
        actor: Actor,
        order_id: str,
        approvals: Sequence[str] = (),
    ) -> GatewayResult:
        placed = self._orders.get(order_id)
        if placed is None:  # not ours: there is no exchange to send it to, nothing to decide
            what = {"kind": "cancel", "order_id": order_id}
            return self._refuse(actor, what, GatewayStatus.UNKNOWN_ORDER, "no order of ours has it")
        t = placed.terms
        action = CancelOrder(actor, order_id, t.product, t.delivery_start_ms)
        return self._decide_and_send(action, self._context(t, approvals))

    def manual_override(
        self, actor: Actor, terms: OrderTerms, note: str, approvals: Sequence[str] = ()
    ) -> GatewayResult:
        """An operator's order outside the schedule; the policy demands a second operator."""
        action = ManualOverride(actor, terms, note)
        return self._decide_and_send(action, self._context(terms, approvals))

    def set_kill_switch(self, actor: Actor, engage: bool) -> GatewayResult:
        """Flip the market kill switch (a policy-checked SOC action); audited."""
        action = KillSwitch(actor, engage)
        decision = self._gate.check(action, self._context(None, ()))
        if not decision.allow:
            return GatewayResult(GatewayStatus.DENIED, decision, reason=decision.reason_codes[0])
        self._kill_switch_on = engage
        self._audit.append(
            KILL_SWITCH_EVENT,
            decision="info",
            identity=actor.spiffe_id,
            details={"kill_switch_on": engage, "decision_id": decision.decision_id},
        )
        return GatewayResult(GatewayStatus.APPLIED, decision)

    def _refuse(
        self, actor: Actor, what: Mapping[str, object], status: GatewayStatus, message: str
    ) -> GatewayResult:
        """A refusal by the gateway itself (nothing to decide or send), audited."""
        reason = status.value.upper()
        self._audit.append(
            REFUSAL_EVENT,
            decision="deny",
            identity=actor.spiffe_id,
            reason=reason,
            details={"message": message, "action": dict(what)},
        )
        return GatewayResult(status, None, reason=reason)

    # -- the one path to an exchange -----------------------------------------------------------

    def _decide_and_send(self, action: MarketAction, context: MarketContext) -> GatewayResult:
        decision = self._gate.check(action, context)  # audited by the gate
        if not decision.allow:
            return GatewayResult(GatewayStatus.DENIED, decision, reason=decision.reason_codes[0])
        if self._kill_switch_on:
            self._audit_response(action, decision, "", None, "deny", "KILL_SWITCH_ON", "")
            return GatewayResult(GatewayStatus.KILL_SWITCH, decision, reason="KILL_SWITCH_ON")
        if isinstance(action, CancelOrder | ModifyOrder):
            placed = self._orders.get(action.order_id)
            exchange = placed.exchange if placed is not None else None
        elif isinstance(action, SubmitOrder | ManualOverride):
            exchange = self._exchanges.get(action.terms.product)
        else:
            exchange = None
        if exchange is None:
            self._audit_response(action, decision, "", None, "deny", "NO_EXCHANGE", "")
            return GatewayResult(GatewayStatus.NO_EXCHANGE, decision, reason="NO_EXCHANGE")
        try:
            self._audit.append(
                REQUEST_EVENT,
                decision="allow",
                identity=action.actor.spiffe_id,
                details=self._details(action, decision, exchange.name, None),
            )
        except Exception as e:
            log.error("exchange request %s not auditable: %s", decision.decision_id, e)
            return GatewayResult(
                GatewayStatus.AUDIT_UNAVAILABLE, decision, reason="AUDIT_UNAVAILABLE"
            )
        order_id: str | None = None
        try:
            if isinstance(action, SubmitOrder | ManualOverride):
                order_id = exchange.submit(action.terms)
                self._orders[order_id] = _Placed(exchange, action.terms)
            elif isinstance(action, ModifyOrder):
                order_id = action.order_id
                exchange.modify(order_id, action.terms)
                self._orders[order_id] = _Placed(exchange, action.terms)
            elif isinstance(action, CancelOrder):
                order_id = action.order_id
                exchange.cancel(order_id)
        except OrderRejected as e:
            self._audit_response(
                action, decision, exchange.name, order_id, "deny", e.reason.value, str(e)
            )
            return GatewayResult(GatewayStatus.REJECTED, decision, order_id, e.reason.value)
        except ExchangeError as e:
            self._audit_response(
                action, decision, exchange.name, order_id, "deny", "EXCHANGE_ERROR", str(e)
            )
            return GatewayResult(GatewayStatus.EXCHANGE_ERROR, decision, order_id, "EXCHANGE_ERROR")
        except Exception as e:  # an adapter bug or an unmapped timeout: never a traceback upward
            log.exception("exchange %s failed on %s", exchange.name, decision.decision_id)
            message = f"unexpected {type(e).__name__}"
            self._audit_response(
                action, decision, exchange.name, order_id, "deny", "EXCHANGE_ERROR", message
            )
            return GatewayResult(GatewayStatus.EXCHANGE_ERROR, decision, order_id, "EXCHANGE_ERROR")
        self._audit_response(action, decision, exchange.name, order_id, "info", "", "accepted")
        return GatewayResult(GatewayStatus.ACCEPTED, decision, order_id)

    @staticmethod
    def _details(
        action: MarketAction, decision: Decision, exchange: str | None, order_id: str | None
    ) -> dict[str, object]:
        return {
            "decision_id": decision.decision_id,
            "policy_version": decision.policy_version,
            "exchange": exchange or "",
            "order_id": order_id or "",
            "action": action.to_input(),
        }

    def _audit_response(
        self,
        action: MarketAction,
        decision: Decision,
        exchange: str,
        order_id: str | None,
        verdict: str,
        reason: str,
        message: str,
    ) -> None:
        details = self._details(action, decision, exchange, order_id)
        details["message"] = message
        try:
            self._audit.append(
                RESPONSE_EVENT,
                decision=verdict,
                identity=action.actor.spiffe_id,
                reason=reason,
                details=details,
            )
        except Exception as e:  # the exchange has answered; the record is lost, say so loudly
            log.error("exchange response for %s not auditable: %s", decision.decision_id, e)

    # -- fills ---------------------------------------------------------------------------------

    def collect_fills(self) -> list[Fill]:
        """Fetch new fills from every exchange, audit each as ``market.fill``; returns them."""
        new: list[Fill] = []
        for ex in {id(e): e for e in self._exchanges.values()}.values():
            after = self._fill_seq.get(ex.name, 0)
            for f in ex.fills(after):
                self._audit.append(
                    FILL_EVENT,
                    decision="info",
                    details={"exchange": ex.name, **f.to_dict()},
                )
                self._fill_seq[ex.name] = f.seq
                self._fills.append(f)
                new.append(f)
        return new

    def open_orders(self) -> list[str]:
        """IDs of our orders with volume still open."""
        return [oid for oid, p in self._orders.items() if self._open_kw(oid, p)[0] > 0]
