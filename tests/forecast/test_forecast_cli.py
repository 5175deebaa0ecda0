"""``gridfort forecast``: generate and eval in a subprocess, and one-line argument errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from control_plane.forecast.dataset import read_history

ROOT = Path(__file__).resolve().parents[2]


def _gridfort(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "control_plane.cli.main", *argv],
        capture_output=True,
        text=True,
        timeout=100,
        cwd=ROOT,
        check=False,
    )


def test_generate_then_eval_from_the_file(tmp_path: Path) -> None:
    out = tmp_path / "h.parquet"
    r = _gridfort("forecast", "generate", "--days", "40", "--out", str(out), "--seed", "2")
    assert r.returncode == 0, r.stderr
    assert "wrote" in r.stdout
    frame, _site, meta = read_history(out)
    assert len(frame) == 40 * 96 and meta["seed"] == 2
    js = tmp_path / "card.json"
    r = _gridfort("forecast", "eval", "--data", str(out), "--max-epochs", "2", "--json", str(js))
    assert r.returncode == 0, r.stderr
    assert "persistence" in r.stdout and "smart persistence" in r.stdout
    assert "training pv" in r.stderr  # progress goes to stderr
    card = json.loads(js.read_text())
    assert set(card["targets"]) == {"load", "pv", "price"}
    assert card["targets"]["pv"]["model"]["coverage"] is not None


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["generate", "--days", "-3", "--out", "x.parquet"], "--days must be within"),
        (["generate", "--days", "3", "--out", "/nonexistent/dir/x.parquet"], "cannot write"),
        (["generate", "--days", "3", "--out", "x.csv"], "must end in .parquet"),
        (["eval", "--days", "5"], "--days must be within"),
        (["eval", "--days", "30", "--json", "/nonexistent/dir/c.json"], "cannot write"),
        (["eval", "--data", "/nonexistent/h.parquet"], "not a readable Parquet"),
    ],
)
def test_bad_input_exits_2_with_one_line(argv: list[str], message: str) -> None:
    r = _gridfort("forecast", *argv)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and lines[0].startswith("gridfort: error:")
    assert "Traceback" not in r.stderr
