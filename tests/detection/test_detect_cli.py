"""``gridfort detect generate``: the handler end to end, and its one-line argument errors."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest

from control_plane.cli import detect
from detection.dataset import read_dataset
from detection.generate import PRICE_COLUMN
from detection.grid import load_grid
from detection.layout import measurement_columns


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gridfort")
    sub = parser.add_subparsers(dest="command", required=True)
    detect.register(sub)
    return parser


def _run(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    code: int = args.handler(args)
    return code


def test_generate_writes_a_labelled_dataset(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "c14.parquet"
    argv = ["detect", "generate", "--grid", "case14", "--steps", "60", "--out", str(out)]
    assert _run([*argv, "--seed", "3", "--attack-rate", "0.2", "--workers", "1"]) == 0
    cols = [*measurement_columns(load_grid("case14")), PRICE_COLUMN]
    ds = read_dataset(out, expected_columns=cols)
    assert len(ds.data) == 60 and ds.labels is not None
    assert (ds.labels["attack"] != "none").sum() > 0
    assert ds.metadata["grid"] == "case14" and ds.metadata["episodes"]
    printed = capsys.readouterr().out
    assert "wrote" in printed and "steps/s" in printed


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--steps", "0"], "--steps must be at least 1"),
        (["--steps", "5", "--attack-rate", "1.5"], "--attack-rate must be in"),
    ],
)
def test_bad_arguments_raise_one_clear_error(
    tmp_path: Path, extra: list[str], message: str
) -> None:
    argv = ["detect", "generate", "--grid", "case14", "--out", str(tmp_path / "x.parquet")]
    with pytest.raises(ValueError, match=message):
        _run([*argv, *extra])


def test_out_must_be_parquet(tmp_path: Path) -> None:
    argv = ["detect", "generate", "--grid", "case14", "--steps", "5", "--out", str(tmp_path / "x")]
    with pytest.raises(ValueError, match=r"must end in \.parquet"):
        _run(argv)


def test_unknown_grid_is_an_argument_error_in_a_subprocess(tmp_path: Path) -> None:
    code = (
        "import argparse, sys\n"
        "from control_plane.cli import detect\n"
        "p = argparse.ArgumentParser(prog='gridfort'); s = p.add_subparsers(dest='c')\n"
        "detect.register(s)\n"
        "a = p.parse_args(sys.argv[1:]); sys.exit(a.handler(a))\n"
    )
    argv = [
        "detect",
        "generate",
        "--grid",
        "case9",
        "--steps",
        "5",
        "--out",
        str(tmp_path / "x.parquet"),
    ]
    proc = subprocess.run(
        [sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 2
    assert "invalid choice: 'case9'" in proc.stderr
    assert "Traceback" not in proc.stderr
