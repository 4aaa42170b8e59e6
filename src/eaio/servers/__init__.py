"""One MCP server per protocol, all built from one shared tool set (``tools``)."""

from .app import build_server, run_server
from .mqtt import MqttService
from .service import CoreService
from .tools import CORE_TOOLS, ToolName

__all__ = ["CORE_TOOLS", "CoreService", "MqttService", "ToolName", "build_server", "run_server"]
