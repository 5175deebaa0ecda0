"""Stage 5 of ingest, the false-data-injection gate: every measurement gets a verdict.

:class:`FdiGate` runs its judges over each validated batch, moves every measurement
that any judge finds falsified to quarantine with that judge's evidence, and
returns the :class:`GatedBatch`, the only type from which fleet state, the
optimizer and the market gateway are fed. Default deny: a grid metering point
for which no grid model is loaded cannot be vouched for and is quarantined
(``GATE_NO_CONTEXT``); DER telemetry always meets the temporal judge.

The judges are CPU work on the event loop; their cost per batch is measured
(``GateStats.latency_ms``) and reported by the benchmarks, not assumed.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field

from control_plane.assets.model import GRID_POINT_KINDS
from control_plane.gate.grid import GridJudge
from control_plane.gate.judges import Flag, Judge
from control_plane.gate.temporal import TemporalJudge
from control_plane.ingest.types import (
    GatedBatch,
    GateEvidence,
    MeasurementRow,
    QuarantinedMeasurement,
    ValidatedBatch,
)
from security.refusals import Reason

#: Latency samples kept for percentiles.
_LATENCY_SAMPLES = 4096


@dataclass
class GateStats:
    batches: int = 0
    measurements_judged: int = 0
    measurements_quarantined: int = 0
    by_detector: Counter[str] = field(default_factory=Counter)
    latency_ms: list[float] = field(default_factory=list)

    def record_latency(self, ms: float) -> None:
        if len(self.latency_ms) >= _LATENCY_SAMPLES:
            del self.latency_ms[: _LATENCY_SAMPLES // 2]
        self.latency_ms.append(ms)


class FdiGate:
    """The gate (see the module docstring). ``grid_judges``: one per grid with a loaded model."""

    def __init__(
        self, temporal: TemporalJudge | None = None, grid_judges: list[GridJudge] | None = None
    ) -> None:
        self.temporal = temporal or TemporalJudge()
        self.grid_judges = list(grid_judges or [])
        self._judges: list[Judge] = [self.temporal, *self.grid_judges]
        self.stats = GateStats()
        self.version = "+".join(j.version for j in self._judges)

    @classmethod
    def with_grids(cls, grids: tuple[str, ...] | list[str]) -> FdiGate:
        """A gate with the temporal judge and the shipped, verified model of each grid."""
        return cls(grid_judges=[GridJudge(g) for g in grids])

    def judge(self, batch: ValidatedBatch) -> GatedBatch:
        t0 = time.perf_counter()
        flags: dict[int, Flag] = {}
        for judge in self._judges:
            for f in judge.judge(batch):
                flags.setdefault(f.position, f)
        has_grid_points = any(a.kind in GRID_POINT_KINDS for a in batch.authorized.assets.values())
        if has_grid_points:
            for f in self._unjudged_grid_points(batch):
                flags.setdefault(f.position, f)
        if not flags:  # the common case: nothing to move
            return self._done(batch, batch.accepted, list(batch.quarantined), 0, t0)
        accepted = []
        quarantined = list(batch.quarantined)
        for pos, row in enumerate(batch.accepted):
            flag = flags.get(pos)
            if flag is None:
                accepted.append(row)
                continue
            asset_id, quantity, ts_ms, value = row
            quarantined.append(
                QuarantinedMeasurement(
                    batch.accepted_index[pos],
                    asset_id,
                    quantity,
                    ts_ms,
                    value,
                    flag.reason,
                    flag.evidence,
                )
            )
            self.stats.by_detector[flag.evidence.detector] += 1
        quarantined.sort(key=lambda q: q.index)
        return self._done(batch, accepted, quarantined, len(flags), t0)

    def _done(
        self,
        batch: ValidatedBatch,
        accepted: list[MeasurementRow],
        quarantined: list[QuarantinedMeasurement],
        n_flagged: int,
        t0: float,
    ) -> GatedBatch:
        site = batch.verified.batch.site_id
        for judge in self._judges:
            judge.learn(site, accepted)
        st = self.stats
        st.batches += 1
        st.measurements_judged += len(batch.accepted)
        st.measurements_quarantined += n_flagged
        st.record_latency((time.perf_counter() - t0) * 1000.0)
        return GatedBatch(batch, accepted, quarantined, self.version)

    def _unjudged_grid_points(self, batch: ValidatedBatch) -> list[Flag]:
        """Grid metering points of a grid with no loaded model: refused (default deny)."""
        assets = batch.authorized.assets
        out = []
        for pos, (asset_id, _q, _t, _v) in enumerate(batch.accepted):
            a = assets.get(asset_id)
            if a is None or a.kind not in GRID_POINT_KINDS:
                continue
            if any(j.owns(asset_id) for j in self.grid_judges):
                continue
            grid = asset_id.split(".", 1)[0]
            ev = GateEvidence(
                "gate", self.version, 1.0, 0.0, (), f"no grid model is loaded for grid {grid!r}"
            )
            out.append(Flag(pos, Reason.GATE_NO_CONTEXT, ev))
        return out
