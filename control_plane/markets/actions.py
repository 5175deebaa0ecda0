"""Market actions as value objects that cannot exist malformed, and their policy input.

Every action a person or the optimizer wants to take on a market — submit, modify or
cancel an order, a manual override, the SOC's kill switch — is one of the frozen
dataclasses below. ``__post_init__`` rejects what is not even a well-typed action
(NaN prices, negative volumes, volumes finer than 1 kW, unknown products); everything
that is well-typed but *not allowed* (a 0.05 MW bid, a price spike, a soc identity
trading) is left to the policy, which denies it with a reason and an audit record.

Units: volumes in MW at the API (``volume_mw``) and in integer kW in the policy input
(``volume_kw``), so the policy checks lot increments with exact integer arithmetic;
prices in EUR/MWh; instants in Unix epoch milliseconds (UTC). Side: ``sell`` = export
(positive position), ``buy`` = import.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal, InvalidOperation
from enum import StrEnum
from typing import Any

from security.identity import MAX_SPIFFE_ID_LEN, SpiffeId

MAX_ORDER_ID_LEN = 128
MAX_NOTE_LEN = 1024


class Product(StrEnum):
    """Market products. Energy: 15-min day-ahead and intraday; capacity: hourly; FCR
    (symmetric) and aFRR capacity per direction in 4-h blocks; aFRR energy per direction
    in 15-min products. ``pos`` = upward regulation (more export / less import), ``neg``
    = downward (more import / less export); every reserve offer is a ``sell``."""

    DAY_AHEAD = "day_ahead"
    INTRADAY = "intraday"
    CAPACITY = "capacity"
    FCR = "fcr"
    AFRR_POS = "afrr_pos"
    AFRR_NEG = "afrr_neg"
    AFRR_ENERGY_POS = "afrr_energy_pos"
    AFRR_ENERGY_NEG = "afrr_energy_neg"


#: Products held or delivered downward (the fleet imports more / exports less).
DOWNWARD_PRODUCTS = frozenset({Product.AFRR_NEG, Product.AFRR_ENERGY_NEG})


class Side(StrEnum):
    BUY = "buy"
    SELL = "sell"


class ActionKind(StrEnum):
    SUBMIT = "submit"
    MODIFY = "modify"
    CANCEL = "cancel"
    MANUAL_OVERRIDE = "manual_override"
    KILL_SWITCH = "kill_switch"


@dataclass(frozen=True, slots=True)
class Actor:
    """Who acts: the SPIFFE ID of the authenticated peer and the role it claims.

    The ID is kept as the string received, not parsed into a :class:`SpiffeId`, so that a
    forged or malformed identity still reaches the policy, is denied with a precise
    reason, and is audited. :attr:`parse_error` says what :meth:`SpiffeId.parse` thinks.
    """

    spiffe_id: str
    role: str

    def __post_init__(self) -> None:
        if not isinstance(self.spiffe_id, str) or not isinstance(self.role, str):
            raise ValueError("actor spiffe_id and role must be strings")
        if len(self.spiffe_id) > MAX_SPIFFE_ID_LEN:
            raise ValueError(f"actor spiffe_id is longer than {MAX_SPIFFE_ID_LEN} characters")
        if len(self.role) > 64:
            raise ValueError("actor role is longer than 64 characters")

    @property
    def parse_error(self) -> str:
        try:
            SpiffeId.parse(self.spiffe_id)
        except ValueError as e:
            return str(e)
        return ""

    def to_input(self) -> dict[str, object]:
        return {"spiffe_id": self.spiffe_id, "role": self.role, "parse_error": self.parse_error}


def volume_mw_to_kw(volume_mw: float) -> int:
    """``volume_mw`` [MW] as exact integer kW; ValueError if not finite, <= 0 or finer than 1 kW."""
    if isinstance(volume_mw, bool) or not isinstance(volume_mw, int | float):
        raise ValueError(f"volume_mw must be a number, not {type(volume_mw).__name__}")
    if not math.isfinite(volume_mw) or volume_mw <= 0:
        raise ValueError(f"volume_mw must be a finite number > 0, got {volume_mw!r}")
    try:
        kw = Decimal(repr(float(volume_mw))) * 1000
    except InvalidOperation:
        raise ValueError(f"volume_mw {volume_mw!r} is not a decimal number") from None
    if kw != kw.to_integral_value():
        raise ValueError(f"volume_mw {volume_mw!r} is finer than 1 kW (0.001 MW)")
    return int(kw)


def _check_price(price_eur_per_mwh: float) -> None:
    if isinstance(price_eur_per_mwh, bool) or not isinstance(price_eur_per_mwh, int | float):
        raise ValueError("price_eur_per_mwh must be a number")
    if not math.isfinite(price_eur_per_mwh):
        raise ValueError(f"price_eur_per_mwh must be finite, got {price_eur_per_mwh!r}")


def _check_instant(delivery_start_ms: int) -> None:
    if isinstance(delivery_start_ms, bool) or not isinstance(delivery_start_ms, int):
        raise ValueError("delivery_start_ms must be an integer (Unix epoch milliseconds)")
    if delivery_start_ms < 0:
        raise ValueError("delivery_start_ms must not be negative")


def _check_order_id(order_id: str) -> None:
    if not isinstance(order_id, str) or not order_id or len(order_id) > MAX_ORDER_ID_LEN:
        raise ValueError(f"order_id must be a string of 1..{MAX_ORDER_ID_LEN} characters")


@dataclass(frozen=True, slots=True)
class OrderTerms:
    """What is bought or sold: product, side, volume [MW], limit price [EUR/MWh], delivery start."""

    product: Product
    side: Side
    volume_mw: float
    price_eur_per_mwh: float
    delivery_start_ms: int

    def __post_init__(self) -> None:
        object.__setattr__(self, "product", Product(self.product))
        object.__setattr__(self, "side", Side(self.side))
        volume_mw_to_kw(self.volume_mw)
        _check_price(self.price_eur_per_mwh)
        _check_instant(self.delivery_start_ms)

    @property
    def volume_kw(self) -> int:
        return volume_mw_to_kw(self.volume_mw)

    def to_input(self) -> dict[str, object]:
        return {
            "product": self.product.value,
            "side": self.side.value,
            "volume_kw": self.volume_kw,
            "price_eur_per_mwh": self.price_eur_per_mwh,
            "delivery_start_ms": self.delivery_start_ms,
        }


@dataclass(frozen=True, slots=True)
class SubmitOrder:
    actor: Actor
    terms: OrderTerms
    kind: ActionKind = ActionKind.SUBMIT

    def to_input(self) -> dict[str, object]:
        return {"kind": self.kind.value, **self.terms.to_input()}


@dataclass(frozen=True, slots=True)
class ModifyOrder:
    """Replace the terms of an open order (the new volume, not a delta)."""

    actor: Actor
    order_id: str
    terms: OrderTerms
    kind: ActionKind = ActionKind.MODIFY

    def __post_init__(self) -> None:
        _check_order_id(self.order_id)

    def to_input(self) -> dict[str, object]:
        return {"kind": self.kind.value, "order_id": self.order_id, **self.terms.to_input()}


@dataclass(frozen=True, slots=True)
class CancelOrder:
    actor: Actor
    order_id: str
    product: Product
    delivery_start_ms: int
    kind: ActionKind = ActionKind.CANCEL

    def __post_init__(self) -> None:
        _check_order_id(self.order_id)
        object.__setattr__(self, "product", Product(self.product))
        _check_instant(self.delivery_start_ms)

    def to_input(self) -> dict[str, object]:
        return {
            "kind": self.kind.value,
            "order_id": self.order_id,
            "product": self.product.value,
            "delivery_start_ms": self.delivery_start_ms,
        }


@dataclass(frozen=True, slots=True)
class ManualOverride:
    """An order an operator places by hand, outside the optimizer's schedule: always four-eyes."""

    actor: Actor
    terms: OrderTerms
    note: str
    kind: ActionKind = ActionKind.MANUAL_OVERRIDE

    def __post_init__(self) -> None:
        if not isinstance(self.note, str) or not self.note.strip():
            raise ValueError("a manual override needs a note saying why")
        if len(self.note) > MAX_NOTE_LEN:
            raise ValueError(f"note is longer than {MAX_NOTE_LEN} characters")

    def to_input(self) -> dict[str, object]:
        return {"kind": self.kind.value, "note": self.note, **self.terms.to_input()}


@dataclass(frozen=True, slots=True)
class KillSwitch:
    """The SOC's market kill switch: ``engage=True`` stops every new market action."""

    actor: Actor
    engage: bool
    kind: ActionKind = ActionKind.KILL_SWITCH

    def __post_init__(self) -> None:
        if not isinstance(self.engage, bool):
            raise ValueError("engage must be true or false")

    def to_input(self) -> dict[str, object]:
        return {"kind": self.kind.value, "kill_switch_on": self.engage}


MarketAction = SubmitOrder | ModifyOrder | CancelOrder | ManualOverride | KillSwitch


def parse_instant_ms(value: object, field: str) -> int:
    """An instant from JSON: epoch ms (int) or an ISO 8601 string with a UTC offset."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str):
        try:
            dt = datetime.fromisoformat(value)
        except ValueError:
            raise ValueError(f"{field}: {value!r} is not an ISO 8601 instant") from None
        if dt.tzinfo is None:
            raise ValueError(f"{field}: {value!r} has no UTC offset")
        return int(dt.timestamp() * 1000)
    raise ValueError(f"{field}: expected epoch milliseconds or an ISO 8601 string")


def _terms(d: dict[str, Any]) -> OrderTerms:
    start = d.get("delivery_start_ms", d.get("delivery_start"))
    return OrderTerms(
        product=Product(d["product"]),
        side=Side(d["side"]),
        volume_mw=d["volume_mw"],
        price_eur_per_mwh=d["price_eur_per_mwh"],
        delivery_start_ms=parse_instant_ms(start, "delivery_start"),
    )


def action_from_dict(d: dict[str, Any]) -> MarketAction:
    """Build an action from JSON (``gridfort policy check --action FILE.json``); ValueError names
    the problem."""
    if not isinstance(d, dict):
        raise ValueError("an action must be a JSON object")
    try:
        actor_d = d["actor"]
        actor = Actor(spiffe_id=actor_d["spiffe_id"], role=actor_d["role"])
        kind = ActionKind(d["kind"])
        if kind is ActionKind.SUBMIT:
            return SubmitOrder(actor, _terms(d))
        if kind is ActionKind.MODIFY:
            return ModifyOrder(actor, d["order_id"], _terms(d))
        if kind is ActionKind.MANUAL_OVERRIDE:
            return ManualOverride(actor, _terms(d), d["note"])
        if kind is ActionKind.CANCEL:
            start = d.get("delivery_start_ms", d.get("delivery_start"))
            return CancelOrder(
                actor,
                d["order_id"],
                Product(d["product"]),
                parse_instant_ms(start, "delivery_start"),
            )
        return KillSwitch(actor, d["engage"])
    except KeyError as e:
        raise ValueError(f"action is missing the field {e.args[0]!r}") from None
    except TypeError as e:
        raise ValueError(f"action is malformed: {e}") from None
