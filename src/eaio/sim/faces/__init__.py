"""One face per field protocol; each serves the simulation's values on the wire."""

from __future__ import annotations

from .bacnet import BacnetFace
from .modbus import ModbusFace
from .opcua import OpcuaFace

__all__ = ["BacnetFace", "ModbusFace", "OpcuaFace"]
