"""Smoke test of ``gridfort bench fanout``: tiny sizes, every part runs, the JSON has its
shape, every site applied every activation. No timing assertions."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from benchmarks.fanout import add_arguments, run_cli
from control_plane.cli.bench_fanout import register

pytestmark = pytest.mark.timeout(120)


def test_tiny_fanout_run_writes_complete_json(tmp_path: Path) -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    out = tmp_path / "fanout.json"
    args = parser.parse_args(
        [
            "--json", str(out), "--sites", "3", "--assets", "12", "--activations", "2",
            "--edge-procs", "1", "--baseline-sites", "2", "--baseline-activations", "1",
            "--ffr-events", "3", "--ffr-poll-ms", "10", "--state-dir", str(tmp_path),
            "--edge-runtime-dir", str(tmp_path),
        ]
    )  # fmt: skip
    assert run_cli(args) == 0
    result = json.loads(out.read_text())
    assert {"machine", "params", "ffr", "activation", "ratios", "targets"} <= result.keys()
    ffr = result["ffr"]
    assert ffr["events"] == 3 and ffr["measured"] + ffr["missed"] == 3
    assert ffr["missed"] == 0, ffr
    phases = result["activation"]["phases"]
    assert set(phases) == {
        "fanout", "afrr_product", "one_site", "group_baseline_sites", "per_asset_signing"
    }  # fmt: skip
    for name, phase in phases.items():
        assert phase["complete"], (name, phase)
        assert phase["entries_not_applied"] == 0
    assert phases["fanout"]["sites"] == 3 and phases["fanout"]["activations"] == 2
    # the product's aFRR path reaches every site, one signature per group as the fan-out
    assert phases["afrr_product"]["sites"] == 3 and phases["afrr_product"]["activations"] == 2
    assert result["targets"]["afrr_product_met"] in (True, False)
    assert phases["per_asset_signing"]["signatures_per_activation"] == 8  # 2 sites x 4 assets
    assert phases["group_baseline_sites"]["signatures_per_activation"] == 1
    assert result["activation"]["edge_problems"] == []
    assert set(result["ratios"]) >= {"fanout_vs_one_site_p50", "per_asset_vs_group_p50"}


def test_register_adds_the_fanout_subcommand() -> None:
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="bench_command"))
    args = parser.parse_args(["fanout", "--sites", "5", "--assets", "50", "--skip-ffr"])
    assert (args.sites, args.assets, args.skip_ffr) == (5, 50, True)
    assert callable(args.handler)
