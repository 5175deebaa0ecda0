"""The CLI and the benchmark in quick mode: JSON shape, no timing assertions."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from benchmarks import optimizer as bench
from control_plane.cli import optimize

pytestmark = pytest.mark.timeout(60)


def test_cli_synthetic_schedule(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser()
    optimize.register(parser.add_subparsers(dest="command"))
    out = tmp_path / "plan.json"
    args = parser.parse_args(
        [
            "optimize",
            "schedule",
            "--synthetic",
            "60",
            "--aggregate",
            "--time-limit-s",
            "5",
            "--out",
            str(out),
        ]
    )
    assert args.handler(args) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["violations"] == 0 and summary["assets"] == 60
    assert len(json.loads(out.read_text())["p_kw"]) == 60


def test_cli_schedule_with_afrr_writes_its_capacity(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    parser = argparse.ArgumentParser()
    optimize.register(parser.add_subparsers(dest="command"))
    out = tmp_path / "plan.json"
    argv = ["optimize", "schedule", "--synthetic", "60", "--aggregate", "--time-limit-s", "5"]
    args = parser.parse_args([*argv, "--afrr", "--out", str(out)])
    assert args.handler(args) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["violations"] == 0
    body = json.loads(out.read_text())
    n = len(body["asset_ids"])
    assert len(body["afrr_up_kw"]) == len(body["afrr_down_kw"]) > 0
    assert all(len(row) == len(body["fcr_kw"][0]) for row in body["afrr_up_kw"])
    assert len(body["p_kw"]) == n
    # without the flag no aFRR is offered and the plan carries none
    args = parser.parse_args([*argv, "--out", str(out)])
    assert args.handler(args) == 0
    capsys.readouterr()
    assert "afrr_up_kw" not in json.loads(out.read_text())


def test_benchmark_quick_mode_writes_json(tmp_path: Path) -> None:
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    args = parser.parse_args(
        [
            "--assets",
            "120",
            "--exact-assets",
            "40",
            "--time-limit-s",
            "1",
            "--json",
            str(tmp_path / "o.json"),
        ]
    )
    bench.run_cli(args)
    result = json.loads((tmp_path / "o.json").read_text())
    for key in ("assets", "wall_s", "constraint_violations", "revenue_eur", "revenue_gap_pct"):
        assert key in result
    assert result["constraint_violations"] == 0
    assert result["exact_comparison"]["assets"] == 40
