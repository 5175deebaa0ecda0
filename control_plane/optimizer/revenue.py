"""Revenue of a plan, evaluated from the plan and the assets alone (the same for every solver
path, so exact and aggregated plans are compared on equal terms). All terms in EUR."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from control_plane.optimizer.assets import DT_H, STEPS, FleetState
from control_plane.optimizer.market import MarketPrices, MarketRules
from control_plane.optimizer.plan import Plan


@dataclass(frozen=True, slots=True)
class Revenue:
    """Revenue terms [EUR]; ``total_eur`` = energy + reserve (FCR) + aFRR capacity +
    self-consumption - costs."""

    energy_eur: float
    reserve_eur: float
    self_consumption_eur: float
    degradation_eur: float
    curtailment_eur: float
    afrr_eur: float = 0.0

    @property
    def total_eur(self) -> float:
        return (
            self.energy_eur
            + self.reserve_eur
            + self.afrr_eur
            + self.self_consumption_eur
            - self.degradation_eur
            - self.curtailment_eur
        )

    def as_dict(self) -> dict[str, float]:
        return {**asdict(self), "total_eur": self.total_eur}


def evaluate(fleet: FleetState, plan: Plan, prices: MarketPrices, rules: MarketRules) -> Revenue:
    """Energy at day-ahead prices on the portfolio net, FCR and aFRR capacity (per direction)
    per block at their capacity prices, self-consumed PV
    per site at ``rules.self_consumption_eur_per_mwh``, degradation on battery throughput and
    curtailment below the PV forecast."""
    p = plan.p_kw
    nb, ne, nl = len(fleet.batteries), len(fleet.evs), len(fleet.loads)
    energy = float(prices.energy() @ p.sum(axis=0)) * DT_H / 1000.0
    reserve = 0.0
    if plan.reserve_kw.size:
        per_kw = prices.fcr(rules) / 1000.0 * rules.block_hours()
        reserve = float(plan.reserve_kw.sum(axis=0) @ per_kw)
    afrr = 0.0
    if plan.afrr_up_kw.size or plan.afrr_down_kw.size:
        block_h = rules.block_hours() / 1000.0  # EUR/MW/h -> EUR/kW per block (blocks,)
        up_price, down_price = prices.afrr(rules)
        for x, price in ((plan.afrr_up_kw, up_price), (plan.afrr_down_kw, down_price)):
            if x.size:
                afrr += float(x.sum(axis=0) @ (price * block_h))
    deg = np.array([x.degradation_eur_per_kwh for x in fleet.batteries])
    degradation = float(deg @ np.abs(p[:nb]).sum(axis=1)) * DT_H if nb else 0.0
    pv = p[nb + ne + nl :]
    curtailment = 0.0
    if len(fleet.pvs):
        fc = np.array([x.forecast_kw for x in fleet.pvs], dtype=np.float64)
        cost = np.array([x.curtailment_eur_per_kwh for x in fleet.pvs])
        curtailment = float(cost @ np.clip(fc - pv, 0, None).sum(axis=1)) * DT_H
    sc = 0.0
    if rules.self_consumption_eur_per_mwh > 0 and len(fleet.pvs):
        site_of = (
            [x.site_id for x in fleet.batteries]
            + [x.site_id for x in fleet.evs]
            + [x.site_id for x in fleet.loads]
            + [x.site_id for x in fleet.pvs]
        )
        index: dict[str, int] = {}
        rows = np.array([index.setdefault(s, len(index)) for s in site_of], dtype=np.int64)
        gen = np.zeros((len(index), STEPS))
        use = np.zeros((len(index), STEPS))
        np.add.at(gen, rows[nb + ne + nl :], np.clip(pv, 0, None))
        np.add.at(use, rows[: nb + ne + nl], np.clip(-p[: nb + ne + nl], 0, None))
        kwh = float(np.minimum(gen, use).sum()) * DT_H
        sc = kwh * rules.self_consumption_eur_per_mwh / 1000.0
    return Revenue(energy, reserve, sc, degradation, curtailment, afrr)
