"""Engineering values <-> Modbus registers for one point address.

Used by the adapter and by the virtual building's Modbus face, so both sides agree on one
encoding; the tests pin it to known register images, so a mistake cannot hide by being symmetric.
"""

from __future__ import annotations

import math
import struct
from functools import cache, lru_cache

from ..models.point import ModbusAddress

__all__ = ["decode", "encode", "to_raw"]

_FMT = {
    "int16": "h", "uint16": "H", "int32": "i", "uint32": "I", "float32": "f", "float64": "d",
}
_INT_RANGE = {
    "int16": (-(2**15), 2**15 - 1),
    "uint16": (0, 2**16 - 1),
    "int32": (-(2**31), 2**31 - 1),
    "uint32": (0, 2**32 - 1),
}


def to_raw(addr: ModbusAddress, value: float | int | bool, *, saturate: bool = False) -> int | float | bool:
    """The raw number a value becomes after undoing scale and offset. Raises ValueError if it
    cannot be represented by the address's type, unless ``saturate``: then integers clamp to
    the type's range and floats pass as they are, as a device's own register would behave."""
    if addr.type == "bool":
        return bool(value)
    raw = (float(value) - addr.offset) / addr.scale
    if addr.type in _INT_RANGE:
        if not math.isfinite(raw):
            raise ValueError(f"{value!r} is not a finite number")
        lo, hi = _INT_RANGE[addr.type]
        raw_int = round(raw)
        if saturate:
            return min(hi, max(lo, raw_int))
        if not lo <= raw_int <= hi:
            raise ValueError(f"{value!r} needs raw {raw_int}, outside {addr.type} range {lo}..{hi}")
        return raw_int
    if saturate:
        return raw
    if not math.isfinite(raw):
        raise ValueError(f"{value!r} is not a finite number")
    if addr.type == "float32" and abs(raw) > 3.4028234e38:
        raise ValueError(f"{value!r} does not fit a float32")
    return raw


def encode(addr: ModbusAddress, value: float | int | bool, *, saturate: bool = False) -> list[int]:
    """Registers (16-bit ints) for a value, in wire order. Bool points give ``[0]`` or ``[1]``."""
    raw = to_raw(addr, value, saturate=saturate)
    if addr.type == "bool":
        return [1 if raw else 0]
    try:
        data = struct.pack(">" + _FMT[addr.type], raw)
    except (struct.error, OverflowError) as err:  # a float beyond float32, when saturating
        raise ValueError(f"{value!r} does not fit a {addr.type}") from err
    words = [data[i : i + 2] for i in range(0, len(data), 2)]
    if addr.word_order == "little":
        words.reverse()
    if addr.byte_order == "little":
        words = [w[::-1] for w in words]
    return [int.from_bytes(w, "big") for w in words]


def decode(addr: ModbusAddress, registers: list[int] | list[bool]) -> float | int | bool:
    """The engineering value of a point from its registers (or its single bit)."""
    if addr.type == "bool":
        return bool(registers[0])
    words, value = _structs(addr.type)
    regs = registers[: addr.count]
    if addr.word_order == "little":
        regs = regs[::-1]
    data = words.pack(*regs)
    if addr.byte_order == "little":
        swapped = bytearray(data)
        swapped[0::2], swapped[1::2] = data[1::2], data[0::2]
        data = bytes(swapped)
    (raw,) = value.unpack(data)
    if addr.scale == 1.0 and addr.offset == 0.0:
        return raw
    scaled = raw * addr.scale + addr.offset
    # Scaled integers carry only as many decimals as the scale; round away float noise
    # (0.1 * 215 = 21.500000000000004) so readings print and compare as the device meant.
    if addr.type in _INT_RANGE:
        scaled = round(scaled, _decimals(addr.scale))
    return scaled


# decode() runs once per point per poll: keep its per-call work to table look-ups.
@cache
def _structs(type_: str) -> tuple[struct.Struct, struct.Struct]:
    value = struct.Struct(">" + _FMT[type_])
    return struct.Struct(f">{value.size // 2}H"), value


@lru_cache(maxsize=256)
def _decimals(scale: float) -> int:
    return max(0, -math.floor(math.log10(abs(scale)))) + 2
