"""Value helpers the protocol code shares (no I/O, no protocol library)."""

from __future__ import annotations

import math
import struct

__all__ = ["f32", "same_f32"]


def f32(x: float) -> float:
    """The shortest decimal that is the same float32 as ``x`` (``x`` itself if none is shorter).

    BACnet Reals and OPC-UA Floats are float32 on the wire: a device's 21.2 arrives as
    21.200000762939453. Reading it back as 21.2 loses nothing (it is the same float32) and is
    what the device, and the person who set it, meant.
    """
    x = float(x)
    if not math.isfinite(x):
        return x
    try:
        target = struct.pack("<f", x)
    except OverflowError:  # not a float32 at all: nothing to clean up
        return x
    for digits in range(1, 10):  # 9 significant digits always round-trip a float32
        y = float(f"{x:.{digits}g}")
        try:
            if struct.pack("<f", y) == target:
                return y
        except OverflowError:
            continue
    return x


def same_f32(a: float, b: float) -> bool:
    """Whether two numbers are the same float32 (what a float32 field cannot tell apart)."""
    try:
        return struct.pack("<f", float(a)) == struct.pack("<f", float(b))
    except OverflowError:
        return float(a) == float(b)
