"""The agent runtime: MCP host, workflows (the no-LLM planner or a model), approvals, records.

The model chain (``fallback``), the Ollama backend (``ollama``) and the memory (``memory``) are
imported from their modules when used, not here: an agent without a model never loads the
ollama client, chromadb or onnxruntime.
"""

from .approvals import Actuator, ApprovalPolicy, execute_approval, reject_approval
from .base import ChatMessage, ChatResponse, LLMBackend, ToolCall, ToolSpec
from .host import CallLog, McpHost, server_refs
from .planner import Planner, PlanResult
from .records import ApprovalRow, RecordedRecommendation, Records
from .runtime import Runtime, ToolHost, ask_agent, run_agent
from .triggers import EventTriggers, trigger_for
from .workflows import WORKFLOWS, Outcome, Trigger, Workflows

__all__ = [
    "WORKFLOWS",
    "Actuator",
    "ApprovalPolicy",
    "ApprovalRow",
    "CallLog",
    "ChatMessage",
    "ChatResponse",
    "EventTriggers",
    "LLMBackend",
    "McpHost",
    "Outcome",
    "PlanResult",
    "Planner",
    "RecordedRecommendation",
    "Records",
    "Runtime",
    "ToolCall",
    "ToolHost",
    "ToolSpec",
    "Trigger",
    "Workflows",
    "ask_agent",
    "execute_approval",
    "reject_approval",
    "run_agent",
    "server_refs",
    "trigger_for",
]
