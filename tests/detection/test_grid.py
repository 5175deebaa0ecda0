"""Grid models by name: the three grids, determinism, a clear error for unknown names."""

from __future__ import annotations

import pytest

from detection.grid import GRID_NAMES, UnknownGridError, der_buses, load_grid


@pytest.mark.parametrize(
    ("name", "n_bus", "n_line", "n_trafo"),
    [("case14", 14, 15, 5), ("case118", 118, 173, 13), ("cigre_mv", 15, 15, 2)],
)
def test_named_grids_have_their_published_size(
    name: str, n_bus: int, n_line: int, n_trafo: int
) -> None:
    net = load_grid(name)
    assert (len(net.bus), len(net.line), len(net.trafo)) == (n_bus, n_line, n_trafo)
    assert len(der_buses(net)) > 0


def test_load_grid_is_deterministic_and_fresh() -> None:
    a, b = load_grid("case14"), load_grid("case14")
    assert a is not b
    assert a.load.equals(b.load) and a.sgen.equals(b.sgen) and a.line.equals(b.line)
    a.load.loc[0, "p_mw"] = 999.0
    assert load_grid("case14").load.at[0, "p_mw"] != 999.0


def test_cigre_mv_has_pv_and_wind() -> None:
    types = set(load_grid("cigre_mv").sgen.type)
    assert {"PV", "WP"} <= types


def test_unknown_grid_is_refused_with_the_choices() -> None:
    with pytest.raises(UnknownGridError, match=r"unknown grid 'case9000'.*case14"):
        load_grid("case9000")
    assert "cigre_mv" in GRID_NAMES
