"""Recent measurements the FDI gate quarantined, with the gate's evidence, for SOC analysts.

The rows come from the telemetry store's ``quarantine`` table (durable; opened
read-only here), with the gate's evidence as the store recorded it (JSON);
rows written by a release before the evidence column carry ``evidence: null``
(the audit chain's ``gate_verdict`` records still hold it).
"""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path
from typing import Any

from gridfort.v1 import telemetry_pb2 as tpb
from security.refusals import Reason

#: The reasons only the gate gives (validation's quarantine is not the SOC's business here).
GATE_REASONS: tuple[str, ...] = (
    Reason.FDI_GRID_INCONSISTENT.value,
    Reason.FDI_TEMPORAL_INCONSISTENT.value,
    Reason.GATE_NO_CONTEXT.value,
)
#: SQLite virtual-machine steps between two deadline checks.
_PROGRESS_STEPS = 10_000


def quantity_name(quantity: int) -> str:
    """``QUANTITY_STATE_OF_CHARGE`` -> ``state_of_charge`` (the number if unknown)."""
    try:
        return str(tpb.Quantity.Name(quantity)).removeprefix("QUANTITY_").lower()  # type: ignore[arg-type]
    except ValueError:
        return str(quantity)


def unit_name(unit: int) -> str:
    """``UNIT_PCT`` -> ``pct`` (the number if unknown)."""
    try:
        return str(tpb.Unit.Name(unit)).removeprefix("UNIT_").lower()  # type: ignore[arg-type]
    except ValueError:
        return str(unit)


class QueryDeadlineError(Exception):
    """The query ran past its deadline and was interrupted."""


def recent_gate_quarantine(
    db_path: Path, *, site_id: str | None, limit: int, deadline_s: float
) -> list[dict[str, Any]]:
    """The newest ``limit`` gate-quarantined rows (of ``site_id``, if given), newest first.

    Blocking (run it in a thread). Read-only connection; a query still running
    after ``deadline_s`` [s] is interrupted (QueryDeadlineError), so a slow scan
    never outlives the request that asked for it.
    """
    if not db_path.exists():
        return []
    marks = ",".join("?" * len(GATE_REASONS))
    sql = (
        "SELECT site_id, seq, idx, asset_id, quantity, ts_ms, value, value_text, reason, evidence "
        f"FROM quarantine WHERE reason IN ({marks})"
    )
    args: list[object] = list(GATE_REASONS)
    if site_id is not None:
        sql += " AND site_id = ?"
        args.append(site_id)
    sql += " ORDER BY rowid DESC LIMIT ?"
    args.append(limit)
    deadline = time.monotonic() + deadline_s
    conn = sqlite3.connect(f"{db_path.resolve().as_uri()}?mode=ro", uri=True, timeout=deadline_s)
    try:
        conn.set_progress_handler(lambda: int(time.monotonic() > deadline), _PROGRESS_STEPS)
        try:
            rows = conn.execute(sql, args).fetchall()
        except sqlite3.OperationalError as e:
            if time.monotonic() > deadline:
                raise QueryDeadlineError("the quarantine query ran past its deadline") from e
            raise
    finally:
        conn.close()
    return [
        {
            "site_id": r[0],
            "seq": r[1],
            "index": r[2],
            "asset_id": r[3],
            "quantity": quantity_name(r[4]),
            "ts_ms": r[5],
            "value": r[6],
            "value_text": r[7],
            "reason": r[8],
            "evidence": None if r[9] is None else json.loads(r[9]),
        }
        for r in rows
    ]
