"""SunSpec register maps built from pysunspec2's definitions: offsets, codec, layout."""

from __future__ import annotations

import struct

import pytest
import sunspec2.device as ss_device
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_node.devices import sunspec_models as ssm

USED_MODELS = (1, 103, 120, 121, 123, 124, 802)
CROSS_CHECKED = (*USED_MODELS, 701, 704, 713, 213)

_INT_RANGES: dict[str, tuple[int, int]] = {
    "int16": (-0x7FFF, 0x7FFF),
    "uint16": (0, 0xFFFE),
    "count": (0, 0xFFFE),
    "enum16": (0, 0xFFFE),
    "bitfield16": (0, 0xFFFE),
    "acc16": (1, 0xFFFF),
    "sunssf": (-10, 10),
    "int32": (-0x7FFF_FFFF, 0x7FFF_FFFF),
    "uint32": (0, 0xFFFF_FFFE),
    "enum32": (0, 0xFFFF_FFFE),
    "bitfield32": (0, 0xFFFF_FFFE),
    "acc32": (1, 0xFFFF_FFFF),
    "ipaddr": (1, 0xFFFF_FFFF),
    "int64": (-(2**63) + 1, 2**63 - 1),
    "uint64": (0, 2**64 - 2),
    "acc64": (1, 2**64 - 1),
}


def _value_strategy(point: ssm.PointDef) -> st.SearchStrategy[ssm.RawValue]:
    if point.type == "pad":
        return st.none()
    if point.type == "string":
        alphabet = st.characters(min_codepoint=0x20, max_codepoint=0x7E)
        text = st.text(alphabet=alphabet, min_size=1, max_size=point.size * 2)
        return st.none() | text.filter(lambda s: not s.endswith("\0"))
    if point.type == "float32":
        return st.none() | st.floats(width=32, allow_nan=False, allow_infinity=False)
    low, high = _INT_RANGES[point.type]
    return st.none() | st.integers(low, high)


@st.composite
def model_values(draw: st.DrawFn, model_id: int) -> dict[str, ssm.RawValue]:
    model = ssm.load_model(model_id)
    return {p.name: draw(_value_strategy(p)) for p in model.points[2:]}


def _pysunspec_point(model: ss_device.Model, name: str) -> ss_device.Point:
    *groups, point = name.split(".")
    node = model
    for group in groups:
        node = node.groups[group]
    return node.points[point]


@pytest.mark.parametrize("model_id", CROSS_CHECKED)
def test_offsets_and_sizes_match_pysunspec2(model_id: int) -> None:
    ours = ssm.load_model(model_id)
    theirs = ss_device.Model(model_id=model_id)
    assert ours.block_len == theirs.len
    for point in ours.points:
        ref = _pysunspec_point(theirs, point.name)
        assert (point.offset, point.size) == (ref.offset, ref.len), point.name


def test_points_carry_type_scale_factor_and_access_from_the_definition() -> None:
    inverter, controls = ssm.load_model(103), ssm.load_model(123)
    w = inverter.point("W")
    assert (w.type, w.sf, w.units, w.mandatory, w.writable) == ("int16", "W_SF", "W", True, False)
    assert inverter.point("WH").type == "acc32"
    assert controls.point("WMaxLimPct").writable
    assert dict(controls.point("WMaxLim_Ena").symbols) == {"DISABLED": 0, "ENABLED": 1}


def test_unknown_model_and_repeating_groups_are_refused() -> None:
    with pytest.raises(ssm.SunSpecValueError, match="no SunSpec definition for model 9999"):
        ssm.load_model(9999)
    with pytest.raises(ssm.SunSpecValueError, match="repeating group"):
        ssm.load_model(160)
    with pytest.raises(ssm.SunSpecValueError, match="no point 'Nope'"):
        ssm.load_model(103).point("Nope")


@pytest.mark.parametrize("model_id", (1, 103, 124, 802, 701, 213))
@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_encode_decode_round_trip(model_id: int, data: st.DataObject) -> None:
    model = ssm.load_model(model_id)
    values = data.draw(model_values(model_id))
    regs = ssm.encode_model(model, values)
    assert len(regs) == model.block_len
    assert all(0 <= r <= 0xFFFF for r in regs)
    decoded = ssm.decode_model(model, regs)
    assert decoded.values == {"ID": model_id, "L": model.length, **values}


@pytest.mark.parametrize("model_id", (1, 103, 802, 124))
@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_pysunspec2_decodes_what_we_encode(model_id: int, data: st.DataObject) -> None:
    model = ssm.load_model(model_id)
    values = data.draw(model_values(model_id))
    regs = ssm.encode_model(model, values)
    theirs = ss_device.Model(
        model_id=model_id, model_len=model.length, data=struct.pack(f">{len(regs)}H", *regs)
    )
    assert not theirs.error_info
    for point in model.points[2:]:
        if point.type != "pad":
            assert theirs.points[point.name].value == values[point.name], point.name


@pytest.mark.parametrize(
    ("point_type", "size", "registers"),
    [
        ("int16", 1, [0x8000]),
        ("sunssf", 1, [0x8000]),
        ("uint16", 1, [0xFFFF]),
        ("enum16", 1, [0xFFFF]),
        ("bitfield16", 1, [0xFFFF]),
        ("acc16", 1, [0]),
        ("int32", 2, [0x8000, 0]),
        ("uint32", 2, [0xFFFF, 0xFFFF]),
        ("acc32", 2, [0, 0]),
        ("string", 2, [0, 0]),
        ("float32", 2, [0x7FC0, 0]),
    ],
)
def test_not_implemented_markers(point_type: str, size: int, registers: list[int]) -> None:
    point = ssm.PointDef("X", point_type, 2, size, None, None, False, False)
    assert ssm.encode_point(point, None) == registers
    assert ssm.decode_point(point, registers) is None


def test_values_that_cannot_be_encoded_are_refused() -> None:
    int16 = ssm.PointDef("W", "int16", 2, 1, "W_SF", "W", True, False)
    with pytest.raises(ssm.SunSpecValueError, match="not implemented"):
        ssm.encode_point(int16, -0x8000)
    with pytest.raises(ssm.SunSpecValueError, match="out of range"):
        ssm.encode_point(int16, 40000)
    with pytest.raises(ssm.SunSpecValueError, match="not an integer"):
        ssm.encode_point(int16, "12")
    string = ssm.PointDef("Mn", "string", 2, 2, None, None, True, False)
    with pytest.raises(ssm.SunSpecValueError, match="longer than 4 bytes"):
        ssm.encode_point(string, "abcde")
    with pytest.raises(ssm.SunSpecValueError, match="need 2 registers"):
        ssm.decode_point(string, [0x4142])


def test_decode_checks_block_identity_and_length() -> None:
    model = ssm.load_model(103)
    regs = ssm.encode_model(model, {})
    with pytest.raises(ssm.SunSpecValueError, match="need 52"):
        ssm.decode_model(model, regs[:-1])
    with pytest.raises(ssm.SunSpecValueError, match="block says ID 101"):
        ssm.decode_model(model, [101, *regs[1:]])


def test_scale_factors_are_applied_and_absurd_ones_refused() -> None:
    model = ssm.load_model(103)
    block = ssm.decode_model(model, ssm.encode_model(model, {"W": 1234, "W_SF": -1, "Hz": 5000}))
    assert block.scaled("W") == pytest.approx(123.4)
    with pytest.raises(ssm.SunSpecValueError, match="scale factor Hz_SF is not implemented"):
        block.scaled("Hz")
    with pytest.raises(ssm.SunSpecValueError, match="point VAr is not implemented"):
        block.scaled("VAr")
    absurd = ssm.decode_model(model, ssm.encode_model(model, {"W": 1, "W_SF": 11}))
    with pytest.raises(ssm.SunSpecValueError, match=r"is 11, outside -10\.\.10"):
        absurd.scaled("W")


@given(st.integers(-0x7FFF, 0x7FFF), st.integers(-10, 10))
def test_from_raw_and_to_raw_are_inverse(raw: int, sf: int) -> None:
    assert ssm.to_raw(ssm.from_raw(raw, sf), sf) == raw


def test_choose_sf_picks_the_finest_that_fits() -> None:
    assert ssm.choose_sf(7500.0, "int16", -2) == 0
    assert ssm.choose_sf(150_000.0, "int16", -2) == 1
    assert ssm.choose_sf(75.0, "uint16", -2) == -2


def _image() -> ssm.DeviceImage:
    return ssm.DeviceImage(
        [
            (ssm.load_model(1), {"Mn": "Gridfort", "Md": "Test", "SN": "1"}),
            (ssm.load_model(103), {"W": 10, "W_SF": 0}),
            (ssm.load_model(123), {"WMaxLim_Ena": 0}),
        ]
    )


def test_device_map_layout_from_base_address() -> None:
    image = _image()
    regs, base = image.registers, image.base_address
    assert base == 40000
    assert list(regs[:2]) == [0x5375, 0x6E53]
    address, seen = base + 2, []
    while regs[address - base] != ssm.END_MODEL_ID:
        model_id, length = regs[address - base], regs[address - base + 1]
        assert image.model_address(model_id) == address
        assert length == ssm.load_model(model_id).length
        seen.append(model_id)
        address += 2 + length
    assert seen == [1, 103, 123]
    assert list(regs[address - base :]) == [0xFFFF, 0]
    w_offset = ssm.load_model(103).point("W").offset
    assert image.point_address(103, "W") == image.model_address(103) + w_offset
    assert image.get(103, "W") == 10


def test_device_map_write_rules() -> None:
    image = _image()
    ena = image.point_address(123, "WMaxLim_Ena")
    assert image.is_writable(ena, 1)
    assert not image.is_writable(image.point_address(103, "W"), 1)
    last_rw = image.point_address(123, "VArPct_Ena")
    assert image.is_writable(ena, last_rw - ena + 1)
    assert not image.is_writable(last_rw, 2)  # runs into the read-only WMaxLimPct_SF
    image.write_registers(ena, [1])
    assert image.get(123, "WMaxLim_Ena") == 1
    with pytest.raises(ssm.SunSpecValueError, match="read-only"):
        image.write_registers(image.point_address(103, "W"), [5])
    with pytest.raises(ssm.SunSpecValueError, match="fixed by the layout"):
        image.set(103, "L", 3)


def test_device_map_needs_common_model_first_and_unique_models() -> None:
    with pytest.raises(ssm.SunSpecValueError, match="starts with the common model 1"):
        ssm.DeviceImage([(ssm.load_model(103), {})])
    with pytest.raises(ssm.SunSpecValueError, match="duplicate"):
        ssm.DeviceImage([(ssm.load_model(1), {}), (ssm.load_model(1), {})])
