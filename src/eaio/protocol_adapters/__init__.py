"""Protocol adapters: one module per protocol behind the interface in ``base``."""

from typing import Any

from .base import Adapter, ReadingCallback

__all__ = ["Adapter", "ReadingCallback", "build_adapter"]


def build_adapter(protocol: str, devices: list, **kw: Any) -> Adapter:  # type: ignore[type-arg]
    """The adapter for ``protocol`` over ``devices`` (not yet connected).

    ``kw`` goes to the adapter's constructor (MQTT: ``role=``, ``buffer_size=``; BACnet:
    ``local=`` the site's ``BacnetLocal`` and ``role=``, which pick its local UDP port; OPC-UA:
    ``role=``, which names its sessions).
    """
    if protocol == "modbus":
        from .modbus import ModbusAdapter

        return ModbusAdapter(devices, **kw)
    if protocol == "mqtt":
        from .mqtt import MqttAdapter

        return MqttAdapter(devices, **kw)
    if protocol == "bacnet":
        from .bacnet import BacnetAdapter

        return BacnetAdapter(devices, **kw)
    if protocol == "opcua":
        from .opcua import OpcuaAdapter

        return OpcuaAdapter(devices, **kw)
    raise ValueError(f"no adapter for protocol '{protocol}'")
