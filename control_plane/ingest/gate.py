"""Stage 5 seam: the false-data-injection gate (issue #4) sits between validate and commit.

No detector is installed yet, and nothing here pretends to be one: with
``gate=None`` the pipeline commits validated measurements with no verdict, and
the summary says "gate: not installed". A real gate implements :class:`Gate`,
returning the batch with suspicious measurements moved to ``quarantined``.
"""

from __future__ import annotations

from typing import Protocol

from control_plane.ingest.types import ValidatedBatch


class Gate(Protocol):
    def judge(self, batch: ValidatedBatch) -> ValidatedBatch:
        """Return the batch with every measurement judged; may only move rows to quarantine."""
        ...
