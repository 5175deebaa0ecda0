"""What a judge of the false-data-injection gate is, and what it returns.

A judge sees one validated batch and returns the measurements it finds falsified
(by their position in ``ValidatedBatch.accepted``) with the reason and evidence.
After the gate has combined every judge's verdicts, each judge ``learn``s from
the rows that were accepted, so that a falsified value never becomes the
reference for the next one. Judges keep per-asset state in memory; they are
called from one event loop, never concurrently.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from control_plane.ingest.types import GateEvidence, MeasurementRow, ValidatedBatch
from security.refusals import Reason


@dataclass(frozen=True, slots=True)
class Flag:
    """One measurement a judge finds falsified."""

    position: int  # index into ValidatedBatch.accepted
    reason: Reason
    evidence: GateEvidence


class Judge(Protocol):
    #: stable short name, e.g. "temporal", "grid:cigre_mv"
    name: str
    #: the rule set's or signed model's version (goes into every verdict)
    version: str

    def judge(self, batch: ValidatedBatch) -> list[Flag]:
        """The falsified measurements of ``batch`` (positions into ``batch.accepted``)."""
        ...

    def learn(self, site_id: str, accepted: list[MeasurementRow]) -> None:
        """Take the rows the gate accepted as the new reference (called after ``judge``)."""
        ...
