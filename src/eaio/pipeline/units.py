"""Unit normalisation: a small table of the units building telemetry uses, no dependency.

A unit has one canonical spelling (the one the site file and the adapters' unit tables use:
``degC``, ``kW``, ``inH2O``...) and any number of aliases (``°C``, ``celsius``, ``kw``,
``in_h2o``, ``iwc``...). Units of one dimension convert linearly into each other:
``base = value * factor + offset``; only temperatures have an offset, which is why a
*difference* of temperatures (a spread, a rate of change) converts with ``convert_delta``.

A unit that is not in the table is returned as given by ``canonical`` and has no dimension:
it can only "convert" to itself. ``%`` and ``%RH`` share a dimension (a humidity sensor that
reports plain percent means relative humidity); ``ppm`` has a dimension of its own, so a
humidity reading can never be taken for a CO2 one.
"""

from __future__ import annotations

__all__ = ["canonical", "convert", "convert_delta", "dimension", "linear"]

# canonical unit -> (dimension, factor, offset) into the dimension's base unit.
_TABLE: dict[str, tuple[str, float, float]] = {
    # temperature, base kelvin
    "K": ("temperature", 1.0, 0.0),
    "degC": ("temperature", 1.0, 273.15),
    "degF": ("temperature", 5.0 / 9.0, 273.15 - 32.0 * 5.0 / 9.0),
    # temperature differences, base kelvin (no offset by definition)
    "delta_K": ("temperature_difference", 1.0, 0.0),
    "delta_degF": ("temperature_difference", 5.0 / 9.0, 0.0),
    # power, base watt
    "W": ("power", 1.0, 0.0),
    "kW": ("power", 1e3, 0.0),
    "MW": ("power", 1e6, 0.0),
    # energy, base watt-hour
    "Wh": ("energy", 1.0, 0.0),
    "kWh": ("energy", 1e3, 0.0),
    "MWh": ("energy", 1e6, 0.0),
    # pressure, base pascal; inH2O at 4 °C (39.2 °F), the conventional water column
    "Pa": ("pressure", 1.0, 0.0),
    "hPa": ("pressure", 1e2, 0.0),
    "kPa": ("pressure", 1e3, 0.0),
    "bar": ("pressure", 1e5, 0.0),
    "inH2O": ("pressure", 249.0889, 0.0),
    "psi": ("pressure", 6894.757293, 0.0),
    # ratios, base percent
    "%": ("percent", 1.0, 0.0),
    "%RH": ("percent", 1.0, 0.0),
    # concentration, base ppm
    "ppm": ("concentration", 1.0, 0.0),
    "ppb": ("concentration", 1e-3, 0.0),
    # time, base second (schedule points are in hours)
    "s": ("time", 1.0, 0.0),
    "min": ("time", 60.0, 0.0),
    "h": ("time", 3600.0, 0.0),
    # volume flow, base m3/s
    "m3/s": ("volume_flow", 1.0, 0.0),
    "m3/h": ("volume_flow", 1.0 / 3600.0, 0.0),
    "l/s": ("volume_flow", 1e-3, 0.0),
    "cfm": ("volume_flow", 0.028316846592 / 60.0, 0.0),
    "gpm": ("volume_flow", 0.003785411784 / 60.0, 0.0),
}

# Exact aliases: case matters where it must (MW is not mW, K is not k).
_ALIASES: dict[str, str] = {
    "°C": "degC", "℃": "degC", "C": "degC", "deg C": "degC", "deg_C": "degC", "degreesCelsius": "degC",
    "°F": "degF", "℉": "degF", "F": "degF", "deg F": "degF", "deg_F": "degF", "degreesFahrenheit": "degF",
    "degreesKelvin": "K", "°K": "K",
    "ΔK": "delta_K", "deltaDegreesKelvin": "delta_K", "ΔF": "delta_degF", "Δ°F": "delta_degF",
    "mbar": "hPa",
    "% RH": "%RH", "%rh": "%RH", "RH%": "%RH", "percent": "%",
}
# Case-insensitive aliases, looked up lower-cased with spaces, '_' and '-' removed.
_LOOSE: dict[str, str] = {
    "degc": "degC", "celsius": "degC", "degreescelsius": "degC", "degreec": "degC", "°c": "degC",
    "degf": "degF", "fahrenheit": "degF", "degreesfahrenheit": "degF", "degreef": "degF", "°f": "degF",
    "kelvin": "K", "degreeskelvin": "K",
    "deltak": "delta_K", "deltadegf": "delta_degF",
    "w": "W", "watt": "W", "watts": "W",
    "kw": "kW", "kilowatt": "kW", "kilowatts": "kW",
    "wh": "Wh", "watthour": "Wh", "watthours": "Wh", "w·h": "Wh",
    "kwh": "kWh", "kilowatthour": "kWh", "kilowatthours": "kWh", "kw·h": "kWh",
    "mwh": "MWh", "megawatthour": "MWh", "megawatthours": "MWh", "mw·h": "MWh",
    "megawatt": "MW", "megawatts": "MW",
    "pa": "Pa", "pascal": "Pa", "pascals": "Pa",
    "kpa": "kPa", "kilopascal": "kPa", "kilopascals": "kPa",
    "hpa": "hPa", "hectopascal": "hPa", "hectopascals": "hPa",
    "bar": "bar", "bars": "bar",
    "inh2o": "inH2O", "inwc": "inH2O", "iwc": "inH2O", "inwg": "inH2O", "\"wc": "inH2O", "inchesofwater": "inH2O",
    "psi": "psi", "poundspersquareinch": "psi",
    "%": "%", "pct": "%", "percent": "%",
    "%rh": "%RH", "rh": "%RH", "rh%": "%RH", "percentrelativehumidity": "%RH",
    "ppm": "ppm", "partspermillion": "ppm", "ppb": "ppb", "partsperbillion": "ppb",
    "s": "s", "sec": "s", "second": "s", "seconds": "s",
    "min": "min", "minute": "min", "minutes": "min",
    "h": "h", "hr": "h", "hour": "h", "hours": "h",
    "m3/s": "m3/s", "m³/s": "m3/s", "cubicmeterspersecond": "m3/s",
    "m3/h": "m3/h", "m³/h": "m3/h", "cubicmetersperhour": "m3/h",
    "l/s": "l/s", "lps": "l/s", "literspersecond": "l/s", "litrespersecond": "l/s",
    "cfm": "cfm", "cubicfeetperminute": "cfm", "gpm": "gpm", "usgallonsperminute": "gpm",
}
# Lower-case lookalikes that name another unit: "mw" (milliwatt), "k" (kilo-nothing). Not guessed.
_NOT_LOOSE = frozenset({"mw", "k", "c", "f"})


def canonical(unit: str) -> str:
    """The canonical spelling of ``unit``; a unit not in the table is returned as given."""
    if unit in _TABLE:
        return unit
    hit = _ALIASES.get(unit)
    if hit is not None:
        return hit
    key = unit.strip().lower().replace(" ", "").replace("_", "").replace("-", "")
    if key in _NOT_LOOSE:
        return unit
    return _LOOSE.get(key, unit)


def dimension(unit: str) -> str | None:
    """What ``unit`` measures ("temperature", "pressure"...), None for a unit not in the table."""
    entry = _TABLE.get(canonical(unit))
    return entry[0] if entry is not None else None


def _pair(from_unit: str, to_unit: str) -> tuple[tuple[str, float, float], tuple[str, float, float]] | None:
    """The two table entries, or None when both units are the same (even if unknown)."""
    a, b = canonical(from_unit), canonical(to_unit)
    if a == b:
        return None
    ea, eb = _TABLE.get(a), _TABLE.get(b)
    if ea is None or eb is None or ea[0] != eb[0]:
        raise ValueError(
            f"cannot convert {from_unit!r} ({ea[0] if ea else 'unknown unit'}) "
            f"to {to_unit!r} ({eb[0] if eb else 'unknown unit'})"
        )
    return ea, eb


def linear(from_unit: str, to_unit: str) -> tuple[float, float]:
    """``(a, b)`` with ``to = from * a + b``: one multiply-add per value on the hot path.
    Raises ValueError when the units are of different dimensions (or one is unknown)."""
    pair = _pair(from_unit, to_unit)
    if pair is None:
        return 1.0, 0.0
    (_, fa, oa), (_, fb, ob) = pair
    return fa / fb, (oa - ob) / fb


def convert(value: float, from_unit: str, to_unit: str) -> float:
    """``value`` in ``from_unit`` expressed in ``to_unit`` (temperatures with their offset)."""
    pair = _pair(from_unit, to_unit)
    if pair is None:
        return float(value)
    (_, fa, oa), (_, fb, ob) = pair
    return (value * fa + oa - ob) / fb


def convert_delta(delta: float, from_unit: str, to_unit: str) -> float:
    """A difference (a spread, a change per hour) in ``from_unit`` expressed in ``to_unit``:
    the scale only, never the offset (a 1 °F rise is 5/9 K, not -17.2 °C)."""
    pair = _pair(from_unit, to_unit)
    if pair is None:
        return float(delta)
    (_, fa, _), (_, fb, _) = pair
    return delta * fa / fb
