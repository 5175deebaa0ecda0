"""Grid-operator limits in the registry: stored, validated, and applied by the planner."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from control_plane.assets.grid_limits import GridLimits
from control_plane.assets.model import Asset, AssetKind
from control_plane.assets.registry import AssetRegistry


@pytest.fixture
def db(tmp_path: Path) -> Path:
    path = tmp_path / "registry.db"
    registry = AssetRegistry(path)
    for site in ("s1", "s2"):
        registry.add_site(site, 0)
    registry.add_assets([Asset("s1-b", "s1", AssetKind.BATTERY, 5.0, 10.0)])
    registry.close()
    return path


def test_envelopes_and_feeders_round_trip_and_replace(db: Path) -> None:
    limits = GridLimits(db)
    try:
        limits.set_site("s1", 11.0, 7.0)
        limits.set_site("s1", 12.0, 8.0)  # replaced, not added
        limits.set_feeder("f1", ["s1", "s2"], 100.0, 60.0)
        limits.set_feeder("f1", ["s2"], 90.0, 50.0)  # its sites replaced too
        (site,) = limits.sites()
        assert (site.site_id, site.import_max_kw, site.export_max_kw) == ("s1", 12.0, 8.0)
        (feeder,) = limits.feeders()
        assert feeder.site_ids == frozenset({"s2"}) and feeder.import_max_kw == 90.0
    finally:
        limits.close()


@pytest.mark.parametrize(
    ("call", "problem"),
    [
        (lambda g: g.set_site("s9", 1.0, 1.0), "not registered"),
        (lambda g: g.set_site("s1", -1.0, 1.0), "import_max_kw"),
        (lambda g: g.set_site("s1", 1.0, float("nan")), "export_max_kw"),
        (lambda g: g.set_site("bad id!", 1.0, 1.0), "must match"),
        (lambda g: g.set_feeder("f1", [], 1.0, 1.0), "at least one site"),
        (lambda g: g.set_feeder("f1", ["s1", "s9"], 1.0, 1.0), "not registered"),
    ],
)
def test_bad_limits_are_refused_and_change_nothing(db: Path, call: object, problem: str) -> None:
    limits = GridLimits(db)
    try:
        with pytest.raises(ValueError, match=problem):
            call(limits)  # type: ignore[operator]
        assert limits.sites() == () and limits.feeders() == ()
    finally:
        limits.close()


def test_the_cli_sets_limits_and_refuses_bad_ones_in_one_line(tmp_path: Path) -> None:
    state = tmp_path / "state"

    def gridfort(*argv: str) -> subprocess.CompletedProcess[str]:
        cmd = [sys.executable, "-m", "control_plane.cli.main", *argv, "--state-dir", str(state)]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)

    assert gridfort("ca", "init", "--trust-domain", "t.local").returncode == 0
    assert gridfort("site", "add", "s1", "--asset", "s1-b:battery:5:10").returncode == 0
    ok = gridfort("site", "limits", "s1", "--import-max-kw", "11", "--export-max-kw", "7")
    assert ok.returncode == 0 and "import <= 11 kW" in ok.stdout
    bad = gridfort("site", "limits", "s2", "--import-max-kw", "11", "--export-max-kw", "7")
    assert bad.returncode == 2 and bad.stderr.strip().count("\n") == 0
    assert "s2 is not registered" in bad.stderr
