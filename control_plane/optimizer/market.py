"""Market inputs of the day-ahead schedule: prices and the integral rules of the products.

Prices: ``energy_eur_per_mwh`` per quarter-hour [EUR/MWh], ``fcr_eur_per_mw_h`` per
4-hour FCR block [EUR per MW of symmetric capacity per hour] and, optionally, aFRR capacity
prices per block and direction (``afrr_up_eur_per_mw_h``: positive aFRR, more export / less
import on call; ``afrr_down_eur_per_mw_h``: negative aFRR) [EUR/MW/h]; absent means aFRR is
not offered. :func:`synthetic_prices` generates a plausible day deterministically from a
seed (no downloads).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from control_plane.optimizer.assets import DT_H, STEPS, OptimizerInputError

FloatArray = NDArray[np.float64]


@dataclass(frozen=True, slots=True)
class MarketRules:
    """Product rules and valuation constants.

    ``energy_increment_kw``: the portfolio's net position per step is a whole multiple of it
    (0.1 MW day-ahead bids = 100 kW; 0 = continuous). ``reserve_increment_kw``: FCR is offered
    per block in whole multiples of it (1 MW), so the minimum bid is one increment (0 =
    continuous). ``fcr_block_steps``: steps per FCR block (16 = 4 h). ``block_starts``: the
    step at which each reserve block of the horizon starts, when the blocks are not the even
    ``fcr_block_steps`` split (a rolling horizon that starts inside a market block, a DST day
    whose local 4-h blocks last 3 or 5 h: ``control_plane.planning.market_block_starts``);
    empty = even split. ``sold_fcr_kw`` / ``sold_afrr_up_kw`` / ``sold_afrr_down_kw``: the
    capacity the portfolio has already sold per block [kW] (the reserve market's awards, a
    position a re-plan must keep): the plan holds at least that much in each block; empty =
    nothing sold.
    ``fcr_energy_h``: hours
    of full activation a battery must hold in reserve in each direction while it offers FCR
    [h]. ``afrr_energy_h``: hours of full activation a battery must hold for the aFRR it
    offers, in the offered direction, on top of FCR's (aFRR is offered in the same blocks
    and in the same ``reserve_increment_kw`` lots per direction) [h].
    ``self_consumption_eur_per_mwh``: value of PV energy consumed at its own site (avoided
    network charges) [EUR/MWh].
    """

    energy_increment_kw: float = 100.0
    reserve_increment_kw: float = 1000.0
    fcr_block_steps: int = 16
    fcr_energy_h: float = 0.5
    self_consumption_eur_per_mwh: float = 10.0
    afrr_energy_h: float = 0.5
    block_starts: tuple[int, ...] = ()
    sold_fcr_kw: tuple[float, ...] = ()
    sold_afrr_up_kw: tuple[float, ...] = ()
    sold_afrr_down_kw: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        if not (math.isfinite(self.energy_increment_kw) and self.energy_increment_kw >= 0):
            raise OptimizerInputError("market: energy_increment_kw must be >= 0")
        if not (math.isfinite(self.reserve_increment_kw) and self.reserve_increment_kw >= 0):
            raise OptimizerInputError("market: reserve_increment_kw must be >= 0")
        if self.fcr_block_steps <= 0 or STEPS % self.fcr_block_steps:
            raise OptimizerInputError(f"market: fcr_block_steps must divide {STEPS}")
        starts = self.block_starts
        if starts and (
            starts[0] != 0
            or any(b <= a for a, b in itertools.pairwise(starts))
            or starts[-1] >= STEPS
            or any(isinstance(s, bool) or not isinstance(s, int) for s in starts)
        ):
            raise OptimizerInputError(
                f"market: block_starts must be increasing steps from 0, below {STEPS}"
            )
        for name in ("sold_fcr_kw", "sold_afrr_up_kw", "sold_afrr_down_kw"):
            sold = getattr(self, name)
            if sold and (
                len(sold) != self.blocks or not all(math.isfinite(x) and x >= 0 for x in sold)
            ):
                raise OptimizerInputError(
                    f"market: {name} needs {self.blocks} finite values >= 0 (one per block)"
                )
            inc = self.reserve_increment_kw
            if inc > 0 and any(abs(x / inc - round(x / inc)) > 1e-6 for x in sold):
                raise OptimizerInputError(
                    f"market: {name} must be in whole {inc:g} kW lots (what the market sells)"
                )
        if not (0 <= self.fcr_energy_h <= STEPS * DT_H):
            raise OptimizerInputError("market: fcr_energy_h must be within [0, 24] h")
        if not (0 <= self.afrr_energy_h <= STEPS * DT_H):
            raise OptimizerInputError("market: afrr_energy_h must be within [0, 24] h")
        if not (0 <= self.self_consumption_eur_per_mwh <= 1e4):
            raise OptimizerInputError("market: self_consumption_eur_per_mwh must be >= 0")

    @property
    def blocks(self) -> int:
        """Number of FCR blocks in the horizon."""
        return len(self.block_starts) if self.block_starts else STEPS // self.fcr_block_steps

    def starts(self) -> NDArray[np.int64]:
        """The first step of each block (blocks,)."""
        if self.block_starts:
            return np.asarray(self.block_starts, dtype=np.int64)
        return np.arange(0, STEPS, self.fcr_block_steps, dtype=np.int64)

    def block_steps(self) -> NDArray[np.int64]:
        """The steps in each block (blocks,)."""
        return np.diff(np.append(self.starts(), STEPS))

    def step_block(self) -> NDArray[np.int64]:
        """The block of each step (STEPS,)."""
        return np.repeat(np.arange(self.blocks, dtype=np.int64), self.block_steps())

    def expand(self) -> FloatArray:
        """(blocks, STEPS) 0/1 matrix: ``x @ expand`` holds each block's value in its steps."""
        out = np.zeros((self.blocks, STEPS), dtype=np.float64)
        out[self.step_block(), np.arange(STEPS)] = 1.0
        return out

    def per_block(self, x: FloatArray) -> FloatArray:
        """``x`` (n, blocks) held in each of its block's steps (n, STEPS)."""
        return np.asarray(x[:, self.step_block()], dtype=np.float64)

    def sold(self, product: str) -> FloatArray:
        """Capacity already sold per block [kW] of ``product`` (``fcr``, ``afrr_up``,
        ``afrr_down``); zeros where nothing is."""
        values: tuple[float, ...] = getattr(self, f"sold_{product}_kw")
        return np.asarray(values, dtype=np.float64) if values else np.zeros(self.blocks)

    @property
    def sold_afrr(self) -> bool:
        """True if some aFRR capacity is already sold (the plan must hold it)."""
        return any(x > 0 for x in self.sold_afrr_up_kw + self.sold_afrr_down_kw)

    def block_hours(self) -> FloatArray:
        """The length of each block [h]: what a capacity price per MW and hour pays for."""
        return np.asarray(self.block_steps() * DT_H, dtype=np.float64)


@dataclass(frozen=True, slots=True)
class MarketPrices:
    """Day-ahead energy prices [EUR/MWh] per step, FCR capacity prices [EUR/MW/h] per block and
    aFRR capacity prices [EUR/MW/h] per block and direction (empty: aFRR not offered)."""

    energy_eur_per_mwh: tuple[float, ...]
    fcr_eur_per_mw_h: tuple[float, ...]
    afrr_up_eur_per_mw_h: tuple[float, ...] = ()
    afrr_down_eur_per_mw_h: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        if len(self.energy_eur_per_mwh) != STEPS:
            raise OptimizerInputError(f"prices: energy_eur_per_mwh needs {STEPS} values")
        if not all(math.isfinite(p) and -1e4 <= p <= 1e4 for p in self.energy_eur_per_mwh):
            raise OptimizerInputError("prices: energy_eur_per_mwh must be finite, |p| <= 10000")
        if not all(math.isfinite(p) and 0 <= p <= 1e4 for p in self.fcr_eur_per_mw_h):
            raise OptimizerInputError("prices: fcr_eur_per_mw_h must be finite and >= 0")
        for name in ("afrr_up_eur_per_mw_h", "afrr_down_eur_per_mw_h"):
            if not all(math.isfinite(p) and 0 <= p <= 1e4 for p in getattr(self, name)):
                raise OptimizerInputError(f"prices: {name} must be finite and >= 0")

    def energy(self) -> FloatArray:
        """Energy prices as an array [EUR/MWh]."""
        return np.asarray(self.energy_eur_per_mwh, dtype=np.float64)

    def fcr(self, rules: MarketRules) -> FloatArray:
        """FCR prices per block [EUR/MW/h]; must have one value per block of ``rules``."""
        if len(self.fcr_eur_per_mw_h) != rules.blocks:
            raise OptimizerInputError(f"prices: fcr_eur_per_mw_h needs {rules.blocks} values")
        return np.asarray(self.fcr_eur_per_mw_h, dtype=np.float64)

    def afrr(self, rules: MarketRules) -> tuple[FloatArray, FloatArray]:
        """aFRR capacity prices (up, down) per block [EUR/MW/h]; zeros where absent, else one
        value per block of ``rules``."""
        out: list[FloatArray] = []
        for name in ("afrr_up_eur_per_mw_h", "afrr_down_eur_per_mw_h"):
            values: tuple[float, ...] = getattr(self, name)
            if not values:
                out.append(np.zeros(rules.blocks))
            elif len(values) != rules.blocks:
                raise OptimizerInputError(f"prices: {name} needs {rules.blocks} values")
            else:
                out.append(np.asarray(values, dtype=np.float64))
        return out[0], out[1]

    @property
    def offers_afrr(self) -> bool:
        """True if some aFRR capacity price is positive (otherwise aFRR is not modelled)."""
        return any(p > 0 for p in self.afrr_up_eur_per_mw_h + self.afrr_down_eur_per_mw_h)


def synthetic_prices(seed: int = 0, blocks: int = 6, *, afrr: bool = False) -> MarketPrices:
    """A plausible day: night trough, morning and evening peaks, a midday solar dip that goes
    negative for about two hours, plus seeded noise; FCR prices 5-25 EUR/MW/h per block.

    ``afrr``: also aFRR capacity prices per block, positive 3-15 EUR/MW/h (dearer in the
    evening peak), negative 2-12 EUR/MW/h (dearer around the midday solar surplus); drawn
    after the other prices, so energy and FCR prices are the same with or without them."""
    rng = np.random.default_rng(seed)
    h = np.arange(STEPS) * DT_H
    base = 75.0 + 10.0 * rng.standard_normal()
    morning = 55.0 * np.exp(-0.5 * ((h - 8.0) / 1.3) ** 2)
    evening = 90.0 * np.exp(-0.5 * ((h - 19.0) / 1.6) ** 2)
    solar = -120.0 * np.exp(-0.5 * ((h - 13.0) / 1.6) ** 2)
    night = -20.0 * np.exp(-0.5 * ((h - 3.5) / 1.5) ** 2)
    noise = np.cumsum(rng.normal(0.0, 2.0, STEPS))
    energy = np.round(base + morning + evening + solar + night + noise, 2)
    fcr = np.round(rng.uniform(5.0, 25.0, blocks), 2)
    energy_t, fcr_t = tuple(float(x) for x in energy), tuple(float(x) for x in fcr)
    if not afrr:
        return MarketPrices(energy_t, fcr_t)
    mid_h = (np.arange(blocks) + 0.5) * 24.0 / blocks  # block centres [h]
    evening = np.exp(-0.5 * ((mid_h - 19.0) / 3.0) ** 2)
    midday = np.exp(-0.5 * ((mid_h - 13.0) / 3.0) ** 2)
    up = np.round(3.0 + 6.0 * evening + rng.uniform(0.0, 6.0, blocks), 2)
    down = np.round(2.0 + 5.0 * midday + rng.uniform(0.0, 5.0, blocks), 2)
    return MarketPrices(energy_t, fcr_t, tuple(float(x) for x in up), tuple(float(x) for x in down))
