"""The Modbus MCP server: the core tools plus a bounded raw register read."""

from __future__ import annotations

from typing import Annotated, Any

from mcp.server.mcpserver import MCPServer
from mcp.types import CallToolResult
from pydantic import Field

from ..config import SiteConfig
from ..errors import ValidationFailed
from ..models import ModbusPoint, Point, Value
from ..protocol_adapters import build_adapter
from ..protocol_adapters.base import Adapter
from ..protocol_adapters.modbus_codec import to_raw
from .results import RegisterValues
from .service import CoreService
from .tools import READ_ONLY, ToolName, register_core_tools, run_tool

__all__ = ["build_modbus_service", "check_register_request", "register_modbus_tools"]

MAX_REGISTERS = 125  # per request, by the Modbus spec
MAX_BITS = 2000


def _encodable(point: Point, value: Value) -> None:
    """A dry run must catch what the device could never hold (e.g. 70000 in a uint16)."""
    if isinstance(point, ModbusPoint):
        to_raw(point.address, value)


def build_modbus_service(cfg: SiteConfig, adapter: Adapter | None = None) -> CoreService:
    adapter = adapter or build_adapter("modbus", cfg.devices_for("modbus"))
    return CoreService(cfg, "modbus", adapter, value_check=_encodable)


def check_register_request(table: str, address: int, count: int, unit: int | None) -> None:
    """Bounds of one raw read, checked before any I/O."""
    if table not in ("holding", "input", "coil", "discrete"):
        raise ValidationFailed(f"table must be holding, input, coil or discrete, not '{table}'")
    most = MAX_BITS if table in ("coil", "discrete") else MAX_REGISTERS
    what = "bits" if table in ("coil", "discrete") else "registers"
    if not 1 <= count <= most:
        raise ValidationFailed(f"count must be 1..{most} {what} for table '{table}', got {count}")
    if not 0 <= address <= 65535:
        raise ValidationFailed(f"address must be 0..65535, got {address}")
    if address + count - 1 > 65535:
        raise ValidationFailed(f"address {address} + count {count} runs past 65535")
    if unit is not None and not 0 <= unit <= 255:
        raise ValidationFailed(f"unit must be 0..255, got {unit}")


def register_modbus_tools(server: MCPServer, service: CoreService) -> None:
    register_core_tools(server, service)
    adapter: Any = service.adapter

    async def read_registers(
        device_id: Annotated[str, Field(description="A device id from list_devices")],
        table: Annotated[str, Field(description="holding, input, coil or discrete",
                                    json_schema_extra={"enum": ["holding", "input", "coil", "discrete"]})],
        address: Annotated[int, Field(description="Zero-based first address, 0..65535")],
        count: Annotated[int, Field(description="1..125 registers, or 1..2000 bits for coil/discrete")],
        unit: Annotated[int | None, Field(description="Modbus unit id; default: the device's")] = None,
    ) -> Annotated[CallToolResult, RegisterValues]:
        async def call() -> RegisterValues:
            device = service.device(device_id)
            check_register_request(table, address, count, unit)
            values = await adapter.read_registers(device_id, table, address, count, unit=unit)
            used_unit = unit if unit is not None else device.connection.unit  # type: ignore[attr-defined]
            return RegisterValues(
                device_id=device_id, table=table, address=address, count=count, unit=used_unit, values=list(values)
            )

        return await run_tool(service, ToolName.READ_REGISTERS, call, device_id=device_id, table=table,
                              address=address, count=count, unit=unit)

    server.add_tool(read_registers, name=ToolName.READ_REGISTERS.value, annotations=READ_ONLY, description=(
        "Read raw Modbus registers or bits from a device, without scaling: for diagnosing a point whose value "
        "looks wrong (word order, scale) or exploring an undocumented device. Prefer read_points for values."
    ))
