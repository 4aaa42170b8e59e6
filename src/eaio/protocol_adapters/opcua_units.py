"""Point units <-> OPC-UA engineering units (UNECE Recommendation 20 common codes).

The site file writes units as engineers do ("degC", "kPa", "l/s"); an OPC-UA analog variable
carries an ``EngineeringUnits`` property, an EUInformation whose ``UnitId`` encodes a UNECE
common code ("CEL", "KPA", "G51") as OPC-UA Part 8 says: the code's ASCII bytes, big-endian, in
an Int32. The sim's face serves a point's unit with ``to_eu``; the adapter maps what a server
reports back with ``from_eu`` (an unknown unit comes back as its own text, never as an error).

Pure Python: no asyncua types here, so both sides (and tests) can use it without a server.
"""

from __future__ import annotations

from typing import NamedTuple

__all__ = ["CEFACT_URI", "Eu", "code_of", "from_eu", "to_eu", "unit_id"]

# EUInformation.NamespaceUri for units identified by UNECE common codes (OPC-UA Part 8, 5.6.3).
CEFACT_URI = "http://www.opcfoundation.org/UA/units/un/cefact"


class Eu(NamedTuple):
    """A unit as OPC-UA describes it: UNECE common code, DisplayName (symbol), Description."""

    code: str
    symbol: str
    name: str


# Symbols and names as in the OPC Foundation's UNECE_to_OPCUA table.
_TO_EU: dict[str, Eu] = {
    "degC": Eu("CEL", "°C", "degree Celsius"),
    "degF": Eu("FAH", "°F", "degree Fahrenheit"),
    "K": Eu("KEL", "K", "kelvin"),
    "%": Eu("P1", "%", "percent"),
    "ppm": Eu("59", "ppm", "part per million"),
    "Pa": Eu("PAL", "Pa", "pascal"),
    "kPa": Eu("KPA", "kPa", "kilopascal"),
    "bar": Eu("BAR", "bar", "bar [unit of pressure]"),
    "W": Eu("WTT", "W", "watt"),
    "kW": Eu("KWT", "kW", "kilowatt"),
    "MW": Eu("MAW", "MW", "megawatt"),
    "Wh": Eu("WHR", "W·h", "watt hour"),
    "kWh": Eu("KWH", "kW·h", "kilowatt hour"),
    "MWh": Eu("MWH", "MW·h", "megawatt hour (1000 kW·h)"),
    "V": Eu("VLT", "V", "volt"),
    "A": Eu("AMP", "A", "ampere"),
    "Hz": Eu("HTZ", "Hz", "hertz"),
    "l/s": Eu("G51", "l/s", "litre per second"),
    "m3/h": Eu("MQH", "m³/h", "cubic metre per hour"),
    "m3/s": Eu("MQS", "m³/s", "cubic metre per second"),
    "kg/s": Eu("KGS", "kg/s", "kilogram per second"),
    "m/s": Eu("MTS", "m/s", "metre per second"),
    "lx": Eu("LUX", "lx", "lux"),
    "h": Eu("HUR", "h", "hour"),
    "min": Eu("MIN", "min", "minute [unit of time]"),
    "s": Eu("SEC", "s", "second [unit of time]"),
    "rpm": Eu("RPM", "r/min", "revolutions per minute"),
}
# What a server may report, back to a site unit: by code, by symbol and by name.
_FROM_EU: dict[str, str] = {}
for _unit, _eu in _TO_EU.items():
    for _key in (_eu.code, _eu.symbol, _eu.name, _unit):
        _FROM_EU.setdefault(_key, _unit)


def unit_id(code: str) -> int:
    """EUInformation.UnitId of a UNECE common code ('CEL' -> 4408652, 'P1' -> 20529)."""
    value = 0
    for ch in code[:4]:
        value = (value << 8) | ord(ch)
    return value


def code_of(uid: int) -> str | None:
    """The UNECE common code of a UnitId; None for -1 (no unit id) or what is not ASCII."""
    if uid <= 0:
        return None
    raw = uid.to_bytes(4, "big").lstrip(b"\0")
    try:
        code = raw.decode("ascii")
    except UnicodeDecodeError:
        return None
    return code if code.isprintable() else None


def to_eu(unit: str) -> Eu | None:
    """The OPC-UA description of a site-file unit; None when it has no UNECE code we know
    (a face then serves UnitId -1 with the unit's own text, as OPC-UA allows)."""
    return _TO_EU.get(unit)


def from_eu(code_or_name: int | str) -> str:
    """A site-file unit for what a server reports: a UnitId, a common code, a symbol or a name.
    Unknown text comes back as it is; an unknown or missing (-1) UnitId as ''."""
    if isinstance(code_or_name, int):
        code = code_of(code_or_name)
        return _FROM_EU.get(code, "") if code is not None else ""
    text = code_or_name.strip()
    return _FROM_EU.get(text, text)
