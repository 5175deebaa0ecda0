"""``gridfort detect score``: verdict tables from the shipped model, and hostile inputs refused.

Every refusal must be one clear line on stderr with exit status 2 and no traceback.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from control_plane.cli.main import main
from detection.attacks import AttackMagnitudes, inject_attacks
from detection.generate import PRICE_COLUMN, GeneratedSeries, NoiseModel, generate_series
from detection.models.detector import MIN_HISTORY_ROWS
from detection.models.train import slice_series

GRID = "case118"
N_INPUT = 64


N_HISTORY = 100  # case118 histories here are only refused, never adapted to


@pytest.fixture(scope="module")
def series() -> GeneratedSeries:
    return generate_series(GRID, N_HISTORY + N_INPUT, seed=41, workers=2)


@pytest.fixture(scope="module")
def frames(series: GeneratedSeries) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(a short history, input with attacks, labels of the input)."""
    history = slice_series(series, 0, N_HISTORY).to_frame()
    part = slice_series(series, N_HISTORY, N_HISTORY + N_INPUT)
    att = inject_attacks(part, rate=0.4, seed=5, kinds=("scaling", "random"))
    return history, att.data, att.labels


def _write(frame: pd.DataFrame, path: Path) -> Path:
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), path)
    return path


@pytest.fixture
def paths(tmp_path: Path, frames) -> tuple[Path, Path, Path]:
    history, data, _ = frames
    return (
        _write(data, tmp_path / "in.parquet"),
        _write(history, tmp_path / "clean.parquet"),
        tmp_path / "out" / "verdicts.parquet",
    )


def _score(inp: Path, out: Path, history: Path | None = None, *extra: str) -> int:
    argv = ["detect", "score", "--grid", GRID, "--input", str(inp), "--output", str(out)]
    if history is not None:
        argv += ["--history", str(history)]
    return main([*argv, *extra])


def test_verdicts_keep_rows_order_and_columns(paths, frames) -> None:
    inp, _, out = paths
    _, data, _ = frames
    assert _score(inp, out) == 0
    verdicts = pd.read_parquet(out)
    measured = [c for c in data.columns if c != "t"]
    assert list(verdicts.columns) == ["t", "score", "attacked", *measured]
    assert len(verdicts) == len(data)
    np.testing.assert_array_equal(verdicts["t"].to_numpy(), data["t"].to_numpy())
    assert verdicts["score"].dtype == np.float64
    assert all(verdicts[c].dtype == np.bool_ for c in ["attacked", *measured])
    assert np.isfinite(verdicts["score"]).all()
    # a measurement is only judged falsified in a row judged attacked
    cells = verdicts[measured].to_numpy()
    assert not cells[~verdicts["attacked"].to_numpy()].any()


@pytest.fixture(scope="module")
def small_grid() -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """A week of clean cigre_mv history (another seed and noisier meters than training),
    then rows with obvious injections: (history, input, labels)."""
    noise = NoiseModel(vm_rel=0.003, power_rel=0.013)
    s = generate_series("cigre_mv", MIN_HISTORY_ROWS + N_INPUT, seed=43, noise=noise, workers=2)
    part = slice_series(s, MIN_HISTORY_ROWS, MIN_HISTORY_ROWS + N_INPUT)
    obvious = AttackMagnitudes(random_sigma=(8.0, 15.0), scaling=(0.3, 0.6))
    att = inject_attacks(part, rate=0.4, seed=5, kinds=("scaling", "random"), magnitudes=obvious)
    return slice_series(s, 0, MIN_HISTORY_ROWS).to_frame(), att.data, att.labels


def test_history_adaptation_catches_obvious_injections(tmp_path, small_grid, capsys) -> None:
    history, data, labels = small_grid
    inp, hist = _write(data, tmp_path / "in.parquet"), _write(history, tmp_path / "h.parquet")
    out = tmp_path / "v.parquet"
    argv = ["detect", "score", "--grid", "cigre_mv", "--input", str(inp), "--output", str(out)]
    assert main([*argv, "--history", str(hist)]) == 0
    assert "adapted to history" in capsys.readouterr().out
    verdicts = pd.read_parquet(out)
    attacked = labels["attack"].to_numpy() != "none"
    flagged = verdicts["attacked"].to_numpy()
    assert attacked.sum() >= 10
    assert flagged[attacked].mean() >= 0.8
    assert flagged[~attacked].mean() <= 0.2


RAMP_ELEMENT = "trafo0"
RAMP_START, RAMP_ROWS = 100, 64


@pytest.fixture(scope="module")
def ramp_runs(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[pd.DataFrame, dict[str, pd.DataFrame], list[str], dict[str, object]]:
    """A week of clean cigre_mv history, then 256 input rows with one slow ramp on the
    (p, q) pair of :data:`RAMP_ELEMENT` (up to 8 noise std over 64 rows), scored with
    ``--history`` with and without the physics stage: (input, {"physics", "deep"}
    verdicts, the ramp's columns, the metadata of the physics run)."""
    from detection.dataset import read_table
    from detection.models.registry import load_shipped_model

    n_input = 256
    noise = NoiseModel(vm_rel=0.003, power_rel=0.013)
    s = generate_series("cigre_mv", MIN_HISTORY_ROWS + n_input, seed=43, noise=noise, workers=2)
    layout = load_shipped_model("cigre_mv").layout
    cols = [
        k
        for k, m in enumerate(layout.measurements)
        if f"{m.element_type}{m.element}" == RAMP_ELEMENT and not m.is_voltage
    ]
    assert len(cols) == 2
    names = [layout.columns[k] for k in cols]
    data = slice_series(s, MIN_HISTORY_ROWS, MIN_HISTORY_ROWS + n_input).to_frame()
    ramp = np.arange(1, RAMP_ROWS + 1) / RAMP_ROWS * 8.0
    for sign, k, name in zip((1.0, -1.0), cols, names, strict=True):
        rows = slice(RAMP_START, RAMP_START + RAMP_ROWS - 1)  # .loc: inclusive
        data.loc[rows, name] += sign * ramp * s.std[k]
    d = tmp_path_factory.mktemp("ramp")
    inp = _write(data, d / "in.parquet")
    hist = _write(slice_series(s, 0, MIN_HISTORY_ROWS).to_frame(), d / "h.parquet")
    argv = ["detect", "score", "--grid", "cigre_mv", "--input", str(inp), "--history", str(hist)]
    out: dict[str, pd.DataFrame] = {}
    for name, extra in (("physics", []), ("deep", ["--no-physics"])):
        assert main([*argv, "--output", str(d / f"{name}.parquet"), *extra]) == 0
        out[name] = pd.read_parquet(d / f"{name}.parquet")
    _, meta = read_table(d / "physics.parquet")
    return data, out, names, meta


def _ramp_mask(n: int) -> np.ndarray:
    mask = np.zeros(n, dtype=bool)
    mask[RAMP_START : RAMP_START + RAMP_ROWS] = True
    return mask


def test_history_scoring_with_the_physics_stage_flags_more_of_a_slow_ramp(ramp_runs) -> None:
    data, out, names, _ = ramp_runs
    ramp = _ramp_mask(len(data))
    with_physics = out["physics"]["attacked"].to_numpy()
    deep = out["deep"]["attacked"].to_numpy()
    assert with_physics[ramp].sum() > deep[ramp].sum() + 5
    assert with_physics[ramp].mean() > 0.5
    # the rows only the physics stage flagged name the ramp's element
    alone = ramp & with_physics & ~deep
    assert alone.any()
    cells = out["physics"].loc[alone, names].to_numpy()
    assert cells.all(axis=1).mean() >= 0.9


def test_history_scoring_with_the_physics_stage_keeps_clean_flags_rare(ramp_runs) -> None:
    data, out, _, meta = ramp_runs
    clean = ~_ramp_mask(len(data))
    assert out["physics"]["attacked"].to_numpy()[clean].mean() <= 0.02
    # the target is split between the deep detector and the physics stage
    assert meta["physics_ramp_stage"] is True
    parts = meta["deep_target_fpr"] + meta["physics_target_fpr"]
    assert parts == pytest.approx(meta["target_fpr"])


def test_history_scoring_with_the_physics_stage_keeps_the_table_contract(ramp_runs) -> None:
    data, out, _, _ = ramp_runs
    v = out["physics"]
    measured = [c for c in data.columns if c != "t"]
    assert list(v.columns) == ["t", "score", "attacked", *measured]
    np.testing.assert_array_equal(v["t"].to_numpy(), data["t"].to_numpy())
    assert all(v[c].dtype == np.bool_ for c in ["attacked", *measured])
    assert np.isfinite(v["score"]).all()
    assert not v[measured].to_numpy()[~v["attacked"].to_numpy()].any()


def test_no_physics_is_the_deep_detector_adapted_at_the_whole_target(tmp_path, small_grid):
    from detection.models.detector import adapt, judge
    from detection.models.registry import load_shipped_model
    from detection.score_frame import measurement_matrix, verdict_frame

    history, data, _ = small_grid
    inp, hist = _write(data, tmp_path / "in.parquet"), _write(history, tmp_path / "h.parquet")
    out = tmp_path / "v.parquet"
    argv = ["detect", "score", "--grid", "cigre_mv", "--input", str(inp), "--output", str(out)]
    assert main([*argv, "--history", str(hist), "--no-physics"]) == 0
    model = load_shipped_model("cigre_mv")
    table = measurement_matrix(data, model.layout)
    adapted = adapt(model, measurement_matrix(history, model.layout).x)
    j = judge(adapted, table.x)
    expected = verdict_frame(table, model.layout, j.rows, j.attacked, j.flagged)
    pd.testing.assert_frame_equal(pd.read_parquet(out), expected)


def test_a_physics_stage_that_cannot_be_fitted_is_an_error(
    tmp_path, small_grid, capsys, monkeypatch
) -> None:
    import detection.models.deep_physics as deep_physics

    def no_jacobian(grid: str, *args: object, **kwargs: object) -> None:
        raise ValueError(f"no measurement Jacobian for grid {grid!r}: test")

    monkeypatch.setattr(deep_physics, "adapt", lambda model, x, target_fpr: model)
    monkeypatch.setattr(deep_physics, "fit_physics_ramp", no_jacobian)
    history, data, _ = small_grid
    inp, hist = _write(data, tmp_path / "in.parquet"), _write(history, tmp_path / "h.parquet")
    out = tmp_path / "v.parquet"
    argv = ["detect", "score", "--grid", "cigre_mv", "--input", str(inp), "--output", str(out)]
    code = main([*argv, "--history", str(hist)])
    _refused(capsys, code, "physics ramp stage: no measurement Jacobian")
    assert not out.exists()


def test_column_order_of_the_input_does_not_change_the_verdicts(tmp_path, paths, frames) -> None:
    inp, _, out = paths
    _, data, _ = frames
    cols = [c for c in data.columns if c != "t"]
    shuffled = data[["t", *np.random.default_rng(0).permutation(cols)]]
    assert _score(inp, out) == 0
    assert _score(_write(shuffled, tmp_path / "s.parquet"), tmp_path / "s_out.parquet") == 0
    a, b = pd.read_parquet(out), pd.read_parquet(tmp_path / "s_out.parquet")
    assert list(b.columns)[3:] == list(shuffled.columns)[1:]
    pd.testing.assert_frame_equal(a[b.columns], b)


def test_input_without_the_price_column_is_accepted(tmp_path, paths, frames) -> None:
    _, _, out = paths
    _, data, _ = frames
    inp = _write(data.drop(columns=[PRICE_COLUMN]), tmp_path / "np.parquet")
    assert _score(inp, out) == 0
    assert PRICE_COLUMN not in pd.read_parquet(out).columns


def _refused(capsys, code: int, *needles: str) -> str:
    err = capsys.readouterr().err
    assert code == 2, err
    lines = [ln for ln in err.splitlines() if ln.startswith("gridfort: error:")]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


def _hostile(frame: pd.DataFrame, case: str) -> pd.DataFrame:
    f = frame.copy()
    if case == "missing":
        return f.drop(columns=["line7.p_from_mw"])
    if case == "unknown":
        f["bus9999.vm_pu"] = 1.0
        return f
    if case == "nan":
        f.loc[5, "bus3.p_mw"] = np.nan
        return f
    if case == "inf":
        f.loc[2, "line0.q_from_mvar"] = -np.inf
        return f
    if case == "string":
        f["bus1.vm_pu"] = f["bus1.vm_pu"].astype(str)
        return f
    if case == "integer":
        f["bus2.p_mw"] = f["bus2.p_mw"].round().astype(np.int64)
        return f
    if case == "no_t":
        return f.drop(columns=["t"])
    if case == "float_t":
        f["t"] = f["t"].astype(np.float64)
        return f
    if case == "unsorted_t":
        f.loc[10, "t"] = 0
        return f
    if case == "empty":
        return f.iloc[:0]
    raise AssertionError(case)


@pytest.mark.parametrize(
    ("case", "needles"),
    [
        ("missing", ["missing measurement column", "line7.p_from_mw"]),
        ("unknown", ["unknown column", "bus9999.vm_pu"]),
        ("nan", ["NaN", "bus3.p_mw", "row 5"]),
        ("inf", ["infinite", "line0.q_from_mvar", "row 2"]),
        ("string", ["bus1.vm_pu", "must be floating point"]),
        ("integer", ["bus2.p_mw", "must be floating point"]),
        ("no_t", ["missing column 't'"]),
        ("float_t", ["column 't' must be integer"]),
        ("unsorted_t", ["not strictly increasing"]),
        ("empty", ["no rows"]),
    ],
)
def test_hostile_input_is_refused_with_one_clear_line(
    tmp_path, frames, capsys, case: str, needles: list[str]
) -> None:
    _, data, _ = frames
    inp = _write(_hostile(data, case), tmp_path / "bad.parquet")
    line = _refused(capsys, _score(inp, tmp_path / "o.parquet"), *needles)
    assert str(inp) in line
    assert not (tmp_path / "o.parquet").exists()


def test_hostile_history_is_refused_naming_the_history_file(tmp_path, paths, frames, capsys):
    inp, short, out = paths
    history, _, _ = frames
    bad = _write(_hostile(history, "nan"), tmp_path / "h.parquet")
    _refused(capsys, _score(inp, out, bad), str(bad), "NaN")
    _refused(capsys, _score(inp, out, short), f"history has {N_HISTORY} rows")
    assert N_HISTORY < MIN_HISTORY_ROWS


def test_files_that_are_not_tables_are_refused(tmp_path, paths, capsys) -> None:
    inp, _, out = paths
    text = tmp_path / "text.parquet"
    text.write_bytes(b"t,bus0.vm_pu\n0,1.0\n")
    _refused(capsys, _score(text, out), "not a readable Parquet file")
    cut = tmp_path / "cut.parquet"
    cut.write_bytes(inp.read_bytes()[:300])
    _refused(capsys, _score(cut, out), "not a readable Parquet file")
    _refused(capsys, _score(tmp_path / "nope.parquet", out), "no such file")


def test_duplicate_column_names_are_refused(tmp_path, frames, capsys) -> None:
    _, data, _ = frames
    table = pa.Table.from_pandas(data, preserve_index=False)
    table = table.append_column("bus0.vm_pu", table.column("bus0.vm_pu"))
    path = tmp_path / "dup.parquet"
    pq.write_table(table, path)
    _refused(capsys, _score(path, tmp_path / "o.parquet"), "duplicate column", "bus0.vm_pu")


def test_bad_paths_and_flags_are_refused(tmp_path, paths, capsys) -> None:
    inp, hist, out = paths
    _refused(capsys, _score(inp, inp), "must not overwrite")
    _refused(capsys, _score(inp, tmp_path / "o.csv"), "--output must end in .parquet")
    _refused(capsys, _score(inp, out, None, "--target-fpr", "0.01"), "needs --history")
    _refused(capsys, _score(inp, out, None, "--no-physics"), "--no-physics needs --history")
    _refused(capsys, _score(inp, out, hist, "--target-fpr", "2"), "--target-fpr must be in")


def test_grid_without_a_shipped_model_is_refused(tmp_path, paths, capsys) -> None:
    inp, _, out = paths
    code = main(["detect", "score", "--grid", "case14", "--input", str(inp), "--output", str(out)])
    _refused(capsys, code, "no shipped model")


def test_refusal_in_a_real_process_prints_no_traceback(tmp_path, frames) -> None:
    _, data, _ = frames
    inp = _write(_hostile(data, "missing"), tmp_path / "bad.parquet")
    argv = ["detect", "score", "--grid", GRID, "--input", str(inp), "--output", "o.parquet"]
    proc = subprocess.run(
        [sys.executable, "-m", "control_plane.cli.main", *argv],
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
        cwd=tmp_path,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0, proc.stderr
    assert "missing measurement column" in proc.stderr and "Traceback" not in proc.stderr
