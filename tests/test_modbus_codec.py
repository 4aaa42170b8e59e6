"""The codec against register images worked out by hand (not by the codec itself)."""

from __future__ import annotations

import pytest

from eaio.models import ModbusAddress
from eaio.protocol_adapters.modbus_codec import decode, encode


def addr(**kw: object) -> ModbusAddress:
    return ModbusAddress(register=0, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kw", "value", "registers"),
    [
        ({"type": "int16"}, -2, [0xFFFE]),
        ({"type": "uint16"}, 65535, [0xFFFF]),
        ({"type": "int32"}, -2, [0xFFFF, 0xFFFE]),
        ({"type": "int32", "word_order": "little"}, -2, [0xFFFE, 0xFFFF]),
        ({"type": "uint32"}, 0x12345678, [0x1234, 0x5678]),
        ({"type": "uint32", "word_order": "little"}, 0x12345678, [0x5678, 0x1234]),
        ({"type": "uint32", "byte_order": "little"}, 0x12345678, [0x3412, 0x7856]),
        ({"type": "uint32", "word_order": "little", "byte_order": "little"}, 0x12345678, [0x7856, 0x3412]),
        ({"type": "float32"}, 1.0, [0x3F80, 0x0000]),
        ({"type": "float32", "word_order": "little"}, -2.5, [0x0000, 0xC020]),
        ({"type": "float64"}, 1.0, [0x3FF0, 0, 0, 0]),
        ({"type": "float64", "word_order": "little"}, 1.0, [0, 0, 0, 0x3FF0]),
        ({"type": "int16", "scale": 0.1}, 21.5, [215]),
        ({"type": "int16", "scale": 0.1, "offset": -40}, -10.0, [300]),
        ({"type": "bool", "table": "coil"}, True, [1]),
    ],
)
def test_known_images(kw: dict[str, object], value: float, registers: list[int]) -> None:
    a = addr(**kw)
    assert encode(a, value) == registers
    assert decode(a, registers) == pytest.approx(value)


def test_scaled_value_has_no_float_noise() -> None:
    assert decode(addr(type="int16", scale=0.1), [215]) == 21.5


@pytest.mark.parametrize(
    ("kw", "value"),
    [({"type": "int16"}, 40000), ({"type": "uint16"}, -1), ({"type": "uint32", "scale": 0.001}, 5_000_000.0)],
)
def test_unrepresentable_values_are_refused(kw: dict[str, object], value: float) -> None:
    with pytest.raises(ValueError, match="outside"):
        encode(addr(**kw), value)


def test_saturate_clamps_integers_as_a_device_register_would() -> None:
    a = addr(type="int16", scale=0.1)
    assert encode(a, 5000.0, saturate=True) == [0x7FFF]
    assert encode(a, -5000.0, saturate=True) == [0x8000]
    with pytest.raises(ValueError, match="finite"):
        encode(a, float("nan"), saturate=True)
