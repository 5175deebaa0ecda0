"""Verified flexibility: what the fleet can deliver in a product period, from gated state only.

The market gateway asks, for every order, how much the fleet can deliver in the order's
direction for the product's period; the policy denies volume above it
(``ABOVE_VERIFIED_FLEXIBILITY``). The answer counts only what Gridfort has *verified*:

- only assets with fresh gated state: the latest state of charge that passed the
  false-data-injection gate (:class:`~control_plane.state.GatedStateView`), sampled at
  most ``max_age_ms`` before now (and not from the future beyond ``max_future_skew_ms``);
- never a *suspect* asset: one whose measurements the gate quarantined recently
  (``GatedStateView.is_suspect``). Its last accepted value may be old or may be the first
  step of an attack, so the whole asset is left out, not just the rejected reading;
- energy-limited: a battery can deliver power ``p`` for ``h`` hours only if its usable
  energy lasts, so ``p = min(rated_p_kw, usable_kwh / h)`` with usable energy between
  ``soc_min_pct`` and ``soc_max_pct`` of ``e_kwh`` and the conversion efficiency applied.

Units: power [kW] inside, [MW] at the :class:`FlexibilitySource` API; energy [kWh]; SOC
[%]; time [ms], durations [h]. Sign: ``up`` = export (discharge, a *sell*), ``down`` =
import (charge, a *buy*).

Which direction each product needs:

| product                              | sell          | buy         |
|--------------------------------------|---------------|-------------|
| day_ahead, intraday                  | up            | down        |
| capacity (firm)                      | up            | nothing (0) |
| fcr (symmetric)                      | min(up, down) | nothing (0) |
| afrr_pos, afrr_energy_pos (upward)   | up            | nothing (0) |
| afrr_neg, afrr_energy_neg (downward) | down          | nothing (0) |

``h`` is the product's whole period (15 min, 1 h, 4 h local blocks; DST-aware) unless
``energy_hours`` sets a shorter energy-holding duration for a product (for example the
30 minutes of full activation a reserve provider must hold: the optimizer's
``MarketRules.fcr_energy_h``).

Counted today: batteries (``AssetKind.BATTERY``). PV inverters and EV chargers add no
verified flexibility yet (never over-counted). The computation is O(assets) per question.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from control_plane.assets.model import Asset, AssetKind
from control_plane.markets.actions import DOWNWARD_PRODUCTS, Product, Side
from control_plane.markets.exchanges.base import period_hours
from control_plane.state import GatedStateView
from gridfort.v1 import telemetry_pb2 as tpb
from security.clock import Clock

SOC = tpb.QUANTITY_STATE_OF_CHARGE

_ENERGY = frozenset({Product.DAY_AHEAD, Product.INTRADAY})
_SYMMETRIC = frozenset({Product.FCR})


@dataclass(frozen=True, slots=True)
class FlexibilityRules:
    """What counts as verified. ``max_age_ms``: oldest usable gated SOC sample [ms];
    ``max_future_skew_ms``: tolerated sample time ahead of now [ms]; ``soc_min_pct`` /
    ``soc_max_pct``: usable SOC window [%]; ``eta_charge`` / ``eta_discharge``: one-way
    efficiencies [-]; ``energy_hours``: energy-holding duration per product [h] where it
    is shorter than the product period."""

    max_age_ms: int = 60_000
    max_future_skew_ms: int = 5_000
    soc_min_pct: float = 10.0
    soc_max_pct: float = 90.0
    eta_charge: float = 0.95
    eta_discharge: float = 0.95
    energy_hours: Mapping[Product, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.max_age_ms <= 0 or self.max_future_skew_ms < 0:
            raise ValueError("max_age_ms must be > 0 and max_future_skew_ms >= 0")
        if not 0 <= self.soc_min_pct < self.soc_max_pct <= 100:
            raise ValueError("need 0 <= soc_min_pct < soc_max_pct <= 100")
        for name in ("eta_charge", "eta_discharge"):
            eta = getattr(self, name)
            if not (math.isfinite(eta) and 0 < eta <= 1):
                raise ValueError(f"{name} must be in (0, 1]")
        hours = {Product(p): float(h) for p, h in dict(self.energy_hours).items()}
        if not all(math.isfinite(h) and h > 0 for h in hours.values()):
            raise ValueError("energy_hours must be > 0 [h]")
        object.__setattr__(self, "energy_hours", hours)

    def hours(self, product: Product, delivery_start_ms: int) -> float:
        """The duration [h] the fleet must sustain an order of ``product``."""
        period = period_hours(product, delivery_start_ms)
        return min(period, self.energy_hours.get(product, period))


@dataclass(frozen=True, slots=True)
class FlexibilityAssessment:
    """What the fleet can sustain for ``hours`` [h]: ``up_kw`` export, ``down_kw`` import
    [kW], and which assets were counted or left out (and why)."""

    hours: float
    up_kw: float
    down_kw: float
    counted: int
    suspect: int
    stale: int
    no_state: int

    def kw_for(self, product: Product, side: Side) -> float:
        """Flexibility [kW] for an order of ``product`` on ``side`` (table in the module doc)."""
        if product in _ENERGY:
            return self.up_kw if side is Side.SELL else self.down_kw
        if side is Side.BUY:
            return 0.0
        if product in _SYMMETRIC:
            return min(self.up_kw, self.down_kw)
        return self.down_kw if product in DOWNWARD_PRODUCTS else self.up_kw

    def basis(self) -> dict[str, int]:
        """Counts for the policy input and the audit record."""
        return {
            "counted": self.counted,
            "suspect": self.suspect,
            "stale": self.stale,
            "no_state": self.no_state,
        }


def battery_kw(
    asset: Asset, soc_pct: float, hours: float, rules: FlexibilityRules
) -> tuple[float, float]:
    """(up, down) [kW] a battery at ``soc_pct`` [%] can sustain for ``hours`` [h]. Pure."""
    soc = min(max(soc_pct, 0.0), 100.0)
    up_kwh = max(0.0, soc - rules.soc_min_pct) / 100 * asset.e_kwh * rules.eta_discharge
    down_kwh = max(0.0, rules.soc_max_pct - soc) / 100 * asset.e_kwh / rules.eta_charge
    return min(asset.rated_p_kw, up_kwh / hours), min(asset.rated_p_kw, down_kwh / hours)


def assess_fleet(
    assets: Iterable[Asset],
    state: GatedStateView,
    now_ms: int,
    hours: float,
    rules: FlexibilityRules,
) -> FlexibilityAssessment:
    """The fleet's verified flexibility for ``hours`` [h] at ``now_ms``. Pure given ``state``."""
    if not (math.isfinite(hours) and hours > 0):
        raise ValueError("hours must be > 0")
    up = down = 0.0
    counted = suspect = stale = no_state = 0
    oldest = now_ms - rules.max_age_ms
    newest = now_ms + rules.max_future_skew_ms
    for asset in assets:
        if asset.kind is not AssetKind.BATTERY:
            continue
        if state.is_suspect(asset.asset_id, now_ms):
            suspect += 1
            continue
        soc = state.get(asset.asset_id, SOC)
        if soc is None or not math.isfinite(soc.value):
            no_state += 1
            continue
        if not oldest <= soc.ts_ms <= newest:
            stale += 1
            continue
        a_up, a_down = battery_kw(asset, soc.value, hours, rules)
        up += a_up
        down += a_down
        counted += 1
    return FlexibilityAssessment(hours, up, down, counted, suspect, stale, no_state)


class GatedFlexibility:
    """The :class:`~control_plane.markets.gateway.FlexibilitySource` of a running control
    plane: gated fleet state, the registry's assets and ratings, and the clock."""

    def __init__(
        self,
        state: GatedStateView,
        assets: Callable[[], Iterable[Asset]],
        clock: Clock,
        rules: FlexibilityRules | None = None,
    ) -> None:
        self._state = state
        self._assets = assets
        self._clock = clock
        self._rules = rules or FlexibilityRules()

    def assess(self, product: Product, side: Side, delivery_start_ms: int) -> FlexibilityAssessment:
        hours = self._rules.hours(product, delivery_start_ms)
        return assess_fleet(self._assets(), self._state, self._clock.now_ms(), hours, self._rules)

    def verified_flexibility_mw(
        self, product: Product, side: Side, delivery_start_ms: int
    ) -> float:
        """Flexibility [MW] for this product period and direction, from gated state only."""
        return self.assess(product, side, delivery_start_ms).kw_for(product, side) / 1000
