"""Stage 5 seam: the false-data-injection gate sits between validate and commit.

The implementation is :class:`control_plane.gate.gate.FdiGate`; the pipeline only
needs this protocol. A gate may only move measurements from accepted to
quarantine (with evidence), never add or change one.
"""

from __future__ import annotations

from typing import Protocol

from control_plane.ingest.types import GatedBatch, ValidatedBatch


class Gate(Protocol):
    #: the judges and model versions that decide (recorded with every verdict)
    version: str

    def judge(self, batch: ValidatedBatch) -> GatedBatch:
        """Every measurement of ``batch`` judged; falsified ones moved to quarantine."""
        ...
