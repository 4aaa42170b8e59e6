"""The only data types shared between EAIO's parts."""

from .advice import Decision, DecisionMode, Fault, Recommendation, Severity, SuggestedWrite
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
from .reading import Quality, Reading, Reason, Value, utcnow
from .write import AuditRecord, WriteOutcome, WriteRequest, WriteResult

__all__ = [
    "AuditRecord",
    "Decision",
    "DecisionMode",
    "Device",
    "Fault",
    "Limits",
    "ModbusAddress",
    "ModbusConnection",
    "ModbusDevice",
    "ModbusPoint",
    "Point",
    "PointKind",
    "Quality",
    "Reading",
    "Reason",
    "Recommendation",
    "Severity",
    "SuggestedWrite",
    "Value",
    "WriteOutcome",
    "WriteRequest",
    "WriteResult",
    "utcnow",
]
