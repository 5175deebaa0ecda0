"""Exactness checks of the ingest benchmark: nothing lost, refused or counted twice.

After each phase: every batch sent got exactly one COMMITTED receipt naming its
digest; the store's batch count, its sum of committed measurements AND the
physical row count of the measurements table grew by exactly what was sent; the
stored sequence numbers of each site are exactly the ones sent; the pipeline
counted no duplicate, refusal or quarantine.
"""

from __future__ import annotations

import sqlite3
from contextlib import closing
from typing import Any

from benchmarks.ingest_load import LoadReport
from control_plane.app import ControlPlane


def store_snapshot(cp: ControlPlane, site_ids: list[str]) -> dict[str, Any]:
    """Counters of the store (read back from SQLite) and of the pipeline."""
    counts = cp.store.counts(site_ids)
    db = cp.paths.telemetry_db
    with closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
        rows = int(conn.execute("SELECT COUNT(*) FROM measurements").fetchone()[0])
    stats = cp.pipeline.stats
    return {
        "batches": counts.batches,
        "measurements": counts.measurements,
        "quarantined": counts.quarantined,
        "measurement_rows": rows,
        "pipeline_committed": stats.batches_committed,
        "pipeline_duplicate": stats.batches_duplicate,
        "pipeline_refused": stats.batches_refused,
        "refusals": sum(stats.refusals.values()),
    }


def check_phase(
    cp: ControlPlane,
    before: dict[str, Any],
    after: dict[str, Any],
    reports: list[LoadReport],
    batch_size: int,
    *,
    pipeline_counters: bool = True,
) -> dict[str, Any]:
    """Every batch sent got exactly one COMMITTED receipt and the store holds exactly it.

    ``pipeline_counters`` False: the batches went through pipelines in other processes
    (NATS ingest workers), so only the store and the receipts are checked.
    """
    sites = [s for r in reports for s in r.sites]
    sent = sum(s.sent for s in sites)
    problems = [f"{s.site_id}: {p}" for s in sites for p in s.problems[:5]]
    delta = {k: after[k] - before[k] for k in before}
    expect = {
        "batches": sent,
        "measurements": sent * batch_size,
        "measurement_rows": sent * batch_size,
        "quarantined": 0,
        "pipeline_committed": sent,
        "pipeline_duplicate": 0,
        "pipeline_refused": 0,
        "refusals": 0,
    }
    if not pipeline_counters:
        for key in ("pipeline_committed", "pipeline_duplicate", "pipeline_refused", "refusals"):
            del expect[key]
    for key, want in expect.items():
        if delta[key] != want:
            problems.append(f"store/pipeline {key}: {delta[key]} (expected {want})")
    committed = sum(s.committed for s in sites)
    if committed != sent:
        problems.append(f"{committed} COMMITTED receipts for {sent} batches sent")
    store = cp.store
    for s in sites:
        if s.sent == 0:
            continue
        seqs = [q for q in store.sequences(s.site_id) if q >= s.first_seq]
        if seqs != list(range(s.first_seq, s.last_seq + 1)):
            problems.append(
                f"{s.site_id}: stored sequences are not exactly {s.first_seq}..{s.last_seq}"
            )
    return {
        "ok": not problems,
        "batches_sent": sent,
        "committed_receipts": committed,
        "duplicate_receipts": sum(s.duplicate for s in sites),
        "refused_receipts": sum(s.refused for s in sites),
        "missing_receipts": sum(s.missing for s in sites),
        "store_delta": delta,
        "problems": problems,
    }
