"""The markets layer, assembled: config -> policy engine, policy gate, exchanges, verified
flexibility, market gateway. Built once by the composition root (``control_plane/app.py``).

:class:`MarketConfig` is the ``[markets]`` section of the control-plane config, validated
at load with errors naming the field. :class:`MarketService` takes it plus the running
objects it needs (gated fleet state, the asset registry, the audit log, the clock) and
builds, in order:

1. the policy backend named by ``engine`` (``regopy`` embedded, or ``opa``: real OPA
   in-process) and a :class:`PolicyLoader` on ``policy_dir`` (nothing loaded until
   :meth:`MarketService.load_policy`; until then every action is denied
   ``NO_POLICY_LOADED``);
2. the fail-closed, audited :class:`PolicyGate` (decision timeout ``decision_timeout_s``);
3. the simulated exchanges named in ``exchanges`` (the only adapters there are today);
4. :class:`GatedFlexibility` over the gated state and the registry's ratings;
5. the :class:`MarketGateway` that every order goes through.

:meth:`MarketService.submit_plan` is the path from the optimizer: a ``Plan`` becomes a
``BidSchedule`` (:mod:`plan_bids`, no volume invented) and goes to the gateway bid by bid.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, fields
from datetime import date
from pathlib import Path
from typing import Any

from control_plane.assets.model import Asset
from control_plane.assets.registry import AssetRegistry
from control_plane.markets.actions import Actor, Product
from control_plane.markets.exchanges.base import MarketAdapter
from control_plane.markets.exchanges.capacity import CapacityAuction
from control_plane.markets.exchanges.day_ahead import DayAheadAuction, reference_price_eur_per_mwh
from control_plane.markets.exchanges.intraday import IntradayExchange
from control_plane.markets.exchanges.reserves import (
    AfrrEnergyMarket,
    ReserveAuction,
    reference_afrr_energy_price,
    reference_capacity_price,
)
from control_plane.markets.flexibility import FlexibilityRules, GatedFlexibility
from control_plane.markets.gateway import (
    BidSchedule,
    GatewayResult,
    MarketGateway,
    ReferencePrices,
)
from control_plane.markets.plan_bids import bid_schedule_from_plan
from control_plane.markets.policy.backends import EngineKind, backend_for
from control_plane.markets.policy.gateway import PolicyGate
from control_plane.markets.policy.loader import LoadResult, PolicyLoader
from control_plane.optimizer.market import MarketPrices, MarketRules
from control_plane.optimizer.plan import Plan
from control_plane.state import GatedStateView
from security.audit_log import AuditLog
from security.clock import Clock
from security.refusals import ConfigError

#: Simulated exchanges by config name.
EXCHANGES: dict[str, Callable[[Clock, int], MarketAdapter]] = {
    "day_ahead": lambda clock, seed: DayAheadAuction(clock, seed=seed),
    "intraday": lambda clock, seed: IntradayExchange(clock, seed=seed),
    "reserves": lambda clock, seed: ReserveAuction(clock, seed=seed),
    "capacity": lambda clock, seed: CapacityAuction(clock, seed=seed),
    "afrr_energy": lambda clock, seed: AfrrEnergyMarket(clock, seed=seed),
}
DEFAULT_POLICY_DIR = Path(__file__).resolve().parents[2] / "policies"
RESERVE_CAPACITY = (Product.FCR, Product.AFRR_POS, Product.AFRR_NEG)


@dataclass(frozen=True, slots=True)
class MarketConfig:
    """The ``[markets]`` config section.

    ``policy_dir``: the ``.rego`` files and their tests; ``engine``: ``regopy`` or ``opa``;
    ``decision_timeout_s`` [s]: a decision not made within it is denied
    (``ENGINE_TIMEOUT``); ``exchanges``: simulated exchanges to trade on
    (``day_ahead``, ``intraday``, ``reserves``: FCR and aFRR capacity, ``capacity``,
    ``afrr_energy``);
    ``exchange_seed``: their synthetic other participants; ``flexibility_max_age_s`` [s]:
    oldest gated state of charge counted as verified; ``soc_min_pct`` / ``soc_max_pct``
    [%]: usable window; ``reserve_energy_h`` [h]: energy-holding duration for FCR and
    aFRR (None: the whole 4-h block, the strict reading; the optimizer holds
    ``MarketRules.fcr_energy_h``, 0.5 h by default).
    """

    policy_dir: Path = DEFAULT_POLICY_DIR
    engine: EngineKind = EngineKind.REGOPY
    decision_timeout_s: float = 0.5
    exchanges: tuple[str, ...] = ("day_ahead", "intraday", "reserves", "capacity", "afrr_energy")
    exchange_seed: int = 0
    flexibility_max_age_s: float = 60.0
    soc_min_pct: float = 10.0
    soc_max_pct: float = 90.0
    # 0.5 h: the optimizer's MarketRules.fcr_energy_h and the ENTSO-E limited-energy-
    # reservoir rule for FCR (30 min of full activation); None: the strict 4-h block.
    reserve_energy_h: float | None = 0.5

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "engine", EngineKind(self.engine))
        except ValueError:
            names = ", ".join(k.value for k in EngineKind)
            raise ConfigError(f"markets.engine: {self.engine!r} is not one of {names}") from None
        if not isinstance(self.policy_dir, Path):
            raise ConfigError("markets.policy_dir: must be a path")
        if not 0.01 <= self.decision_timeout_s <= 10:
            raise ConfigError("markets.decision_timeout_s: must be between 0.01 and 10 s")
        exchanges = tuple(self.exchanges)
        unknown = sorted(set(exchanges) - set(EXCHANGES))
        if unknown or len(set(exchanges)) != len(exchanges):
            raise ConfigError(
                f"markets.exchanges: each at most once, of {', '.join(sorted(EXCHANGES))}"
                + (f" (unknown: {', '.join(unknown)})" if unknown else "")
            )
        object.__setattr__(self, "exchanges", exchanges)
        if not 1 <= self.flexibility_max_age_s <= 3600:
            raise ConfigError("markets.flexibility_max_age_s: must be between 1 and 3600 s")
        if not 0 <= self.soc_min_pct < self.soc_max_pct <= 100:
            raise ConfigError("markets.soc_min_pct, soc_max_pct: need 0 <= min < max <= 100")
        h = self.reserve_energy_h
        if h is not None and not (math.isfinite(h) and 0 < h <= 4):
            raise ConfigError("markets.reserve_energy_h: must be in (0, 4] h or absent")

    @classmethod
    def from_mapping(cls, raw: Mapping[str, Any], base: Path) -> MarketConfig:
        """From the parsed ``[markets]`` table; relative ``policy_dir`` is against ``base``."""
        known = {f.name for f in fields(cls)}
        unknown = set(raw) - known
        if unknown:
            raise ConfigError(f"markets: unknown field(s): {', '.join(sorted(unknown))}")
        values = dict(raw)
        if "policy_dir" in values:
            values["policy_dir"] = (base / str(values["policy_dir"])).resolve()
        if "exchanges" in values:
            values["exchanges"] = tuple(values["exchanges"])
        try:
            return cls(**values)
        except TypeError as e:
            raise ConfigError(f"markets: {e}") from e

    def flexibility_rules(self) -> FlexibilityRules:
        hours = self.reserve_energy_h
        return FlexibilityRules(
            max_age_ms=round(self.flexibility_max_age_s * 1000),
            soc_min_pct=self.soc_min_pct,
            soc_max_pct=self.soc_max_pct,
            energy_hours={} if hours is None else dict.fromkeys(RESERVE_CAPACITY, hours),
        )


def simulated_reference_prices(product: Product, delivery_start_ms: int) -> float | None:
    """The simulated exchanges' reference curve [EUR/MWh, EUR/MW/h]: the price-band anchor
    while the exchanges are simulated. A live deployment passes its own, independent of the
    optimizer's forecast (a manipulated forecast must not move the band with the bids)."""
    if product in (Product.DAY_AHEAD, Product.INTRADAY):
        return reference_price_eur_per_mwh(delivery_start_ms)
    if product in (Product.AFRR_ENERGY_POS, Product.AFRR_ENERGY_NEG):
        return reference_afrr_energy_price(product, delivery_start_ms)
    return reference_capacity_price(product)


class RegistryAssets:
    """The registry's assets for :class:`GatedFlexibility`, re-read only when the registry's
    version changes (one cheap version query per flexibility question)."""

    def __init__(self, registry: AssetRegistry) -> None:
        self._registry = registry
        self._lock = threading.Lock()
        self._version = -1
        self._assets: tuple[Asset, ...] = ()

    def __call__(self) -> tuple[Asset, ...]:
        version = self._registry.version()
        with self._lock:
            if version != self._version:
                snapshot = self._registry.snapshot()
                self._assets = tuple(snapshot.assets.values())
                self._version = snapshot.version
            return self._assets


class MarketService:
    """The markets layer of one control plane (see the module docstring)."""

    def __init__(
        self,
        config: MarketConfig,
        *,
        trust_domain: str,
        state: GatedStateView,
        assets: Callable[[], Iterable[Asset]],
        audit: AuditLog,
        clock: Clock,
        reference_prices: ReferencePrices = simulated_reference_prices,
        exchanges: Sequence[MarketAdapter] | None = None,
    ) -> None:
        self.config = config
        self.backend = backend_for(config.engine)
        self.loader = PolicyLoader(config.policy_dir, audit=audit, backend=self.backend)
        self.gate = PolicyGate(
            lambda: self.loader.engine,
            audit,
            timeout_s=config.decision_timeout_s,
            engine_name=self.backend.name,
            why_no_engine=self.loader.why_no_engine,
        )
        if exchanges is None:
            exchanges = [EXCHANGES[n](clock, config.exchange_seed) for n in config.exchanges]
        self.exchanges = tuple(exchanges)
        self.flexibility = GatedFlexibility(state, assets, clock, config.flexibility_rules())
        self.gateway = MarketGateway(
            self.gate,
            self.exchanges,
            audit,
            clock,
            trust_domain=trust_domain,
            flexibility=self.flexibility,
            reference_prices=reference_prices,
        )

    def load_policy(self) -> LoadResult:
        """(Re)load ``policy_dir``: only a set whose own tests pass in the configured engine
        replaces the active one; audited as ``policy.load``. Call at start and on change."""
        return self.loader.reload()

    def submit_plan(
        self,
        actor: Actor,
        plan: Plan,
        *,
        day: date,
        prices: MarketPrices,
        rules: MarketRules,
        schedule_id: str,
        approvals: Sequence[str] = (),
    ) -> tuple[BidSchedule, list[GatewayResult]]:
        """Bid the optimizer's ``plan`` for delivery ``day``: each bid decided by the policy,
        audited, and sent only if allowed. Returns the schedule and one result per bid."""
        schedule = bid_schedule_from_plan(
            plan, day=day, prices=prices, rules=rules, schedule_id=schedule_id
        )
        return schedule, self.gateway.submit_schedule(actor, schedule, approvals)
