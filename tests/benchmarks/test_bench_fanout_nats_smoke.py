"""Smoke test of ``gridfort bench fanout --transport nats``: 20 sites on the embedded
nats-server, every phase runs, the JSON has its shape, every site applied every
activation and every signed result came back. No timing assertions."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from benchmarks.fanout import add_arguments, run_cli

pytestmark = pytest.mark.timeout(120)

SITES = 20


def test_tiny_nats_fanout_run_writes_complete_json(tmp_path: Path) -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    out = tmp_path / "fanout_nats.json"
    args = parser.parse_args(
        [
            "--transport", "nats", "--json", str(out), "--sites", str(SITES),
            "--assets", str(4 * SITES), "--group-bytes", "100", "--activations", "2",
            "--edge-procs", "1", "--state-dir", str(tmp_path),
            "--edge-runtime-dir", str(tmp_path),
        ]
    )  # fmt: skip
    assert run_cli(args) == 0
    result = json.loads(out.read_text())
    assert result["transport"] == "nats"
    assert {"machine", "params", "limits", "activation", "ratios", "targets"} <= result.keys()
    activation = result["activation"]
    phases = activation["phases"]
    assert set(phases) == {"fanout", "one_group", "one_site", "one_site_one_asset"}
    for name, phase in phases.items():
        assert phase["complete"], (name, phase)
        assert phase["activations"] == 2
        assert phase["site_activations_missing"] == 0 and phase["entries_not_applied"] == 0
        for key in ("all_sites_verified_ms", "all_sites_applied_ms", "all_acknowledged_ms"):
            assert phase[key]["n"] == 2, (name, key)
    fanout, group = phases["fanout"], phases["one_group"]
    assert fanout["sites"] == group["sites"] == SITES
    assert fanout["site_applied_ms"]["n"] == 2 * SITES  # every site, every activation
    assert fanout["signatures_per_activation"] == SITES  # 100 B: a group per 4-asset site
    assert group["signatures_per_activation"] == 1  # one signature covers every site
    assert group["bytes_delivered_per_activation"] == SITES * group["message_bytes_per_site"]
    limits = result["limits"]
    assert 0 < limits["one_group_signed_payload_bytes"] < limits["edge_max_command_payload_bytes"]
    assert set(activation["cpu_cores"]) == {"fanout", "one_group"}
    assert activation["edge_problems"] == []
    assert activation["group_status_counts"].get("applied", 0) >= 2 * 2 * SITES
