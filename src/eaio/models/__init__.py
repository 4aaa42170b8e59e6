"""The only data types shared between EAIO's parts."""

from .advice import Decision, DecisionMode, Fault, Recommendation, Severity, SuggestedWrite
from .bacnet import BacnetAddress, BacnetConnection, BacnetDevice, BacnetLocal, BacnetPoint
from .batch import ReadingBatch, from_us, to_us
from .mqtt import (
    DeadLetter,
    MqttCommand,
    MqttConnection,
    MqttDevice,
    MqttPoint,
    MqttSubscription,
    MqttTls,
)
from .opcua import OpcuaAddress, OpcuaConnection, OpcuaDevice, OpcuaPoint, OpcuaSecurity
from .point import (
    Device,
    Limits,
    ModbusAddress,
    ModbusConnection,
    ModbusDevice,
    ModbusPoint,
    Point,
    PointKind,
)
from .reading import Quality, Reading, Reason, Value, trusted, utcnow
from .write import AuditRecord, WriteOutcome, WriteRequest, WriteResult

__all__ = [
    "AuditRecord",
    "BacnetAddress",
    "BacnetConnection",
    "BacnetDevice",
    "BacnetLocal",
    "BacnetPoint",
    "DeadLetter",
    "Decision",
    "DecisionMode",
    "Device",
    "Fault",
    "Limits",
    "ModbusAddress",
    "ModbusConnection",
    "ModbusDevice",
    "ModbusPoint",
    "MqttCommand",
    "MqttConnection",
    "MqttDevice",
    "MqttPoint",
    "MqttSubscription",
    "MqttTls",
    "OpcuaAddress",
    "OpcuaConnection",
    "OpcuaDevice",
    "OpcuaPoint",
    "OpcuaSecurity",
    "Point",
    "PointKind",
    "Quality",
    "Reading",
    "ReadingBatch",
    "Reason",
    "Recommendation",
    "Severity",
    "SuggestedWrite",
    "Value",
    "WriteOutcome",
    "WriteRequest",
    "WriteResult",
    "from_us",
    "to_us",
    "trusted",
    "utcnow",
]
