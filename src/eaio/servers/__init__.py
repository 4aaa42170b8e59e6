"""One MCP server per protocol, all built from one shared tool set (``tools``)."""

from .app import build_server, run_server
from .mqtt import MqttService, MqttToolName
from .service import CoreService
from .tools import ToolName

__all__ = ["CoreService", "MqttService", "MqttToolName", "ToolName", "build_server", "run_server"]
