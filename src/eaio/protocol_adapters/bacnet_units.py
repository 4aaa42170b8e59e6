"""Point units <-> BACnet engineering units (the EngineeringUnits enumeration's names).

The site file writes units as engineers do ("degC", "%", "kW"); BACnet devices report an
enumeration ("degreesCelsius", "percent", "kilowatts"). The sim's face serves a point's unit
with ``to_bacnet``; the adapter maps what a device reports back with ``from_bacnet`` (an
unknown BACnet unit comes back as its own name, never as an error).
"""

from __future__ import annotations

__all__ = ["from_bacnet", "to_bacnet"]

_TO_BACNET: dict[str, str] = {
    "": "noUnits",
    "degC": "degreesCelsius",
    "degF": "degreesFahrenheit",
    "K": "degreesKelvin",
    "delta_K": "deltaDegreesKelvin",
    "%": "percent",
    "%RH": "percentRelativeHumidity",
    "ppm": "partsPerMillion",
    "Pa": "pascals",
    "kPa": "kilopascals",
    "bar": "bars",
    "W": "watts",
    "kW": "kilowatts",
    "MW": "megawatts",
    "Wh": "wattHours",
    "kWh": "kilowattHours",
    "MWh": "megawattHours",
    "V": "volts",
    "A": "amperes",
    "Hz": "hertz",
    "l/s": "litersPerSecond",
    "m3/h": "cubicMetersPerHour",
    "m3/s": "cubicMetersPerSecond",
    "kg/s": "kilogramsPerSecond",
    "m/s": "metersPerSecond",
    "lx": "luxes",
    "h": "hours",
    "min": "minutes",
    "s": "seconds",
    "rpm": "revolutionsPerMinute",
}
_FROM_BACNET: dict[str, str] = {v: k for k, v in _TO_BACNET.items()}


def to_bacnet(unit: str) -> str:
    """The EngineeringUnits name for a site-file unit ('noUnits' when there is none we know)."""
    return _TO_BACNET.get(unit, "noUnits")


def from_bacnet(units: object) -> str:
    """A site-file unit for what a device reports (an enum member or its name, either case style)."""
    name = str(units)
    if name in _FROM_BACNET:
        return _FROM_BACNET[name]
    # bacpypes3 prints enumerations in kebab case ("degrees-celsius"); accept both spellings.
    camel = "".join(part if i == 0 else part.capitalize() for i, part in enumerate(name.split("-")))
    return _FROM_BACNET.get(camel, name)
