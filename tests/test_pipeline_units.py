"""The unit table: canonical spellings, conversions with and without offset, what cannot convert."""

from __future__ import annotations

import pytest

from eaio.pipeline.units import canonical, convert, convert_delta, dimension, linear


@pytest.mark.parametrize(("given", "canon"), [
    ("degC", "degC"), ("°C", "degC"), ("C", "degC"), ("celsius", "degC"), ("deg C", "degC"), ("Celsius", "degC"),
    ("degF", "degF"), ("°F", "degF"), ("F", "degF"), ("fahrenheit", "degF"), ("deg_F", "degF"),
    ("K", "K"), ("kelvin", "K"),
    ("kw", "kW"), ("KW", "kW"), ("kW", "kW"), ("W", "W"), ("MW", "MW"),
    ("kwh", "kWh"), ("KWH", "kWh"), ("Wh", "Wh"), ("MWh", "MWh"),
    ("Pa", "Pa"), ("pascal", "Pa"), ("kPa", "kPa"),
    ("inH2O", "inH2O"), ("in_h2o", "inH2O"), ("inwc", "inH2O"), ("iwc", "inH2O"), ("in-H2O", "inH2O"),
    ("psi", "psi"), ("%", "%"), ("%RH", "%RH"), ("% RH", "%RH"), ("RH", "%RH"), ("ppm", "ppm"),
    ("h", "h"), ("m3/h", "m3/h"), ("l/s", "l/s"),
])
def test_canonical_spellings(given: str, canon: str) -> None:
    assert canonical(given) == canon


@pytest.mark.parametrize("unknown", ["V", "rpm", "lx", "furlongs", "", "mW", "k"])
def test_unknown_units_come_back_as_given(unknown: str) -> None:
    # "mW" is a milliwatt and "k" nothing: neither is guessed to be MW or kelvin.
    assert canonical(unknown) == unknown
    assert dimension(unknown) is None


def test_dimensions() -> None:
    assert [dimension(u) for u in ("°F", "kW", "kwh", "iwc", "%RH", "%", "ppm", "h")] == [
        "temperature", "power", "energy", "pressure", "percent", "percent", "concentration", "time"]


@pytest.mark.parametrize(("value", "src", "dst", "expected"), [
    (212.0, "degF", "degC", 100.0),
    (32.0, "°F", "degC", 0.0),
    (-40.0, "degC", "degF", -40.0),
    (0.0, "degC", "K", 273.15),
    (300.0, "K", "degF", 80.33),
    (1500.0, "W", "kW", 1.5),
    (2.5, "MWh", "kWh", 2500.0),
    (1.0, "inH2O", "Pa", 249.0889),
    (1000.0, "Pa", "kPa", 1.0),
    (1.0, "psi", "inH2O", 27.68),
    (55.0, "%", "%RH", 55.0),
    (3.6, "m3/h", "l/s", 1.0),
])
def test_convert(value: float, src: str, dst: str, expected: float) -> None:
    assert convert(value, src, dst) == pytest.approx(expected, abs=0.01)
    a, b = linear(src, dst)
    assert value * a + b == pytest.approx(expected, abs=0.01)


def test_a_difference_converts_without_the_offset() -> None:
    assert convert_delta(9.0, "degF", "degC") == pytest.approx(5.0)
    assert convert_delta(1.0, "K", "degF") == pytest.approx(1.8)
    assert convert_delta(0.5, "inH2O", "Pa") == pytest.approx(124.54445)
    # ...while convert applies it: the same 9 °F as a temperature is -12.8 °C.
    assert convert(9.0, "degF", "degC") == pytest.approx(-12.78, abs=0.01)


def test_same_unit_is_identity_even_when_unknown() -> None:
    assert convert(7, "rpm", "rpm") == 7.0
    assert convert(21.5, "°C", "degC") == 21.5
    assert linear("V", "V") == (1.0, 0.0)


@pytest.mark.parametrize(("src", "dst"), [("degC", "kW"), ("%RH", "ppm"), ("V", "A"), ("degC", "rpm"), ("", "degC")])
def test_incompatible_units_raise_naming_both(src: str, dst: str) -> None:
    with pytest.raises(ValueError, match="cannot convert") as err:
        convert(1.0, src, dst)
    assert repr(src) in str(err.value)
    assert repr(dst) in str(err.value)
    with pytest.raises(ValueError, match="cannot convert"):
        convert_delta(1.0, src, dst)
