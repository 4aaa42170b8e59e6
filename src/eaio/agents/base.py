"""The seam for LLM backends: the message types and the one-method interface behind them.

The tool-use loop (``llm.run_task``) speaks only these types; ``ollama.OllamaBackend`` turns them
into Ollama's wire JSON. A backend knows nothing of MCP: it is given tool specs and returns the
model's reply, tool calls included, for the loop to check and run.
"""

from __future__ import annotations

from typing import Any, Protocol

from pydantic import BaseModel, Field

__all__ = ["ChatMessage", "ChatResponse", "LLMBackend", "ToolCall", "ToolCaller", "ToolSpec"]


class ToolSpec(BaseModel):
    """A discovered MCP tool, under its namespaced name (``modbus__read_points``)."""

    name: str
    description: str = ""
    input_schema: dict[str, Any] = Field(default_factory=dict)
    read_only: bool = False


class ToolCall(BaseModel):
    name: str
    arguments: dict[str, Any] = Field(default_factory=dict)


class ChatMessage(BaseModel):
    """One message of a conversation: system, user, assistant (maybe with tool calls) or tool."""

    role: str
    content: str = ""
    tool_calls: list[ToolCall] = Field(default_factory=list)
    tool_name: str | None = Field(default=None, description="On a tool message: the tool whose result it is")


class ChatResponse(BaseModel):
    """One model turn. ``prompt_eval_count`` is what the server says it read of the prompt."""

    message: ChatMessage
    done: bool = True
    prompt_eval_count: int | None = None
    eval_count: int | None = None
    model: str | None = None


class LLMBackend(Protocol):
    name: str

    async def chat(
        self, messages: list[ChatMessage], tools: list[ToolSpec], *, num_ctx: int | None = None
    ) -> ChatResponse:
        """One model turn: the reply, possibly with tool calls to run. Raises ``errors.LLMError``."""
        ...


class ToolCaller(Protocol):
    """What the tool-use loop needs of a host (``McpHost`` has it)."""

    async def call_tool(self, name: str, args: dict[str, Any] | None = None) -> dict[str, Any]: ...
