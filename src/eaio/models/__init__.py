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
    Counter,
    Device,
    Limits,
    ModbusAddress,
    ModbusConnection,
    ModbusDevice,
    ModbusPoint,
    Point,
    PointKind,
    PointRules,
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
    "Counter",
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
    "PointRules",
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
