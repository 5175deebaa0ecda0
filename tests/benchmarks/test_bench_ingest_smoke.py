"""Smoke test of ``gridfort bench ingest``: tiny parameters, JSON shape, integrity checks.

No timing assertions: the numbers depend on the machine; only the structure of
the result and the exactness checks (nothing lost, nothing counted twice) are
asserted.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from benchmarks import ingest
from benchmarks.baseline_pipeline import BaselinePipeline
from control_plane.ingest.pipeline import COMMITTED
from control_plane.ingest.receipts import IngestResult
from control_plane.ingest.types import Peer
from gridfort.v1 import envelope_pb2 as epb
from gridfort.v1 import telemetry_pb2 as tpb
from security.envelope import payload_digest

pytestmark = pytest.mark.timeout(60)


def _args(tmp_path: Path) -> argparse.Namespace:
    return argparse.Namespace(
        json=tmp_path / "results" / "ingest.json",
        sites=2,
        batch_size=20,
        seconds=1.0,
        warmup=0.3,
        window=4,
        load_procs=1,
        durability="fsync",
        latency_load=0.5,
        verify_every=1,
        state_dir=tmp_path,
    )


def test_tiny_run_writes_complete_json_and_loses_nothing(tmp_path: Path) -> None:
    args = _args(tmp_path)
    assert ingest.run_cli(args) == 0
    result = json.loads(args.json.read_text())
    assert {
        "benchmark",
        "machine",
        "parameters",
        "phases",
        "ratio_full_over_baseline",
        "targets",
        "integrity_ok",
        "error",
    } <= result.keys()
    assert {"cpu_count", "python", "platform"} <= result["machine"].keys()
    assert result["parameters"]["sites"] == 2 and result["parameters"]["batch_size"] == 20
    assert result["integrity_ok"] is True and result["error"] == ""
    assert [p["phase"] for p in result["phases"]] == ["1", "2", "3"]
    assert [p["mode"] for p in result["phases"]] == ["saturation", "saturation", "rate"]
    assert [p["pipeline"] for p in result["phases"]] == ["full", "baseline", "full"]
    phase_fields = {
        "throughput_mps",
        "batches_per_s",
        "sent_batches_per_s",
        "latency_ms",
        "server_cpu_us_per_measurement",
        "server_cpu_cores",
        "generator_cpu_cores",
        "other_cpu_cores",
        "integrity",
    }
    for phase in result["phases"]:
        assert phase_fields <= phase.keys()
        check = phase["integrity"]
        sent = check["batches_sent"]
        assert check["ok"] is True and check["problems"] == []
        assert sent > 0 and check["committed_receipts"] == sent
        assert check["duplicate_receipts"] == check["refused_receipts"] == 0
        assert check["missing_receipts"] == 0
        delta = check["store_delta"]
        assert delta["batches"] == delta["pipeline_committed"] == sent
        assert delta["measurements"] == delta["measurement_rows"] == sent * 20
        assert phase["measurements_committed"] == sent * 20
        assert phase["receipts_verified"] == sent
        assert {"n", "p50", "p95", "p99"} <= phase["latency_ms"].keys()
    assert "fsync" in result["ratio_full_over_baseline"]
    assert "fsync" in result["ratio_full_over_baseline_by_cpu"]
    assert isinstance(result["contended_phases"], list)
    for target in result["targets"].values():
        assert isinstance(target["met"], bool) and "target" in target and "measured" in target


class _LyingPipeline(BaselinePipeline):
    """Acknowledges every third batch as COMMITTED without storing it."""

    calls = 0

    async def ingest(self, peer: Peer, envelope: epb.SignedEnvelope) -> IngestResult:
        type(self).calls += 1
        if type(self).calls % 3:
            return await super().ingest(peer, envelope)
        batch = tpb.TelemetryBatch.FromString(envelope.payload)
        n = len(batch.measurements)
        digest = payload_digest(envelope.payload)
        return IngestResult(batch.site_id, batch.seq, COMMITTED, digest, committed=n)


def test_a_pipeline_that_loses_acknowledged_batches_fails_the_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ingest, "BaselinePipeline", _LyingPipeline)
    args = _args(tmp_path)
    args.seconds = 0.5
    assert ingest.run_cli(args) == 1
    result = json.loads(args.json.read_text())
    assert result["integrity_ok"] is False
    assert result["error"].startswith("integrity:")
    failed = [p for p in result["phases"] if not p["integrity"]["ok"]]
    assert [p["pipeline"] for p in failed] == ["baseline"]
    assert any("expected" in problem for problem in failed[0]["integrity"]["problems"])
    assert result["targets"]["throughput_mps"]["met"] is False
