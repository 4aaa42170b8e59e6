"""The seam for LLM backends. The no-LLM planner and (later) Ollama sit behind it."""

from __future__ import annotations

from typing import Any, Protocol

from pydantic import BaseModel, Field

__all__ = ["ChatMessage", "ChatResponse", "LLMBackend", "ToolCall", "ToolSpec"]


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
    role: str
    content: str = ""
    tool_calls: list[ToolCall] = Field(default_factory=list)


class ChatResponse(BaseModel):
    message: ChatMessage
    done: bool = True


class LLMBackend(Protocol):
    name: str

    async def chat(self, messages: list[ChatMessage], tools: list[ToolSpec]) -> ChatResponse:
        """One model turn: the reply, possibly with tool calls to run."""
        ...
