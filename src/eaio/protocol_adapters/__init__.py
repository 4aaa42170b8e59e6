"""Protocol adapters: one module per protocol behind the interface in ``base``."""

from .base import Adapter, ReadingCallback

__all__ = ["Adapter", "ReadingCallback", "build_adapter"]


def build_adapter(protocol: str, devices: list) -> Adapter:  # type: ignore[type-arg]
    """The adapter for ``protocol`` over ``devices`` (not yet connected)."""
    if protocol == "modbus":
        from .modbus import ModbusAdapter

        return ModbusAdapter(devices)
    raise ValueError(f"no adapter for protocol '{protocol}'")
