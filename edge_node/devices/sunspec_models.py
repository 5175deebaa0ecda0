"""SunSpec register maps as data, taken from pysunspec2's model definitions.

Nothing here hand-types a register offset: :func:`load_model` reads the model's
JSON definition shipped with pysunspec2 and computes every point's offset, size,
type and scale-factor reference from it. On top of that this module encodes and
decodes a model block to/from 16-bit registers, applies scale factors, and lays
out a whole SunSpec device map (``'SunS'`` marker, model 1, the models, end model).

Register values here are *raw*: integers as they sit in the registers (before the
scale factor), strings for string points, and ``None`` for SunSpec's "not
implemented" values (0x8000 for int16/sunssf, 0xFFFF for uint16/enum16/bitfield16,
0 for accumulators, ...). This module is pure: no I/O.
"""

from __future__ import annotations

import functools
import math
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import sunspec2.device as ss_device
import sunspec2.mdef as ss_mdef

RawValue = int | float | str | None

SUNS_MARKER: tuple[int, int] = (0x5375, 0x6E53)  # 'SunS'
END_MODEL_ID = 0xFFFF
COMMON_MODEL_ID = 1
DEFAULT_BASE_ADDRESS = 40000
BASE_ADDRESSES: tuple[int, ...] = (40000, 0, 50000)  # where the spec lets 'SunS' live
MAX_READ_REGISTERS = 125  # Modbus limit for one read-holding-registers request
SF_MIN, SF_MAX = -10, 10  # sane range of a SunSpec scale factor


class SunSpecValueError(ValueError):
    """A SunSpec value cannot be encoded, decoded or scaled. The message names the point."""


@dataclass(frozen=True, slots=True)
class _Codec:
    fmt: str  # struct format of the whole point, big-endian
    not_impl: int | None  # the raw "not implemented" value, None if the type has none


_NUMERIC: dict[str, _Codec] = {
    "int16": _Codec(">h", -0x8000),
    "sunssf": _Codec(">h", -0x8000),
    "uint16": _Codec(">H", 0xFFFF),
    "count": _Codec(">H", 0xFFFF),
    "enum16": _Codec(">H", 0xFFFF),
    "bitfield16": _Codec(">H", 0xFFFF),
    "acc16": _Codec(">H", 0),
    "pad": _Codec(">H", None),
    "int32": _Codec(">i", -0x8000_0000),
    "uint32": _Codec(">I", 0xFFFF_FFFF),
    "enum32": _Codec(">I", 0xFFFF_FFFF),
    "bitfield32": _Codec(">I", 0xFFFF_FFFF),
    "acc32": _Codec(">I", 0),
    "ipaddr": _Codec(">I", 0),
    "int64": _Codec(">q", -0x8000_0000_0000_0000),
    "uint64": _Codec(">Q", 0xFFFF_FFFF_FFFF_FFFF),
    "acc64": _Codec(">Q", 0),
}
_FLOATS: dict[str, tuple[str, bytes]] = {  # format, the not-implemented NaN bit pattern
    "float32": (">f", bytes.fromhex("7fc00000")),
    "float64": (">d", bytes.fromhex("7ff8000000000000")),
}


@dataclass(frozen=True, slots=True)
class PointDef:
    """One point of a model: where it sits and how to read it.

    ``offset`` counts registers from the model's ``ID`` register (ID is 0, L is 1).
    ``sf`` is the name of the scale-factor point in the same model, a fixed
    exponent, or None when the point is not scaled.
    """

    name: str
    type: str
    offset: int
    size: int
    sf: str | int | None
    units: str | None
    mandatory: bool
    writable: bool
    symbols: tuple[tuple[str, int], ...] = ()


@dataclass(frozen=True, slots=True)
class ModelDef:
    """A SunSpec model as a flat tuple of points (fixed groups are named ``Group.Point``)."""

    model_id: int
    name: str
    points: tuple[PointDef, ...]
    _index: Mapping[str, PointDef] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_index", {p.name: p for p in self.points})

    @property
    def block_len(self) -> int:
        """Registers of the whole block, ID and L included."""
        last = self.points[-1]
        return last.offset + last.size

    @property
    def length(self) -> int:
        """The value of the model's ``L`` register: registers after ID and L."""
        return self.block_len - 2

    def point(self, name: str) -> PointDef:
        try:
            return self._index[name]
        except KeyError:
            raise SunSpecValueError(f"model {self.model_id} has no point {name!r}") from None


_Json = Mapping[str, Any]  # one JSON object of a pysunspec2 model definition


def _point_size(pdef: _Json) -> int:
    size = pdef.get(ss_mdef.SIZE)
    if isinstance(size, int) and size > 0:
        return size
    length = ss_mdef.point_type_info.get(pdef[ss_mdef.TYPE], {}).get("len")
    if not isinstance(length, int):
        raise SunSpecValueError(f"point {pdef[ss_mdef.NAME]!r} has no size")
    return length


def _sf_ref(raw: object) -> str | int | None:
    if raw is None or isinstance(raw, int):
        return raw
    text = str(raw)
    try:
        return int(text)
    except ValueError:
        return text


def _point_def(pdef: _Json, prefix: str, offset: int) -> PointDef:
    units = pdef.get(ss_mdef.UNITS)
    return PointDef(
        name=prefix + str(pdef[ss_mdef.NAME]),
        type=str(pdef[ss_mdef.TYPE]),
        offset=offset,
        size=_point_size(pdef),
        sf=_sf_ref(pdef.get(ss_mdef.SF)),
        units=None if units is None else str(units),
        mandatory=pdef.get(ss_mdef.MANDATORY) == ss_mdef.MANDATORY_TRUE,
        writable=pdef.get(ss_mdef.ACCESS) == ss_mdef.ACCESS_RW,
        symbols=tuple((str(s["name"]), int(s["value"])) for s in pdef.get("symbols", [])),
    )


def _flatten(gdef: _Json, model_id: int, prefix: str, offset: int) -> tuple[list[PointDef], int]:
    """Points of a group and its fixed subgroups (``Group.Point``), from ``offset`` on."""
    points: list[PointDef] = []
    for pdef in gdef.get(ss_mdef.POINTS) or []:
        points.append(_point_def(pdef, prefix, offset))
        offset += points[-1].size
    for sub in gdef.get(ss_mdef.GROUPS) or []:
        name = sub[ss_mdef.NAME]
        if sub.get(ss_mdef.COUNT) is not None:
            raise SunSpecValueError(f"model {model_id}: repeating group {name!r} unsupported")
        sub_points, offset = _flatten(sub, model_id, f"{prefix}{name}.", offset)
        points.extend(sub_points)
    return points, offset


@functools.cache
def load_model(model_id: int) -> ModelDef:
    """The model definition, from pysunspec2's JSON file for ``model_id``."""
    try:
        mdef = ss_device.get_model_def(model_id, mapping=False)
    except ss_mdef.ModelDefinitionError as exc:
        raise SunSpecValueError(f"no SunSpec definition for model {model_id}") from exc
    group = mdef[ss_mdef.GROUP]
    points, _ = _flatten(group, model_id, "", 0)
    if [p.name for p in points[:2]] != ["ID", "L"]:
        raise SunSpecValueError(f"model {model_id} does not start with ID, L")
    return ModelDef(model_id=model_id, name=str(group[ss_mdef.NAME]), points=tuple(points))


# --- one point -------------------------------------------------------------------------


def _bytes_to_regs(data: bytes) -> list[int]:
    return list(struct.unpack(f">{len(data) // 2}H", data))


def _regs_to_bytes(regs: Sequence[int]) -> bytes:
    if any(not 0 <= r <= 0xFFFF for r in regs):
        raise SunSpecValueError("register value outside 0..65535")
    return struct.pack(f">{len(regs)}H", *regs)


def _encode_string(point: PointDef, value: str | None) -> bytes:
    data = b"" if value is None else value.encode("utf-8")
    if value is not None and (not data or b"\0" in data):
        raise SunSpecValueError(f"point {point.name}: string must be non-empty without NUL")
    if len(data) > point.size * 2:
        raise SunSpecValueError(f"point {point.name}: string longer than {point.size * 2} bytes")
    return data.ljust(point.size * 2, b"\0")


def _encode_number(point: PointDef, value: RawValue) -> bytes:
    if point.type in _FLOATS:
        fmt, nan = _FLOATS[point.type]
        if value is None:
            return nan
        if not isinstance(value, int | float) or math.isnan(value):
            raise SunSpecValueError(f"point {point.name}: {value!r} is not a number")
        return struct.pack(fmt, value)
    codec = _NUMERIC[point.type]
    if point.type == "pad" or (value is None and codec.not_impl is not None):
        return struct.pack(codec.fmt, 0 if point.type == "pad" else codec.not_impl)
    if not isinstance(value, int) or isinstance(value, bool):
        raise SunSpecValueError(f"point {point.name}: {value!r} is not an integer")
    if value == codec.not_impl:
        raise SunSpecValueError(f"point {point.name}: {value} is the 'not implemented' marker")
    try:
        return struct.pack(codec.fmt, value)
    except struct.error:
        raise SunSpecValueError(
            f"point {point.name}: {value} out of range for {point.type}"
        ) from None


def encode_point(point: PointDef, value: RawValue) -> list[int]:
    """Registers for one raw value; ``None`` encodes the type's "not implemented" value."""
    if point.type == "string":
        if value is not None and not isinstance(value, str):
            raise SunSpecValueError(f"point {point.name}: {value!r} is not a string")
        data = _encode_string(point, value)
    elif point.type in _NUMERIC or point.type in _FLOATS:
        data = _encode_number(point, value)
    else:
        raise SunSpecValueError(f"point {point.name}: type {point.type} unsupported")
    if len(data) != point.size * 2:
        raise SunSpecValueError(f"point {point.name}: size {point.size} does not fit {point.type}")
    return _bytes_to_regs(data)


def decode_point(point: PointDef, regs: Sequence[int]) -> RawValue:
    """The raw value of one point from its registers; ``None`` if not implemented."""
    if len(regs) != point.size:
        raise SunSpecValueError(f"point {point.name}: need {point.size} registers, got {len(regs)}")
    data = _regs_to_bytes(regs)
    if point.type == "string":
        if data[:1] == b"\0":
            return None
        return data.rstrip(b"\0").decode("utf-8", errors="replace")
    if point.type in _FLOATS:
        fmt, _nan = _FLOATS[point.type]
        number = float(struct.unpack(fmt, data)[0])
        return None if math.isnan(number) else number
    codec = _NUMERIC.get(point.type)
    if codec is None:
        raise SunSpecValueError(f"point {point.name}: type {point.type} unsupported")
    value = int(struct.unpack(codec.fmt, data)[0])
    return None if point.type == "pad" or value == codec.not_impl else value


# --- scale factors ---------------------------------------------------------------------


def from_raw(raw: int, sf: int) -> float:
    """Physical value of a raw register value with scale factor ``sf``: raw * 10**sf."""
    factor: int = 10 ** abs(sf)
    return float(raw * factor) if sf >= 0 else raw / factor


def to_raw(value: float, sf: int) -> int:
    """Nearest raw register value for a physical value with scale factor ``sf``."""
    if not math.isfinite(value):
        raise SunSpecValueError(f"{value} is not finite")
    factor: int = 10 ** abs(sf)
    return round(value / factor) if sf >= 0 else round(value * factor)


def choose_sf(max_abs: float, point_type: str, finest_sf: int = -3) -> int:
    """Smallest scale factor >= ``finest_sf`` whose raw range holds ``max_abs``."""
    fmt = _NUMERIC[point_type].fmt
    limit = {"h": 0x7FFF, "H": 0xFFFE, "i": 0x7FFF_FFFF, "I": 0xFFFF_FFFE}[fmt[-1]]
    for sf in range(finest_sf, SF_MAX + 1):
        if abs(to_raw(max_abs, sf)) <= limit:
            return sf
    raise SunSpecValueError(f"{max_abs} does not fit a {point_type} with any scale factor")


# --- whole blocks ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ModelBlock:
    """The decoded raw values of one model block."""

    model: ModelDef
    values: Mapping[str, RawValue]

    def raw(self, name: str) -> RawValue:
        self.model.point(name)
        return self.values[name]

    def scale_factor(self, name: str) -> int:
        """The exponent for ``name``; 0 for unscaled points. Rejects absurd or missing SFs."""
        ref = self.model.point(name).sf
        if ref is None:
            return 0
        sf = ref if isinstance(ref, int) else self.raw(ref)
        label = f"model {self.model.model_id} scale factor {ref}"
        if not isinstance(sf, int):
            raise SunSpecValueError(f"{label} is not implemented")
        if not SF_MIN <= sf <= SF_MAX:
            raise SunSpecValueError(f"{label} is {sf}, outside {SF_MIN}..{SF_MAX}")
        return sf

    def scaled(self, name: str) -> float:
        """The physical value of ``name`` (raw * 10**sf). Not implemented -> SunSpecValueError."""
        raw = self.raw(name)
        if raw is None:
            raise SunSpecValueError(f"model {self.model.model_id} point {name} is not implemented")
        if not isinstance(raw, int):
            raise SunSpecValueError(f"model {self.model.model_id} point {name} is not numeric")
        return from_raw(raw, self.scale_factor(name))

    def scaled_or_none(self, name: str) -> float | None:
        return None if self.raw(name) is None else self.scaled(name)


def encode_model(model: ModelDef, values: Mapping[str, RawValue]) -> list[int]:
    """Registers of a whole block (ID and L filled in); points not given are not implemented."""
    unknown = set(values) - {p.name for p in model.points}
    if unknown:
        raise SunSpecValueError(f"model {model.model_id} has no points {sorted(unknown)}")
    fixed = {"ID": model.model_id, "L": model.length}
    regs: list[int] = []
    for point in model.points:
        regs.extend(encode_point(point, fixed.get(point.name, values.get(point.name))))
    return regs


def decode_model(model: ModelDef, regs: Sequence[int]) -> ModelBlock:
    """Decode a block read from a device; checks its ID and L against the definition."""
    if len(regs) < model.block_len:
        raise SunSpecValueError(
            f"model {model.model_id}: got {len(regs)} registers, need {model.block_len}"
        )
    if regs[0] != model.model_id or regs[1] != model.length:
        raise SunSpecValueError(
            f"model {model.model_id}: block says ID {regs[0]} L {regs[1]}, "
            f"definition says ID {model.model_id} L {model.length}"
        )
    values = {p.name: decode_point(p, regs[p.offset : p.offset + p.size]) for p in model.points}
    return ModelBlock(model=model, values=values)


# --- a whole device map ----------------------------------------------------------------


class DeviceImage:
    """The register map of one SunSpec device: 'SunS', model 1, the models, end model.

    Laid out from ``base_address`` (40000 by default). Each model id appears once.
    Raw point values are read and written by model id and point name; the register
    list itself is what a Modbus server presents.
    """

    def __init__(
        self,
        models: Sequence[tuple[ModelDef, Mapping[str, RawValue]]],
        base_address: int = DEFAULT_BASE_ADDRESS,
    ) -> None:
        ids = [m.model_id for m, _ in models]
        if not ids or ids[0] != COMMON_MODEL_ID:
            raise SunSpecValueError("a SunSpec device map starts with the common model 1")
        if len(set(ids)) != len(ids):
            raise SunSpecValueError(f"duplicate model ids in {ids}")
        regs: list[int] = list(SUNS_MARKER)
        self._models: dict[int, tuple[ModelDef, int]] = {}
        for model, values in models:
            self._models[model.model_id] = (model, base_address + len(regs))
            regs.extend(encode_model(model, values))
        regs.extend([END_MODEL_ID, 0])
        if base_address + len(regs) > 0x10000:
            raise SunSpecValueError("device map runs past register 65535")
        self.base_address = base_address
        self._regs = regs

    @property
    def registers(self) -> Sequence[int]:
        """The live register list, first element at ``base_address``."""
        return self._regs

    def model_ids(self) -> tuple[int, ...]:
        return tuple(self._models)

    def model(self, model_id: int) -> ModelDef:
        return self._entry(model_id)[0]

    def model_address(self, model_id: int) -> int:
        """Address of the model's ID register."""
        return self._entry(model_id)[1]

    def point_address(self, model_id: int, name: str) -> int:
        model, address = self._entry(model_id)
        return address + model.point(name).offset

    def block(self, model_id: int) -> ModelBlock:
        model, address = self._entry(model_id)
        start = address - self.base_address
        return decode_model(model, self._regs[start : start + model.block_len])

    def get(self, model_id: int, name: str) -> RawValue:
        point, start = self._locate(model_id, name)
        return decode_point(point, self._regs[start : start + point.size])

    def set(self, model_id: int, name: str, value: RawValue) -> None:
        point, start = self._locate(model_id, name)
        if name in ("ID", "L"):
            raise SunSpecValueError(f"model {model_id}: {name} is fixed by the layout")
        self._regs[start : start + point.size] = encode_point(point, value)

    def set_scaled(self, model_id: int, name: str, value: float | None) -> None:
        """Write a physical value using the scale factor currently in the image."""
        if value is None:
            self.set(model_id, name, None)
            return
        self.set(model_id, name, to_raw(value, self.block(model_id).scale_factor(name)))

    def is_writable(self, address: int, count: int) -> bool:
        """True if every register in ``[address, address + count)`` belongs to an RW point."""
        wanted = set(range(address, address + count))
        for model, start in self._models.values():
            for p in model.points:
                if p.writable:
                    wanted -= set(range(start + p.offset, start + p.offset + p.size))
        return count > 0 and not wanted

    def write_registers(self, address: int, values: Sequence[int]) -> None:
        """Store raw registers as a Modbus write would (only RW points may be written)."""
        if not self.is_writable(address, len(values)):
            raise SunSpecValueError(
                f"registers {address}..{address + len(values) - 1} are read-only"
            )
        _regs_to_bytes(values)
        start = address - self.base_address
        self._regs[start : start + len(values)] = list(values)

    def copy(self) -> DeviceImage:
        clone = DeviceImage.__new__(DeviceImage)
        clone.base_address = self.base_address
        clone._models = dict(self._models)
        clone._regs = list(self._regs)
        return clone

    def _entry(self, model_id: int) -> tuple[ModelDef, int]:
        try:
            return self._models[model_id]
        except KeyError:
            raise SunSpecValueError(f"model {model_id} is not in this device map") from None

    def _locate(self, model_id: int, name: str) -> tuple[PointDef, int]:
        model, address = self._entry(model_id)
        point = model.point(name)
        return point, address - self.base_address + point.offset
