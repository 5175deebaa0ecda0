"""The planning cycle: gated state -> fleet -> day-ahead schedule -> dispatch, on a timer.

The running control plane's receding-horizon loop (``[control_plane.planning]``):

1. every ``interval_s`` (and at start) it builds the optimizer's fleet from *gated* state
   only (:func:`control_plane.optimizer.from_state.fleet_from_gated_state`: suspect,
   stale and unknown assets are left out, with reasons), over a rolling horizon of 96
   quarter-hours that starts at the current quarter-hour (UTC steps, so a DST day needs
   no special case here); EV owners' deadlines ("80 % by 07:00") are local times turned
   into steps of that horizon;
2. it solves the schedule off the event loop (the exact per-asset MILP up to
   ``exact_max_assets``, the aggregated model above) with a time limit; an infeasible
   problem gets a diagnosis and the safe fallback plan (:mod:`control_plane.optimizer`);
3. at every quarter-hour boundary it sends that step of the newest plan as signed group
   setpoints (:class:`~control_plane.dispatch.plan_dispatcher.PlanDispatcher`), at the
   first step of each reserve block it arms every site with the plan's FCR
   capacity as signed droop parameters (:mod:`control_plane.dispatch.arming`: the edges
   answer frequency locally), and every ``follow_interval_s`` it judges plan-vs-actual
   (flags audited there).

Reserve capacity is planned per block of the *market's* local time (00:00-04:00,
04:00-08:00, ... local, :func:`market_block_starts`), not per 16 steps of the rolling
horizon: a horizon that starts at 13:15 holds a block to 16:00, four whole blocks and the
start of the next; on a DST day the block holding the change lasts 3 or 5 hours. FCR is
armed for exactly each block's window and paid per block hour.

Every plan is audited (``plan``: status, assets planned and excluded, objective, the
binding constraints of a diagnosis). Inputs the telemetry does not carry come from
providers the composition root passes in: prices for the horizon (the reference curve
of the market simulator by default), PV forecasts, extra constraints (OpenADR events).
A provider that fails costs that cycle, never the loop: the failure is logged and
audited and the previous plan stays in force until it runs out.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields, replace
from datetime import UTC, date, datetime, time, timedelta
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from control_plane.assets.grid_limits import GridLimits
from control_plane.assets.model import ID_PATTERN, AssetKind
from control_plane.assets.registry import AssetRegistry, RegistrySnapshot
from control_plane.dispatch.activation import ActivationEvent, Participants
from control_plane.dispatch.afrr import (
    AfrrActivation,
    BatteryIndex,
    activation_sections,
    offsets,
    reserved,
    reserved_participants,
    sites_of,
)
from control_plane.dispatch.arming import block_arming
from control_plane.dispatch.plan_dispatcher import PlanDispatcher
from control_plane.dispatch.plan_setpoints import QUARTER_HOUR_MS
from control_plane.markets.actions import Actor, Product
from control_plane.markets.exchanges.base import delivery_starts
from control_plane.markets.gate_closure import local_time
from control_plane.optimizer.aggregation import schedule_aggregated
from control_plane.optimizer.assets import (
    STEPS,
    DemandResponse,
    FeederLimit,
    FleetState,
    OptimizerInputError,
    SiteLimits,
)
from control_plane.optimizer.from_state import (
    EvOwnerConstraint,
    GatedFleet,
    LoadWindow,
    fleet_from_gated_state,
)
from control_plane.optimizer.market import MarketPrices, MarketRules
from control_plane.optimizer.plan import Plan
from control_plane.optimizer.schedule import schedule
from control_plane.state import GatedStateView
from security.audit_log import AuditLog
from security.clock import Clock
from security.identity import Role, SpiffeId
from security.refusals import ConfigError, GridfortError, Reason, Refusal

if TYPE_CHECKING:
    from control_plane.commands.dispatcher import CommandDispatcher
    from control_plane.forecast.live import HistoryReader, WeatherReader
    from control_plane.forecast.site import ForecastSite
    from control_plane.markets.service import MarketService

log = logging.getLogger(__name__)

#: Prices for the horizon that starts at the given instant [ms since epoch], with one
#: capacity price per reserve block of the given rules.
PriceSource = Callable[[int, MarketRules], MarketPrices]
#: The capacity already sold [kW, >= 0] of a reserve product for the block that starts at
#: the instant [ms] (the market gateway's filled position, e.g.
#: ``lambda product, start: 1000 * gateway.position_mw(product, start)``).
PositionSource = Callable[[Product, int], float]
#: Extra caps for the horizon that starts at the instant (accepted OpenADR events).
ConstraintSource = Callable[[int], tuple[DemandResponse, ...]]
#: PV forecasts [kW per step] per PV asset of the registry snapshot, for the horizon that
#: starts at the instant (e.g. :class:`control_plane.forecast.live.PvForecastSource`).
PvForecastSource = Callable[[int, RegistrySnapshot], Mapping[str, tuple[float, ...]]]


@dataclass(frozen=True, slots=True)
class PlanningConfig:
    """The ``[planning]`` config section.

    ``interval_s`` [s]: how often the fleet is re-planned from fresh gated state.
    ``dispatch``: send each quarter-hour of the plan as signed setpoints (else plan only).
    ``follow_interval_s`` [s]: how often plan-vs-actual is judged. ``time_limit_s`` [s]:
    the solver's budget per plan. ``exact_max_assets``: up to this many assets the exact
    per-asset MILP, above it the aggregated model. ``max_age_s`` [s]: oldest gated state
    planned on. ``ev_deadline`` / ``ev_departure``: the owners' default "by" and
    departure times, local ``HH:MM`` in ``timezone``. ``energy_increment_kw`` /
    ``reserve_increment_kw`` [kW]: the market lots the portfolio's position is planned in
    (0.1 MW day-ahead, 1 MW FCR); 0 = continuous, for a fleet too small to bid that plans
    for its owners' constraints and self-consumption only. ``pv_forecast``: plan PV
    plants on the climatological forecast at ``latitude_deg`` / ``longitude_deg`` [deg]
    (:mod:`control_plane.forecast.live`), at the ``pv_quantile`` of the clear-sky index
    (0.1: P10, the margin rule); false: PV plants are left out of the plan.
    ``pv_live_model``: plan each PV plant on the trained quantile PV model where its gated
    history and the weather feed cover the horizon (else the climatology,
    :class:`control_plane.forecast.live.ModelPvForecastSource`); the model is trained at
    start on generated history at the location unless ``pv_model`` names a signed
    ``.gfcast`` file, verified with the Ed25519 public key (PEM) at ``pv_model_key``.
    ``load_window``: the local window (``HH:MM-HH:MM``, may span midnight) in which each
    flexible load draws its daily energy (``e_kwh`` in the registry).
    ``bid_day_ahead``: once a day at ``bid_at`` (local, before the 12:00 gate closure)
    plan tomorrow's local day and submit its bids through the market gateway as the
    operator identity ``bidder`` (``spiffe://<domain>/operator/<bidder>``): every bid is
    decided by the same Rego policy as a human trader's (lots, gate closure, verified
    flexibility, price band, four-eyes above the threshold, kill switch) and audited.
    """

    interval_s: float = 900.0
    dispatch: bool = True
    follow_interval_s: float = 60.0
    time_limit_s: float = 20.0
    exact_max_assets: int = 2000
    max_age_s: float = 900.0
    ev_deadline: str = "07:00"
    ev_departure: str = "08:00"
    timezone: str = "Europe/Berlin"
    energy_increment_kw: float = 100.0
    reserve_increment_kw: float = 1000.0
    pv_forecast: bool = True
    latitude_deg: float = 52.52
    longitude_deg: float = 13.40
    pv_quantile: float = 0.1
    pv_live_model: bool = True
    pv_model: str = ""
    pv_model_key: str = ""
    load_window: str = "22:00-06:00"
    bid_day_ahead: bool = False
    bidder: str = "auto-bidder"
    bid_at: str = "07:30"  # before the FCR gate (08:00 the day before) and the DA gate (12:00)

    def __post_init__(self) -> None:
        if not 60 <= self.interval_s <= 86_400:
            raise ConfigError("planning.interval_s: must be between 60 and 86400 s")
        if not 1 <= self.follow_interval_s <= 3600:
            raise ConfigError("planning.follow_interval_s: must be between 1 and 3600 s")
        if not 0.5 <= self.time_limit_s <= 600:
            raise ConfigError("planning.time_limit_s: must be between 0.5 and 600 s")
        if not 1 <= self.exact_max_assets <= 1_000_000:
            raise ConfigError("planning.exact_max_assets: must be between 1 and 1000000")
        if not 60 <= self.max_age_s <= 86_400:
            raise ConfigError("planning.max_age_s: must be between 60 and 86400 s")
        deadline = _local_time("planning.ev_deadline", self.ev_deadline)
        departure = _local_time("planning.ev_departure", self.ev_departure)
        if departure < deadline:
            raise ConfigError("planning.ev_departure: must not be before ev_deadline")
        try:
            ZoneInfo(self.timezone)
        except (ZoneInfoNotFoundError, ValueError):
            raise ConfigError(f"planning.timezone: unknown time zone {self.timezone!r}") from None
        for name in ("energy_increment_kw", "reserve_increment_kw"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int | float) or not 0 <= v <= 1e6:
                raise ConfigError(f"planning.{name}: must be a number of kW in [0, 1e6]")

        first, sep, last = str(self.load_window).partition("-")
        if not sep:
            raise ConfigError(
                f"planning.load_window: expected HH:MM-HH:MM, got {self.load_window!r}"
            )
        if _local_time("planning.load_window", first) == _local_time("planning.load_window", last):
            raise ConfigError("planning.load_window: start and end must differ")
        bid_at = _local_time("planning.bid_at", self.bid_at)
        if not time(0, 0) <= bid_at < time(12, 0):
            raise ConfigError("planning.bid_at: must be before the 12:00 day-ahead gate closure")
        if not ID_PATTERN.match(self.bidder):
            raise ConfigError(f"planning.bidder: {self.bidder!r} must match {ID_PATTERN.pattern}")
        for name, lo, hi in (
            ("latitude_deg", -90.0, 90.0),
            ("longitude_deg", -180.0, 180.0),
            ("pv_quantile", 0.01, 0.99),
        ):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int | float) or not lo <= v <= hi:
                raise ConfigError(f"planning.{name}: must be a number in [{lo:g}, {hi:g}]")
        for name in ("pv_model", "pv_model_key"):
            if not isinstance(getattr(self, name), str):
                raise ConfigError(f"planning.{name}: must be a file path")
        if bool(self.pv_model) != bool(self.pv_model_key):
            raise ConfigError("planning.pv_model: needs pv_model_key (and the other way round)")
        if self.pv_model and not (self.pv_forecast and self.pv_live_model):
            raise ConfigError("planning.pv_model: needs pv_forecast and pv_live_model")

    def forecast_site(self) -> ForecastSite:
        """The fleet's location as a forecast site (PV plant of the default size)."""
        from control_plane.forecast.site import ForecastSite

        return ForecastSite(
            latitude_deg=float(self.latitude_deg),
            longitude_deg=float(self.longitude_deg),
            tz=self.timezone,
        )

    def pv_source(
        self, history: HistoryReader | None = None, weather: WeatherReader | None = None
    ) -> PvForecastSource | None:
        """The PV forecast the cycle plans on, or None. With ``history`` and ``weather``
        and ``pv_live_model``: a :class:`~control_plane.forecast.live.ModelPvForecastSource`
        holding the signed ``pv_model`` (verified here: :class:`ConfigError` if refused) or
        no model yet (the owner trains it, :meth:`ModelPvForecastSource.train`); else the
        climatological source. The climatology is learned here (~1 s)."""
        if not self.pv_forecast:
            return None
        from pathlib import Path

        from control_plane.forecast.live import ClimatologicalPv, ModelPvForecastSource
        from control_plane.forecast.live import PvForecastSource as Climatological
        from control_plane.forecast.live_inputs import load_pv_model

        site = self.forecast_site()
        model = None
        if self.pv_model:
            model = load_pv_model(Path(self.pv_model), Path(self.pv_model_key), site)
        climate = ClimatologicalPv.learn(site, quantile=float(self.pv_quantile))
        if history is None or weather is None or not self.pv_live_model:
            return Climatological(climate)
        return ModelPvForecastSource(
            climate, history, weather, model=model, quantile=float(self.pv_quantile)
        )

    def market_rules(self) -> MarketRules:
        return MarketRules(
            energy_increment_kw=float(self.energy_increment_kw),
            reserve_increment_kw=float(self.reserve_increment_kw),
        )

    @classmethod
    def from_mapping(cls, raw: Mapping[str, Any]) -> PlanningConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(raw) - known
        if unknown:
            raise ConfigError(f"planning: unknown field(s): {', '.join(sorted(unknown))}")
        try:
            return cls(**dict(raw))
        except TypeError as e:
            raise ConfigError(f"planning: {e}") from e


def _local_time(name: str, text: str) -> time:
    try:
        hh, mm = text.split(":")
        return time(int(hh), int(mm))
    except (ValueError, AttributeError):
        raise ConfigError(f"{name}: expected a local time HH:MM, got {text!r}") from None


def horizon_start_ms(now_ms: int) -> int:
    """The start of the quarter-hour holding ``now_ms`` [ms]: step 0 of the rolling plan."""
    return now_ms - now_ms % QUARTER_HOUR_MS


def steps_until(start_ms: int, local: time, tz: ZoneInfo) -> int:
    """Whole quarter-hours from ``start_ms`` to the next ``local`` wall-clock time, in
    [1, STEPS]: a deadline is never the current step (nothing could be done for it)."""
    start = datetime.fromtimestamp(start_ms / 1000, UTC).astimezone(tz)
    target = start.replace(hour=local.hour, minute=local.minute, second=0, microsecond=0)
    while target <= start:
        # next day, then re-localized: the wall-clock time keeps across a DST change
        day = (target + timedelta(days=1)).date()
        target = datetime.combine(day, local, tz)
    seconds = (target.astimezone(UTC) - start.astimezone(UTC)).total_seconds()
    return max(1, min(STEPS, math.floor(seconds / 900)))


def ev_owner_steps(start_ms: int, config: PlanningConfig) -> EvOwnerConstraint:
    """The owners' default deadline and departure as steps of the horizon at ``start_ms``."""
    tz = ZoneInfo(config.timezone)
    deadline = steps_until(start_ms, _local_time("", config.ev_deadline), tz)
    departure = steps_until(start_ms, _local_time("", config.ev_departure), tz)
    if departure < deadline:  # the departure time passed, the deadline is still ahead
        departure = STEPS
    return EvOwnerConstraint(deadline_step=deadline, departure_step=max(departure, deadline))


def load_window_steps(start_ms: int, config: PlanningConfig) -> LoadWindow:
    """The owners' load window as steps of the horizon at ``start_ms``: the window under
    way (from step 0, with the share of the daily energy its remaining time stands for)
    or the next one."""
    tz = ZoneInfo(config.timezone)
    first, _, last = config.load_window.partition("-")
    opens, closes = _local_time("", first), _local_time("", last)
    to_open, to_close = steps_until(start_ms, opens, tz), steps_until(start_ms, closes, tz)
    length = (to_close - to_open) % STEPS or STEPS
    if to_close < to_open:  # inside the window now: it closes before it opens again
        return LoadWindow(0, to_close, share=min(1.0, to_close / length))
    return LoadWindow(to_open, min(STEPS, to_close))


def market_block_starts(start_ms: int, tz: ZoneInfo, block_hours: int = 4) -> tuple[int, ...]:
    """The reserve market's blocks in the horizon at ``start_ms`` as their first steps: the
    local wall-clock hours that are multiples of ``block_hours`` (00:00, 04:00, ... local)
    start a block, and step 0 starts the block under way. A horizon that starts inside a
    block has 7 blocks (a partial one at each end); on a DST day the local block that
    holds the change lasts 3 or 5 hours, as in the market."""
    starts = [0]
    for k in range(1, STEPS):
        local = datetime.fromtimestamp((start_ms + k * QUARTER_HOUR_MS) / 1000, tz)
        if local.minute == 0 and local.hour % block_hours == 0:
            starts.append(k)
    return tuple(starts)


def block_delivery_start(start_ms: int, tz: ZoneInfo, block_hours: int = 4) -> int:
    """The start [ms] of the market block that holds ``start_ms``: the latest local
    wall-clock hour at or before it that is a multiple of ``block_hours``."""
    t = start_ms - start_ms % QUARTER_HOUR_MS
    for _ in range(4 * (block_hours + 2)):  # a DST block lasts at most block_hours + 1
        local = datetime.fromtimestamp(t / 1000, tz)
        if local.minute == 0 and local.hour % block_hours == 0:
            return t
        t -= QUARTER_HOUR_MS
    raise ValueError(f"no {block_hours}-h block boundary before {start_ms} in {tz}")


def reference_prices(start_ms: int, rules: MarketRules) -> MarketPrices:
    """The market simulator's reference curve for the horizon at ``start_ms``: energy per
    quarter-hour [EUR/MWh] and the FCR and aFRR (up, down) capacity prices for each reserve
    block of ``rules`` [EUR/MW/h]."""
    from control_plane.markets.actions import Product
    from control_plane.markets.exchanges.day_ahead import reference_price_eur_per_mwh
    from control_plane.markets.exchanges.reserves import reference_capacity_price

    energy = tuple(
        reference_price_eur_per_mwh(start_ms + k * QUARTER_HOUR_MS) for k in range(STEPS)
    )
    blocks = rules.blocks
    return MarketPrices(
        energy,
        (reference_capacity_price(Product.FCR),) * blocks,
        afrr_up_eur_per_mw_h=(reference_capacity_price(Product.AFRR_POS),) * blocks,
        afrr_down_eur_per_mw_h=(reference_capacity_price(Product.AFRR_NEG),) * blocks,
    )


@dataclass(frozen=True, slots=True)
class PlanRecord:
    """One planning round: when, over which horizon, what came out, what was left out."""

    planned_ms: int
    horizon_start_ms: int
    plan: Plan
    fleet: FleetState
    excluded: Mapping[str, str]
    method: str  # "exact" or "aggregated"
    rules: MarketRules  # the reserve blocks the plan's capacities are per
    batteries: BatteryIndex  # the fleet's batteries by site (an aFRR activation reads it)

    def block_at(self, step: int) -> int:
        """The plan's reserve block that holds ``step`` of its horizon."""
        return int(self.rules.step_block()[step])

    def summary(self) -> dict[str, Any]:
        plan = self.plan
        portfolio = plan.portfolio_kw()
        return {
            "planned_ms": self.planned_ms,
            "horizon_start_ms": self.horizon_start_ms,
            "method": self.method,
            "status": plan.status,
            "assets_planned": len(plan.asset_ids),
            "assets_excluded": len(self.excluded),
            "objective_eur": None if math.isnan(plan.objective_eur) else plan.objective_eur,
            "wall_s": round(plan.wall_s, 3),
            "first_step_kw": round(float(portfolio[0]), 3) if len(portfolio) else 0.0,
            "demand_response": [d.event_id for d in self.fleet.demand_response],
            "diagnosis": [
                {"constraint": d.constraint, "subjects": list(d.subjects[:8]), "message": d.message}
                for d in plan.diagnosis[:8]
            ],
        }


@dataclass(frozen=True, slots=True)
class BidRound:
    """One day-ahead bidding round: the day, the plan, bids made, sent, denied by reason."""

    day: date
    planned: PlanRecord
    bids: int
    sent: int
    denied: Mapping[str, int]

    def summary(self) -> dict[str, Any]:
        return {
            "day": self.day.isoformat(),
            "plan_status": self.planned.plan.status,
            "bids": self.bids,
            "sent": self.sent,
            "denied": dict(self.denied),
        }


class PlanningCycle:
    """The timer loop described in the module docstring. ``run`` until cancelled."""

    def __init__(
        self,
        config: PlanningConfig,
        *,
        registry: AssetRegistry,
        state: GatedStateView,
        audit: AuditLog,
        clock: Clock,
        identity: str,
        dispatcher: PlanDispatcher | None = None,
        prices: PriceSource = reference_prices,
        pv_forecast: PvForecastSource | None = None,
        constraints: ConstraintSource | None = None,
        rules: MarketRules | None = None,
        markets: MarketService | None = None,
        trust_domain: str = "gridfort.local",
        grid_limits: GridLimits | None = None,
        arming: CommandDispatcher | None = None,
        positions: PositionSource | None = None,
    ) -> None:
        self.config = config
        self._registry = registry
        self._state = state
        self._audit = audit
        self._clock = clock
        self._identity = identity
        self._dispatcher = dispatcher if config.dispatch else None
        self._prices = prices
        self._pv_forecast = pv_forecast
        self._constraints = constraints
        self._grid_limits = grid_limits
        self._positions = positions  # reserve capacity already sold, kept by every re-plan
        # FCR arming at each block of the plan (None: not armed by this cycle)
        self._arm = arming if config.dispatch else None
        self._last_armed: tuple[int, int] | None = None
        self.armed_sites = 0
        self._markets = markets if config.bid_day_ahead else None
        self.bidder = Actor(str(SpiffeId(trust_domain, Role.OPERATOR, config.bidder)), "operator")
        self.last_bid: BidRound | None = None
        self._bid_days: set[date] = set()
        self.rules = rules or config.market_rules()
        self.latest: PlanRecord | None = None
        self.rounds = 0
        self.failures = 0
        self.dispatched_steps = 0
        self._last_step: tuple[int, int] | None = None
        self.afrr: AfrrActivation | None = None  # the aFRR activation under way
        self._afrr_sends = 0
        # one aFRR change at a time: a fan-out yields while it signs, and a later request's
        # setpoints must never be overtaken at a site by an earlier request's
        self._afrr_lock = asyncio.Lock()

    # -- one round -----------------------------------------------------------
    async def gated_fleet(self, now_ms: int, start_ms: int | None = None) -> tuple[int, GatedFleet]:
        """The horizon start (default: the current quarter-hour) and the fleet built from
        gated state at ``now_ms``. The PV forecast runs in a worker thread (a trained
        model reads history and weather from SQLite and runs torch: ~3 ms per plant)."""
        start = horizon_start_ms(now_ms) if start_ms is None else start_ms
        snapshot = self._registry.snapshot()
        sites, feeders = self._limits(snapshot)
        forecasts: Mapping[str, tuple[float, ...]] = {}
        if self._pv_forecast is not None:
            forecasts = await asyncio.to_thread(self._pv_forecast, start, snapshot)
        owner = ev_owner_steps(start, self.config)
        evs = [a.asset_id for a in snapshot.assets.values() if a.kind is AssetKind.EV_CHARGER]
        loads = [a.asset_id for a in snapshot.assets.values() if a.kind is AssetKind.FLEXIBLE_LOAD]
        fleet = fleet_from_gated_state(
            snapshot,
            self._state,
            now_ms=now_ms,
            max_age_ms=int(self.config.max_age_s * 1000),
            ev_owner=dict.fromkeys(evs, owner),
            pv_forecast_kw=forecasts,
            load_window=dict.fromkeys(loads, load_window_steps(start, self.config)),
            sites=sites,
            feeders=feeders,
        )
        if self._constraints is not None:
            caps = self._constraints(start)
            if caps:
                fleet = replace(fleet, fleet=replace(fleet.fleet, demand_response=caps))
        return start, fleet

    def _limits(
        self, snapshot: RegistrySnapshot
    ) -> tuple[tuple[SiteLimits, ...], tuple[FeederLimit, ...]]:
        """The grid operator's limits from the registry, for the sites that have assets."""
        if self._grid_limits is None:
            return (), ()
        with_assets = {a.site_id for a in snapshot.assets.values()}
        sites = tuple(
            SiteLimits.flat(e.site_id, e.import_max_kw, e.export_max_kw)
            for e in self._grid_limits.sites()
            if e.site_id in with_assets
        )
        feeders = tuple(
            FeederLimit(f.feeder_id, f.site_ids & with_assets, f.import_max_kw, f.export_max_kw)
            for f in self._grid_limits.feeders()
            if f.site_ids & with_assets
        )
        return sites, feeders

    def rules_at(self, start_ms: int) -> MarketRules:
        """The market rules with the reserve blocks of the market's local time for the
        rolling horizon at ``start_ms`` (:func:`market_block_starts`) and, with a position
        source, the capacity already sold in each of them (held by the plan: a re-plan
        inside a block never drops what the market awarded)."""
        hours = max(1, round(self.rules.fcr_block_steps * QUARTER_HOUR_MS / 3_600_000))
        tz = ZoneInfo(self.config.timezone)
        starts = market_block_starts(start_ms, tz, hours)
        rules = replace(self.rules, block_starts=starts)
        if self._positions is None:
            return rules
        delivery = [block_delivery_start(start_ms, tz, hours)]
        delivery += [start_ms + k * QUARTER_HOUR_MS for k in starts[1:]]
        inc = rules.reserve_increment_kw
        sold: list[tuple[float, ...]] = []
        for product in (Product.FCR, Product.AFRR_POS, Product.AFRR_NEG):
            kw = [max(0.0, float(self._positions(product, d))) for d in delivery]
            if inc > 0:  # whole lots; a fraction (never sold so) is held as the lot above
                kw = [inc * math.ceil(x / inc - 1e-6) for x in kw]
            sold.append(tuple(kw) if any(x > 0 for x in kw) else ())
        return replace(
            rules, sold_fcr_kw=sold[0], sold_afrr_up_kw=sold[1], sold_afrr_down_kw=sold[2]
        )

    def solve(
        self, now_ms: int, start_ms: int, gated: GatedFleet, rules: MarketRules | None = None
    ) -> PlanRecord:
        """Price the horizon and solve it (blocking, touches no database: run it off the
        event loop). ``rules``: default the market's local blocks (:meth:`rules_at`)."""
        rules = self.rules_at(start_ms) if rules is None else rules
        prices = self._prices(start_ms, rules)
        fleet = gated.fleet
        if len(fleet) <= self.config.exact_max_assets:
            method = "exact"
            plan = schedule(fleet, prices, rules, time_limit_s=self.config.time_limit_s)
        else:
            method = "aggregated"
            plan = schedule_aggregated(fleet, prices, rules, time_limit_s=self.config.time_limit_s)
        excluded = {e.asset_id: e.reason for e in gated.excluded}
        index = BatteryIndex.of(fleet)
        return PlanRecord(now_ms, start_ms, plan, fleet, excluded, method, rules, index)

    async def plan_now(self) -> PlanRecord | None:
        """One round: the fleet from gated state here, the solve in a worker thread;
        audited. None (and audited) when it failed."""
        now_ms = self._clock.now_ms()
        self.rounds += 1
        try:
            start, gated = await self.gated_fleet(now_ms)
            record = await asyncio.to_thread(self.solve, now_ms, start, gated)
        except (OptimizerInputError, ValueError, OSError) as e:
            self.failures += 1
            log.warning("planning round failed: %s", e)
            self._audit.append(
                "plan",
                decision="deny",
                identity=self._identity,
                reason="PLANNING_FAILED",
                details={"error": str(e)[:300], "kept_previous": self.latest is not None},
            )
            return None
        self.latest = record
        summary = record.summary()
        excluded = sorted(record.excluded.items())[:16]
        self._audit.append(
            "plan",
            decision="info",
            identity=self._identity,
            details={**summary, "excluded": [f"{a}: {why}" for a, why in excluded]},
        )
        log.info(
            "plan %s (%s): %d assets, %d left out, %.1f s",
            record.plan.status,
            record.method,
            summary["assets_planned"],
            summary["assets_excluded"],
            record.plan.wall_s,
        )
        return record

    async def bid_now(self, day: date) -> BidRound | None:
        """Plan local ``day`` (its 96 steps from local midnight; today's gated state of
        charge as the start, tomorrow's EV sessions unknown and so not planned) and submit
        the plan's bids as :attr:`bidder`. Audited (``plan_bids``); None without markets."""
        if self._markets is None:
            return None
        markets = self._markets
        now_ms = self._clock.now_ms()
        self._bid_days.add(day)
        try:
            start = delivery_starts(Product.DAY_AHEAD, day)[0]
            _, gated = await self.gated_fleet(now_ms, start)
            gated = replace(gated, fleet=replace(gated.fleet, evs=()))
            # the day's bids: the even 4-h blocks from local midnight (plan_bids maps DST)
            record = await asyncio.to_thread(self.solve, now_ms, start, gated, self.rules)
            prices = self._prices(start, self.rules)
            schedule_id = f"auto-da-{day.isoformat()}"
            bids, results = await asyncio.to_thread(
                markets.submit_plan,
                self.bidder,
                record.plan,
                day=day,
                prices=prices,
                rules=self.rules,
                schedule_id=schedule_id,
            )
        except (OptimizerInputError, ValueError, OSError, GridfortError) as e:
            log.warning("day-ahead bidding for %s failed: %s", day, e)
            self._audit.append(
                "plan_bids",
                decision="deny",
                identity=self._identity,
                reason="PLANNING_FAILED",
                details={"day": day.isoformat(), "error": str(e)[:300]},
            )
            return None
        denied = Counter(r.reason or r.status.value for r in results if not r.sent)
        bid_round = BidRound(
            day, record, len(bids.bids), sum(1 for r in results if r.sent), dict(denied)
        )
        self.last_bid = bid_round
        self._audit.append(
            "plan_bids",
            decision="info",
            identity=self._identity,
            details={
                "day": day.isoformat(),
                "schedule_id": schedule_id,
                "bidder": self.bidder.spiffe_id,
                "plan_status": record.plan.status,
                "bids": bid_round.bids,
                "sent": bid_round.sent,
                "denied": bid_round.denied,
            },
        )
        return bid_round

    def bid_due(self, now_ms: int) -> date | None:
        """Tomorrow's local date if its day-ahead bids are due now (at or after ``bid_at``,
        before the 12:00 gate closure, not bid yet), else None."""
        if self._markets is None:
            return None
        local = local_time(now_ms)
        bid_at = _local_time("", self.config.bid_at)
        if not bid_at <= local.time() < time(12, 0):
            return None
        tomorrow = local.date() + timedelta(days=1)
        return None if tomorrow in self._bid_days else tomorrow

    async def dispatch_current(self) -> bool:
        """Send the current quarter-hour of the newest plan, once per step. True if sent.
        Holds the aFRR lock: an activation never crosses a step's setpoints in flight."""
        async with self._afrr_lock:
            return await self._dispatch_current()

    async def _dispatch_current(self) -> bool:
        record = self.latest
        if self._dispatcher is None or record is None or not record.plan.asset_ids:
            return False
        now_ms = self._clock.now_ms()
        step = (now_ms - record.horizon_start_ms) // QUARTER_HOUR_MS
        if not 0 <= step < STEPS:
            return False  # the plan ran out: nothing stale is sent
        key = (record.planned_ms, int(step))
        if key == self._last_step:
            return False
        block = record.block_at(int(step))
        afrr = self.afrr
        shift = None
        if afrr is not None and now_ms < afrr.until_ms:  # re-shared on this step's plan
            shift, _ = offsets(
                reserved_participants(
                    record.plan, record.fleet, int(step), block, index=record.batteries
                ),
                afrr.event.delta_kw,
            )
        rated = self._ratings()
        sent = await self._dispatcher.dispatch_async(
            record.plan,
            record.fleet,
            day_start_ms=record.horizon_start_ms,
            rated_kw=rated,
            offsets_kw=shift,
        )
        if sent is None:
            return False
        self._last_step = key
        self.dispatched_steps += 1
        if self._arm is not None and (record.planned_ms, block) != self._last_armed:
            self._last_armed = (record.planned_ms, block)
            self.armed_sites += self._arm_block(record, block)
        return True

    def _ratings(self) -> dict[str, float]:
        return {a.asset_id: a.rated_p_kw for a in self._registry.snapshot().assets.values()}

    # -- aFRR: the operator-signalled path -------------------------------------
    async def activate_afrr(
        self, event: ActivationEvent, requested_by: str
    ) -> AfrrActivation | Refusal:
        """Set the pool's aFRR activation to ``event.delta_kw`` [kW, + more export] for
        ``event.duration_s`` (see :mod:`control_plane.dispatch.afrr`): shared among the
        batteries pro rata to the aFRR the current plan reserved in the current block and
        sent as signed setpoints to the sites whose setpoint changes. Replaces the
        activation under way; 0 ends it. Refused (``AFRR_NOT_AVAILABLE``) without a
        dispatched plan or without aFRR reserved in the requested direction. Audited
        either way (``afrr_activation``). Requests are applied one at a time, in order."""
        async with self._afrr_lock:
            return await self._activate_afrr(event, requested_by)

    async def _activate_afrr(
        self, event: ActivationEvent, requested_by: str
    ) -> AfrrActivation | Refusal:
        now_ms = self._clock.now_ms()
        record = self.latest
        step = -1 if record is None else (now_ms - record.horizon_start_ms) // QUARTER_HOUR_MS
        why = ""
        if self._dispatcher is None:
            why = "this control plane plans but does not dispatch ([planning] dispatch = false)"
        elif record is None or not record.plan.asset_ids:
            why = "there is no plan to activate reserve from yet"
        elif not 0 <= step < STEPS:
            why = "the newest plan has run out"
        if why:
            return self._afrr_refused(event, requested_by, why)
        assert record is not None and self._dispatcher is not None
        block = record.block_at(int(step))
        previous = self.afrr
        moved_before = frozenset(() if previous is None else previous.offsets_kw)
        parts = reserved_participants(
            record.plan, record.fleet, int(step), block, moved_before, record.batteries
        )
        room = reserved(parts, event.delta_kw)
        if event.delta_kw != 0 and room <= 0:
            direction = "up (more export)" if event.delta_kw > 0 else "down (less export)"
            why = f"the plan reserved no aFRR {direction} in the current block"
            return self._afrr_refused(event, requested_by, why)
        # the batteries that hold aFRR (and those the activation before moved), nothing
        # else: the fan-out carries only what changes
        to_send, shift, delivered = activation_sections(parts, event.delta_kw)
        starts, lengths = record.rules.starts(), record.rules.block_steps()
        block_end = record.horizon_start_ms + int(starts[block] + lengths[block]) * QUARTER_HOUR_MS
        activation = AfrrActivation(
            event=event,
            requested_by=requested_by,
            started_ms=now_ms,
            until_ms=min(now_ms + int(event.duration_s * 1000), block_end),
            block_end_ms=block_end,
            offsets_kw=shift,
            sites=sites_of(parts, set(shift)),
            delivered_kw=delivered,
            reserved_kw=room,
        )
        self.afrr = activation if shift else None
        self._afrr_sends += 1
        group_id = f"afrr{self._afrr_sends}:{event.activation_id}"[:64]
        step_end = record.horizon_start_ms + (int(step) + 1) * QUARTER_HOUR_MS
        report = await self._dispatcher.send_overrides(
            to_send, until_ms=step_end, activation_id=group_id
        )
        self._audit.append(
            "afrr_activation",
            decision="info",
            identity=requested_by,
            details={
                **activation.summary(),
                "group": group_id,
                "sites_sent": report.sites_sent,
                "undeliverable": len(report.undeliverable),
            },
        )
        return activation

    def _afrr_refused(self, event: ActivationEvent, requested_by: str, why: str) -> Refusal:
        self._audit.append(
            "afrr_activation",
            decision="deny",
            identity=requested_by,
            reason=Reason.AFRR_NOT_AVAILABLE.value,
            details={"activation_id": event.activation_id, "delta_kw": event.delta_kw, "why": why},
        )
        return Refusal(Reason.AFRR_NOT_AVAILABLE, why, requested_by)

    async def end_afrr_if_due(self) -> bool:
        """End the activation under way once its time is up: its sites get the plan's
        setpoints back (audited ``afrr_activation_end``). True if it ended now."""
        async with self._afrr_lock:
            return await self._end_afrr_if_due()

    async def _end_afrr_if_due(self) -> bool:
        afrr = self.afrr
        record = self.latest
        now_ms = self._clock.now_ms()
        if afrr is None or now_ms < afrr.until_ms:
            return False
        self.afrr = None
        sites_sent = 0
        step = -1 if record is None else (now_ms - record.horizon_start_ms) // QUARTER_HOUR_MS
        if self._dispatcher is not None and record is not None and 0 <= step < STEPS:
            self._afrr_sends += 1
            moved = reserved_participants(  # the moved batteries, back to the plan's value
                record.plan,
                record.fleet,
                int(step),
                record.block_at(int(step)),
                frozenset(afrr.offsets_kw),
                record.batteries,
            )
            only_moved = Participants.from_rows(
                (site, asset, base, 0.0, 0.0)
                for site, asset, base in zip(
                    moved.site_of_row(), moved.asset_ids, moved.base_kw.tolist(), strict=True
                )
                if asset in afrr.offsets_kw
            )
            back, _, _ = activation_sections(only_moved, 0.0)
            step_end = record.horizon_start_ms + (int(step) + 1) * QUARTER_HOUR_MS
            report = await self._dispatcher.send_overrides(
                back, until_ms=step_end, activation_id=f"afrr{self._afrr_sends}:end"
            )
            sites_sent = report.sites_sent
        self._audit.append(
            "afrr_activation_end",
            decision="info",
            identity=self._identity,
            details={
                "activation_id": afrr.event.activation_id,
                "ran_ms": now_ms - afrr.started_ms,
                "sites_sent": sites_sent,
            },
        )
        return True

    def _pv_status(self) -> dict[str, Any] | None:
        """The PV source's own status (the live model: ready or not, sources used), if any."""
        status = getattr(self._pv_forecast, "status", None)
        if status is None:
            return None if self._pv_forecast is None else {"model": "climatology only"}
        return dict(status())

    def afrr_status(self) -> dict[str, Any]:
        """The aFRR reserved in the current block per direction [kW] and the activation."""
        record = self.latest
        up = down = 0.0
        if record is not None:
            step = (self._clock.now_ms() - record.horizon_start_ms) // QUARTER_HOUR_MS
            if 0 <= step < STEPS:
                block = record.block_at(int(step))
                parts = reserved_participants(
                    record.plan, record.fleet, int(step), block, index=record.batteries
                )
                up, down = float(parts.up_kw.sum()), float(parts.down_kw.sum())
        active = self.afrr
        return {
            "reserved_up_kw": round(up, 3),
            "reserved_down_kw": round(down, 3),
            "active": None if active is None else active.summary(),
        }

    def _arm_block(self, record: PlanRecord, block: int) -> int:
        """Send each site its FCR droop parameters for ``block`` of ``record``'s plan (the
        edges react to frequency locally); returns how many sites were sent one."""
        assert self._arm is not None
        armings = block_arming(
            record.plan, record.fleet, record.rules, block, day_start_ms=record.horizon_start_ms
        )
        sent = 0
        for site_id, arming in armings.items():
            ttl_s = max(1.0, (arming.active_until_ms - self._clock.now_ms()) / 1000)
            result = self._arm.send_frequency_arming(site_id, arming, ttl_s=min(ttl_s, 3600.0))
            sent += not isinstance(result, Refusal)
        return sent

    # -- the loop ------------------------------------------------------------
    async def run(self) -> None:
        """Plan at start and every ``interval_s``; dispatch each quarter-hour; judge
        plan-vs-actual every ``follow_interval_s``. Runs until cancelled."""
        next_plan = next_follow = 0.0
        loop = asyncio.get_running_loop()
        while True:
            now = loop.time()
            try:
                if now >= next_plan:
                    next_plan = now + self.config.interval_s
                    await self.plan_now()
                due = self.bid_due(self._clock.now_ms())
                if due is not None:
                    await self.bid_now(due)
                await self.end_afrr_if_due()
                await self.dispatch_current()
                if self._dispatcher is not None and loop.time() >= next_follow:
                    next_follow = loop.time() + self.config.follow_interval_s
                    self._dispatcher.evaluate()
            except (OptimizerInputError, ValueError) as e:  # a bad plan costs one step
                log.warning("plan dispatch failed: %s", e)
            except Exception:  # a bug costs this turn, never the loop (the plan stays)
                self.failures += 1
                log.exception("planning cycle: unexpected error; continuing")
            now_ms = self._clock.now_ms()
            to_step_s = (QUARTER_HOUR_MS - now_ms % QUARTER_HOUR_MS) / 1000 + 0.05
            wake = min(next_plan - loop.time(), to_step_s, self.config.follow_interval_s)
            if self.afrr is not None:
                wake = min(wake, (self.afrr.until_ms - now_ms) / 1000)
            await asyncio.sleep(max(0.05, wake))

    def status(self) -> dict[str, Any]:
        """For operators: the newest plan's summary and the loop's counters."""
        return {
            "rounds": self.rounds,
            "failures": self.failures,
            "dispatched_steps": self.dispatched_steps,
            "armed_sites": self.armed_sites,
            "afrr": self.afrr_status(),
            "pv_forecast": self._pv_status(),
            "latest": None if self.latest is None else self.latest.summary(),
            "last_bid": None if self.last_bid is None else self.last_bid.summary(),
        }
