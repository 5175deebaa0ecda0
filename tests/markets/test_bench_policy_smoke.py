"""Benchmark smoke: runs tiny, writes JSON with the expected shape. No timing assertions."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from benchmarks.policy import run_cli


def test_bench_policy_smoke(tmp_path: Path) -> None:
    out = tmp_path / "policy.json"
    args = argparse.Namespace(decisions=30, warmup=5, json=out)
    assert run_cli(args) == 0
    result = json.loads(out.read_text())
    assert (
        {"floor", "engine", "gate"} <= set(result["phases"]) <= {"floor", "engine", "gate", "opa"}
    )
    for phase in result["phases"].values():
        assert phase["decisions"] == 30
        assert phase["p50_ms"] <= phase["p99_ms"] <= phase["max_ms"]
    assert result["workload"]["allowed"] == 3
    assert set(result["engine_over_floor"]) == {"p50", "p99"}
