"""Smoke test of ``gridfort bench ingest --transport nats``: tiny sizes, JSON shape, integrity.

No timing assertions: only the structure of the result and its exactness checks
(every batch one COMMITTED receipt, store counts and sequences exact, the stream
empty after each phase) are asserted.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from control_plane.cli import bench

pytestmark = pytest.mark.timeout(180)


def test_tiny_nats_run_with_one_and_two_workers_writes_complete_json(tmp_path: Path) -> None:
    parser = argparse.ArgumentParser(prog="gridfort")
    bench.register(parser.add_subparsers(dest="command", required=True))
    out = tmp_path / "results" / "ingest-nats.json"
    args = parser.parse_args(
        [
            "bench", "ingest", "--transport", "nats", "--workers", "1,2",
            "--sites", "3", "--batch-size", "20", "--seconds", "0.5", "--warmup", "0.2",
            "--window", "2", "--json", str(out), "--state-dir", str(tmp_path),
        ]
    )  # fmt: skip
    assert args.handler(args) == 0
    result = json.loads(out.read_text())
    assert result["benchmark"] == "ingest-nats"
    assert result["integrity_ok"] is True and result["error"] == ""
    assert [(p["kind"], p["workers"], p["mode"]) for p in result["phases"]] == [
        ("full", 1, "saturation"),
        ("raw", 1, "saturation"),
        ("full", 2, "saturation"),
        ("full", 2, "rate"),
        ("raw", 2, "saturation"),
    ]
    for phase in result["phases"]:
        check = phase["integrity"]
        assert check["ok"] is True and check["problems"] == []
        assert phase["batches_sent"] > 0 and phase["batches_done"] == phase["batches_sent"]
        assert {"n", "p50", "p99"} <= phase["latency_ms"].keys()
        assert {"nats_server", "generator", "other"} <= phase["cpu_cores"].keys()
        if phase["kind"] == "full":
            delta = check["store_delta"]
            assert delta["batches"] == phase["batches_sent"]
            assert delta["measurement_rows"] == phase["batches_sent"] * 20
            assert phase["receipts_verified"] == phase["batches_sent"]
        else:
            assert check["consumed"] >= check["published"] == phase["batches_sent"]
    assert set(result["by_workers"]) == {"1", "2"}
    for row in result["by_workers"].values():
        assert row["full_mps"] > 0 and row["raw_nats_mps"] > 0
        assert isinstance(row["ratio_full_over_raw"], float)
    assert isinstance(result["scaling_2_over_1_workers"], float)
    assert {"p50", "p99", "at_load_mps", "workers"} <= result["latency"].keys()
    target = result["targets"]["throughput_mps"]
    assert target["target"] == 174_000 and isinstance(target["met"], bool)
    assert not list(tmp_path.glob("gridfort-bench-nats-*"))  # scratch state removed
