"""Fleet state: the latest *gated* value of every (asset, quantity).

Written only by the ingest pipeline, only from a :class:`GatedBatch` (the gate's
output type), and only after the batch is durable: a measurement that the
false-data-injection gate (or validation) quarantined never reaches it. Where
ingest workers commit batches in other processes, the store follower
(:mod:`control_plane.store.follower`) applies their rows too, as
:class:`StoredGatedRows` read back from the store (the same gated rows). The
optimizer, the market gateway and dispatch read fleet state through
:class:`GatedStateView`, which this class implements; nothing else writes it.

Besides values, the state remembers when the gate last quarantined one of an
asset's measurements: until ``suspect_hold_ms`` has passed, the asset is
*suspect* and consumers must not count on it (a market bid never rests on
flexibility that an attacker may have fabricated, see ``is_suspect``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from control_plane.ingest.types import GatedRows

#: How long an asset stays suspect after the gate quarantined one of its measurements [ms].
DEFAULT_SUSPECT_HOLD_MS = 15 * 60_000


@dataclass(frozen=True, slots=True)
class GatedValue:
    """A measurement the gate accepted: sample time [ms since epoch] and value (canonical unit)."""

    ts_ms: int
    value: float


class GatedStateView(Protocol):
    """Read-only gated fleet state: what the optimizer, markets and dispatch may see."""

    def get(self, asset_id: str, quantity: int) -> GatedValue | None:
        """The latest gated value of ``quantity`` for ``asset_id``, or None if none yet."""
        ...

    def is_suspect(self, asset_id: str, now_ms: int) -> bool:
        """True while the asset has a recent gate quarantine (see the module docstring)."""
        ...


class FleetState:
    """The one implementation of :class:`GatedStateView` (written by the ingest pipeline
    and the store follower)."""

    def __init__(self, suspect_hold_ms: int = DEFAULT_SUSPECT_HOLD_MS) -> None:
        if suspect_hold_ms < 0:
            raise ValueError("suspect_hold_ms must be >= 0")
        self.suspect_hold_ms = suspect_hold_ms
        self._latest: dict[tuple[str, int], GatedValue] = {}
        self._last_gate_quarantine_ms: dict[str, int] = {}

    def apply(self, batch: GatedRows) -> None:
        """Record a committed batch's accepted rows; an older sample never overwrites a newer one.

        The gate's quarantined measurements mark their asset suspect (by sample time).
        Idempotent: applying the same rows again changes nothing.
        """
        latest = self._latest
        for asset_id, quantity, ts_ms, value in batch.accepted:
            key = (asset_id, quantity)
            current = latest.get(key)
            if current is None or ts_ms >= current.ts_ms:
                latest[key] = GatedValue(ts_ms, value)
        marks = self._last_gate_quarantine_ms
        for q in batch.gate_quarantined:
            if q.ts_ms > marks.get(q.asset_id, -1):
                marks[q.asset_id] = q.ts_ms

    def get(self, asset_id: str, quantity: int) -> GatedValue | None:
        return self._latest.get((asset_id, quantity))

    def is_suspect(self, asset_id: str, now_ms: int) -> bool:
        last = self._last_gate_quarantine_ms.get(asset_id)
        return last is not None and now_ms - last < self.suspect_hold_ms

    def last_gate_quarantine_ms(self, asset_id: str) -> int | None:
        """Sample time [ms] of the asset's latest gate-quarantined measurement, if any."""
        return self._last_gate_quarantine_ms.get(asset_id)
