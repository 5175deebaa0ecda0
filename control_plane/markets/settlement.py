"""Settlement of a delivery day: revenues, imbalance, unavailability penalties, delivery report.

Pure functions of our fills, what the fleet delivered and the imbalance prices.

Energy (``day_ahead`` and ``intraday`` together, per quarter-hour): the sold energy
[MWh] is the net of our fills (sell positive) x 0.25 h, plus the aFRR energy the TSO
activated (``afrr_energy_pos`` adds export, ``afrr_energy_neg`` import: activated
energy is scheduled, not an imbalance); the imbalance is delivered minus sold; it is
settled at a single imbalance price (German reBAP style): a long (positive) imbalance is
paid the price, a short one pays it, so ``imbalance_eur = imbalance_mwh x price``
(negative = a cost). A quarter-hour without a delivered value counts as 0 MWh.
Activated aFRR energy earns its fills' price x MWh (the price the provider receives).

Capacity (``fcr``, ``afrr_pos``, ``afrr_neg``, ``capacity``, per product period): the
payment is the sum over fills of MW x price [EUR/MW/h] x period hours. The fleet must
hold the contracted MW available all period; availability is given as intervals. The
payment is cut pro rata to the undelivered amount and time::

    undelivered = 1 - sum(min(available_mw, contracted_mw) x h) / (contracted_mw x period_h)
    penalty_eur = payment_eur x undelivered x penalty_factor

Time not covered by any interval counts as unavailable.
"""

from __future__ import annotations

import itertools
import math
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from control_plane.markets.actions import Product, Side
from control_plane.markets.exchanges.base import (
    HOUR_MS,
    QUARTER_HOUR_MS,
    Fill,
    period_hours,
    product_period_ms,
)

ENERGY_PRODUCTS = frozenset({Product.DAY_AHEAD, Product.INTRADAY})
ACTIVATED_ENERGY = {Product.AFRR_ENERGY_POS: 1.0, Product.AFRR_ENERGY_NEG: -1.0}
CAPACITY_PRODUCTS = frozenset({Product.FCR, Product.AFRR_POS, Product.AFRR_NEG, Product.CAPACITY})
ENERGY = "energy"


@dataclass(frozen=True, slots=True)
class AvailabilityInterval:
    """Capacity [MW] the fleet held available from ``start_ms`` for ``duration_ms``."""

    start_ms: int
    duration_ms: int
    available_mw: float

    def __post_init__(self) -> None:
        if self.duration_ms <= 0:
            raise ValueError("duration_ms must be > 0")
        if not math.isfinite(self.available_mw) or self.available_mw < 0:
            raise ValueError("available_mw must be finite and >= 0")


@dataclass(frozen=True, slots=True)
class GatedDeliverySeries:
    """What the fleet delivered — built from GATED MEASUREMENTS ONLY.

    Every value must come from measurements that passed the false-data-injection gate
    (never from quarantined or unvalidated data): settlement and the delivery report are
    evidence towards TSOs and exchanges. The gate's output type does not exist yet; when
    it does, this series is made by one function from it and nowhere else.

    ``energy_mwh``: net exported energy [MWh] per quarter-hour start (export positive).
    ``availability``: per (capacity product, period start), the intervals of held capacity.
    """

    energy_mwh: Mapping[int, float] = field(default_factory=dict)
    availability: Mapping[tuple[Product, int], tuple[AvailabilityInterval, ...]] = field(
        default_factory=dict
    )

    def __post_init__(self) -> None:
        for start, mwh in self.energy_mwh.items():
            if start % QUARTER_HOUR_MS or not math.isfinite(mwh):
                raise ValueError(f"energy at {start}: quarter-hour start and finite MWh required")
        for (product, start), intervals in self.availability.items():
            if product not in CAPACITY_PRODUCTS:
                raise ValueError(f"availability is for capacity products, not {product}")
            end = start + product_period_ms(product, start)
            spans = sorted((i.start_ms, i.start_ms + i.duration_ms) for i in intervals)
            for (_, a1), (b0, _) in itertools.pairwise(spans):
                if b0 < a1:
                    raise ValueError(f"{product} {start}: availability intervals overlap")
            if spans and (spans[0][0] < start or spans[-1][1] > end):
                raise ValueError(f"{product} {start}: availability outside the product period")


@dataclass(frozen=True, slots=True)
class ProductRevenue:
    """Money from our fills of one product period (sell +, buy -) [EUR]."""

    product: Product
    delivery_start_ms: int
    net_volume_mw: float
    revenue_eur: float


@dataclass(frozen=True, slots=True)
class DeliveryRow:
    """Sold versus delivered for one product period (``product`` "energy": DA + ID)."""

    product: str
    delivery_start_ms: int
    period_h: float
    sold_mwh: float  # energy [MWh]; capacity: contracted MW x h
    delivered_mwh: float  # energy [MWh]; capacity: available MW x h, capped at contracted
    imbalance_mwh: float
    imbalance_eur: float
    penalty_eur: float

    @property
    def delivered_pct(self) -> float:
        if self.sold_mwh == 0:
            return 100.0
        return 100.0 * self.delivered_mwh / self.sold_mwh


@dataclass(frozen=True, slots=True)
class Settlement:
    revenues: tuple[ProductRevenue, ...]
    delivery: tuple[DeliveryRow, ...]

    @property
    def revenue_eur(self) -> float:
        return sum(r.revenue_eur for r in self.revenues)

    @property
    def imbalance_eur(self) -> float:
        return sum(r.imbalance_eur for r in self.delivery)

    @property
    def penalty_eur(self) -> float:
        return sum(r.penalty_eur for r in self.delivery)

    @property
    def net_eur(self) -> float:
        return self.revenue_eur + self.imbalance_eur - self.penalty_eur

    def revenue_by_product(self) -> dict[Product, float]:
        out: dict[Product, float] = defaultdict(float)
        for r in self.revenues:
            out[r.product] += r.revenue_eur
        return dict(out)


def _signed_mw(f: Fill) -> float:
    return f.volume_kw / 1000 if f.side is Side.SELL else -f.volume_kw / 1000


def revenues(fills: Iterable[Fill]) -> list[ProductRevenue]:
    """Revenue per product period: sum of signed MW x price x period hours [EUR]."""
    volume: dict[tuple[Product, int], float] = defaultdict(float)
    money: dict[tuple[Product, int], float] = defaultdict(float)
    for f in fills:
        key = (f.product, f.delivery_start_ms)
        mw = _signed_mw(f)
        volume[key] += mw
        money[key] += mw * f.price_eur_per_mwh * period_hours(f.product, f.delivery_start_ms)
    return [ProductRevenue(p, t, volume[(p, t)], money[(p, t)]) for p, t in sorted(volume)]


def energy_rows(
    fills: Iterable[Fill],
    delivered: GatedDeliverySeries,
    imbalance_price_eur_per_mwh: Mapping[int, float],
) -> list[DeliveryRow]:
    """Per quarter-hour with a position or a delivery: sold, delivered, imbalance and its cash."""
    sold: dict[int, float] = defaultdict(float)
    for f in fills:
        if f.product in ENERGY_PRODUCTS:
            sold[f.delivery_start_ms] += _signed_mw(f) * 0.25
        elif f.product in ACTIVATED_ENERGY:  # offers are sells; the direction is the product's
            sold[f.delivery_start_ms] += ACTIVATED_ENERGY[f.product] * f.volume_kw / 1000 * 0.25
    rows = []
    for t in sorted(set(sold) | set(delivered.energy_mwh)):
        got = delivered.energy_mwh.get(t, 0.0)
        imbalance = got - sold[t]
        price = imbalance_price_eur_per_mwh.get(t)
        if price is None and imbalance != 0:
            raise ValueError(f"no imbalance price for the quarter-hour starting at {t}")
        cash = imbalance * (price or 0.0)
        rows.append(DeliveryRow(ENERGY, t, 0.25, sold[t], got, imbalance, cash, 0.0))
    return rows


def available_mwh(intervals: Iterable[AvailabilityInterval], contracted_mw: float) -> float:
    """Held capacity [MW x h], each interval capped at ``contracted_mw``."""
    return sum(min(i.available_mw, contracted_mw) * i.duration_ms / HOUR_MS for i in intervals)


def capacity_rows(
    fills: Iterable[Fill], delivered: GatedDeliverySeries, *, penalty_factor: float = 1.0
) -> list[DeliveryRow]:
    """Per capacity product period: contracted vs available, and the pro-rata payment cut."""
    if not math.isfinite(penalty_factor) or penalty_factor < 0:
        raise ValueError("penalty_factor must be finite and >= 0")
    contracted: dict[tuple[Product, int], float] = defaultdict(float)
    payment: dict[tuple[Product, int], float] = defaultdict(float)
    for f in fills:
        if f.product in CAPACITY_PRODUCTS:
            key = (f.product, f.delivery_start_ms)
            mw = _signed_mw(f)
            contracted[key] += mw
            payment[key] += mw * f.price_eur_per_mwh * period_hours(*key)
    rows = []
    for key in sorted(contracted):
        product, start = key
        mw = contracted[key]
        hours = period_hours(product, start)
        sold = mw * hours
        held = available_mwh(delivered.availability.get(key, ()), mw) if mw > 0 else 0.0
        undelivered = 1.0 - held / sold if sold > 0 else 0.0
        penalty = payment[key] * undelivered * penalty_factor
        rows.append(DeliveryRow(product.value, start, hours, sold, held, 0.0, 0.0, penalty))
    return rows


def settle(
    fills: Iterable[Fill],
    delivered: GatedDeliverySeries,
    imbalance_price_eur_per_mwh: Mapping[int, float],
    *,
    penalty_factor: float = 1.0,
) -> Settlement:
    """Revenues, the delivery report with imbalance and penalties, and totals."""
    fills = list(fills)
    rows = energy_rows(fills, delivered, imbalance_price_eur_per_mwh) + capacity_rows(
        fills, delivered, penalty_factor=penalty_factor
    )
    rows.sort(key=lambda r: (r.delivery_start_ms, r.product))
    return Settlement(tuple(revenues(fills)), tuple(rows))
