"""The fixed measurement layout: names, order, values and metadata."""

from __future__ import annotations

import numpy as np

from detection.grid import load_grid, run_power_flow
from detection.layout import build_layout, measurement_columns, snapshot_vector


def test_case14_columns_names_and_order() -> None:
    net = load_grid("case14")
    cols = measurement_columns(net)
    assert len(cols) == 14 * 3 + 15 * 2 + 5 * 2
    assert cols[:6] == [
        "bus0.vm_pu",
        "bus0.p_mw",
        "bus0.q_mvar",
        "bus1.vm_pu",
        "bus1.p_mw",
        "bus1.q_mvar",
    ]
    assert cols[42:44] == ["line0.p_from_mw", "line0.q_from_mvar"]
    assert cols[72:74] == ["trafo0.p_hv_mw", "trafo0.q_hv_mvar"]
    assert cols[-1] == "trafo4.q_hv_mvar"
    assert len(set(cols)) == len(cols)


def test_snapshot_vector_reads_the_result_tables() -> None:
    net = load_grid("case14")
    run_power_flow(net)
    layout = build_layout(net)
    z = snapshot_vector(net, layout)
    assert z.shape == (len(layout),)
    assert z[layout.position("bus3.vm_pu")] == net.res_bus.at[3, "vm_pu"]
    assert z[layout.position("bus3.q_mvar")] == net.res_bus.at[3, "q_mvar"]
    assert z[layout.position("line7.p_from_mw")] == net.res_line.at[7, "p_from_mw"]
    assert z[layout.position("trafo2.q_hv_mvar")] == net.res_trafo.at[2, "q_hv_mvar"]
    assert np.all(np.isfinite(z))


def test_metadata_names_the_buses_each_measurement_touches() -> None:
    net = load_grid("case14")
    layout = build_layout(net)
    line = layout.measurements[layout.position("line0.p_from_mw")]
    assert (line.element_type, line.element, line.quantity) == ("line", 0, "p_from_mw")
    assert line.buses == (int(net.line.at[0, "from_bus"]), int(net.line.at[0, "to_bus"]))
    trafo = layout.measurements[layout.position("trafo0.p_hv_mw")]
    assert trafo.buses == (int(net.trafo.at[0, "hv_bus"]), int(net.trafo.at[0, "lv_bus"]))
    bus = layout.measurements[layout.position("bus5.p_mw")]
    assert bus.buses == (5,) and bus.is_active_power and not bus.is_voltage
    touching = layout.mask_touching({5})
    assert touching[layout.position("bus5.vm_pu")]
    assert not touching[layout.position("bus0.vm_pu")]
    assert list(layout.positions_of("bus", "vm_pu")) == [3 * i for i in range(14)]


def test_case118_layout_size() -> None:
    assert len(measurement_columns(load_grid("case118"))) == 118 * 3 + 173 * 2 + 13 * 2
