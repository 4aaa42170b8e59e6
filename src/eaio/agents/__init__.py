"""The agent runtime: MCP host, the no-LLM planner, records, and the periodic runtime."""

from .base import ChatMessage, ChatResponse, LLMBackend, ToolCall, ToolSpec
from .host import CallLog, McpHost, server_refs
from .planner import Planner, PlanResult
from .records import RecordedRecommendation, Records
from .runtime import Runtime, run_agent

__all__ = [
    "CallLog",
    "ChatMessage",
    "ChatResponse",
    "LLMBackend",
    "McpHost",
    "PlanResult",
    "Planner",
    "RecordedRecommendation",
    "Records",
    "Runtime",
    "ToolCall",
    "ToolSpec",
    "run_agent",
    "server_refs",
]
