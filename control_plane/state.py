"""Fleet state: the latest committed value of every (asset, quantity).

Written only by the ingest pipeline after a durable commit ("accepted -> state").
Until the detection gate (issue #4) is installed these values are *validated*
but not *gated*; consumers that need gated data must wait for the gate's type.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from control_plane.ingest.types import MeasurementRow


@dataclass(frozen=True, slots=True)
class LatestValue:
    ts_ms: int
    value: float


class FleetState:
    def __init__(self) -> None:
        self._latest: dict[tuple[str, int], LatestValue] = {}

    def apply(self, rows: Iterable[MeasurementRow]) -> None:
        """Record committed rows; an older sample never overwrites a newer one."""
        latest = self._latest
        for asset_id, quantity, ts_ms, value in rows:
            key = (asset_id, quantity)
            current = latest.get(key)
            if current is None or ts_ms >= current.ts_ms:
                latest[key] = LatestValue(ts_ms, value)

    def get(self, asset_id: str, quantity: int) -> LatestValue | None:
        return self._latest.get((asset_id, quantity))
