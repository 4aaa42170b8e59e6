"""The Ollama backend: one ``/api/chat`` turn through the ``ollama`` AsyncClient.

Tools are sent as ``{"type": "function", "function": {"name", "description", "parameters"}}``
with ``parameters`` built from the MCP input schema. The client (0.6.3) passes each tool through
its own ``Tool`` model, which keeps only ``type``, ``items``, ``description`` and ``enum`` of a
property and silently drops the rest — every optional argument of our tools is an ``anyOf`` with
``null``, which would reach the model as a bare ``{"description": ...}``. So the schema is
rewritten into what survives: ``anyOf``/``oneOf`` of plain types becomes a ``type`` list (Ollama
accepts a string or a list), ``$ref`` is inlined, and constraints the model should know
(default, minimum, maximum, length, pattern, format, nested fields) are written into the
description. Arguments are still checked against the full MCP schema before any call.

Every failure is an ``LLMError`` with a code: ``llm_unreachable`` (nothing listening, connection
lost), ``model_not_found`` (404), ``timeout`` (no answer within ``llm.timeout_s``),
``malformed_reply`` (a body the client cannot read), ``llm_error`` (any other error status).
"""

from __future__ import annotations

import json
from types import TracebackType
from typing import Any

import httpx
import pydantic
from ollama import AsyncClient, ResponseError
from pydantic import BaseModel

from ..config import LLMSettings
from ..errors import LLMError
from .base import ChatMessage, ChatResponse, ToolCall, ToolSpec

__all__ = ["ModelInfo", "OllamaBackend", "ollama_parameters", "ollama_tool", "wire_messages"]

# Keywords worth telling the model about, as "(key value)" after the description.
_HINTS = ("default", "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "minLength", "maxLength",
          "pattern", "format", "minItems", "maxItems", "const")
_MAX_REF_DEPTH = 8


class ModelInfo(BaseModel):
    """One model of ``/api/tags``."""

    name: str
    size: int | None = None
    parameter_size: str | None = None
    family: str | None = None


def ollama_tool(spec: ToolSpec) -> dict[str, Any]:
    """A tool in Ollama's form, its parameters rewritten to survive the client's Tool model."""
    return {"type": "function", "function": {
        "name": spec.name, "description": spec.description, "parameters": ollama_parameters(spec.input_schema),
    }}


def ollama_parameters(schema: dict[str, Any]) -> dict[str, Any]:
    """An MCP input schema as Ollama's ``parameters``: type, required, properties (type, items, description, enum)."""
    defs = schema.get("$defs") or schema.get("definitions") or {}
    props = schema.get("properties") or {}
    out: dict[str, Any] = {"type": "object", "properties": {k: _property(v, defs) for k, v in props.items()}}
    if schema.get("required"):
        out["required"] = list(schema["required"])
    return out


def _property(prop: dict[str, Any], defs: dict[str, Any], depth: int = 0) -> dict[str, Any]:
    prop = _inline(prop, defs, depth)
    out: dict[str, Any] = {}
    branches = [_inline(b, defs, depth + 1) for b in prop.get("anyOf") or prop.get("oneOf") or []]
    types = _types(prop, branches)
    if types:
        out["type"] = types[0] if len(types) == 1 else types
    items = prop.get("items") or next((b["items"] for b in branches if "items" in b), None)
    if isinstance(items, dict):
        out["items"] = _property(items, defs, depth + 1)
    enum = prop.get("enum") or [v for b in branches for v in b.get("enum", [])]
    if enum:
        out["enum"] = list(enum)
    description = _describe(prop, branches, defs, depth)
    if description:
        out["description"] = description
    return out


def _inline(prop: dict[str, Any], defs: dict[str, Any], depth: int) -> dict[str, Any]:
    """Replace a local ``$ref`` by its definition (the client drops ``$ref`` inside properties)."""
    ref = prop.get("$ref")
    if not isinstance(ref, str) or depth > _MAX_REF_DEPTH:
        return prop
    target = defs.get(ref.rsplit("/", 1)[-1])
    if not isinstance(target, dict):
        return prop
    merged = {**_inline(target, defs, depth + 1), **{k: v for k, v in prop.items() if k != "$ref"}}
    return merged


def _types(prop: dict[str, Any], branches: list[dict[str, Any]]) -> list[str]:
    raw = prop.get("type")
    found = list(raw) if isinstance(raw, list) else [raw] if isinstance(raw, str) else []
    for b in branches:
        t = b.get("type")
        found.extend(t if isinstance(t, list) else [t] if isinstance(t, str) else [])
    # "null" only says the argument may be left out, which "required" already tells the model.
    seen = [t for t in dict.fromkeys(found) if t != "null"]
    return seen


def _describe(prop: dict[str, Any], branches: list[dict[str, Any]], defs: dict[str, Any], depth: int) -> str:
    text = str(prop.get("description") or prop.get("title") or "").strip()
    hints = [f"{k} {json.dumps(prop[k])}" for k in _HINTS if k in prop and not (k == "default" and prop[k] is None)]
    for b in branches:
        hints.extend(f"{k} {json.dumps(b[k])}" for k in _HINTS if k in b and k != "default")
    nested = prop.get("properties") or next((b["properties"] for b in branches if "properties" in b), None)
    if isinstance(nested, dict) and nested:
        fields = ", ".join(f"{k}: {_property(v, defs, depth + 1).get('type', 'any')}" for k, v in nested.items())
        hints.append(f"fields {{{fields}}}")
    if hints:
        text = f"{text} ({'; '.join(hints)})" if text else "; ".join(hints)
    return text


def wire_messages(messages: list[ChatMessage]) -> list[dict[str, Any]]:
    """Our messages as Ollama's JSON (tool calls as ``{"function": {"name", "arguments"}}``)."""
    out = []
    for m in messages:
        msg: dict[str, Any] = {"role": m.role, "content": m.content}
        if m.tool_calls:
            msg["tool_calls"] = [{"function": {"name": c.name, "arguments": c.arguments}} for c in m.tool_calls]
        if m.tool_name:
            msg["tool_name"] = m.tool_name
        out.append(msg)
    return out


class OllamaBackend:
    """One model on one Ollama server. ``async with`` holds one HTTP client for many turns;
    used without it, each call opens and closes its own. The constructor does no I/O."""

    def __init__(
        self, url: str, model: str, *, keep_alive: str | float = "10m", temperature: float = 0.1,
        timeout_s: float = 120.0,
    ) -> None:
        self.name = f"ollama:{model}"
        self.url = url
        self.model = model
        self.keep_alive = keep_alive
        self.temperature = temperature
        self.timeout_s = timeout_s
        self._client: AsyncClient | None = None

    @classmethod
    def from_settings(cls, settings: LLMSettings, model: str | None = None) -> OllamaBackend:
        return cls(settings.url, model or settings.model, keep_alive=settings.keep_alive,
                   temperature=settings.temperature, timeout_s=settings.timeout_s)

    async def __aenter__(self) -> OllamaBackend:
        self._client = self._new_client()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.close()

    async def chat(
        self, messages: list[ChatMessage], tools: list[ToolSpec], *, num_ctx: int | None = None
    ) -> ChatResponse:
        options: dict[str, Any] = {"temperature": self.temperature}
        if num_ctx is not None:
            options["num_ctx"] = num_ctx
        reply = await self._call("chat", lambda c: c.chat(
            model=self.model, messages=wire_messages(messages), tools=[ollama_tool(t) for t in tools],
            stream=False, options=options, keep_alive=self.keep_alive,
        ))
        msg = reply.message
        calls = [ToolCall(name=c.function.name, arguments=dict(c.function.arguments)) for c in msg.tool_calls or []]
        return ChatResponse(
            message=ChatMessage(role=msg.role or "assistant", content=msg.content or "", tool_calls=calls),
            done=reply.done if reply.done is not None else True,
            prompt_eval_count=reply.prompt_eval_count,
            eval_count=reply.eval_count,
            model=reply.model or self.model,
        )

    async def tags(self) -> list[ModelInfo]:
        """The models the server has (``/api/tags``)."""
        listed = await self._call("list models", lambda c: c.list())
        return [
            ModelInfo(name=m.model or "", size=int(m.size) if m.size is not None else None,
                      parameter_size=m.details.parameter_size if m.details else None,
                      family=m.details.family if m.details else None)
            for m in listed.models
        ]

    # -- internals ----------------------------------------------------------------------------
    def _new_client(self) -> AsyncClient:
        return AsyncClient(host=self.url, timeout=self.timeout_s)

    async def _call(self, what: str, request: Any) -> Any:
        """Run one client request; every way it can fail becomes an LLMError naming the server and model."""
        where = f"Ollama at {self.url} ({self.model}) {what}"
        client = self._client or self._new_client()
        try:
            return await request(client)
        except ResponseError as err:
            if err.status_code == 404:
                raise LLMError(f"{where}: {err.error}", code="model_not_found") from err
            raise LLMError(f"{where}: HTTP {err.status_code}: {err.error}") from err
        except ConnectionError as err:  # the client's own: nothing listening
            raise LLMError(f"{where}: cannot connect", code="llm_unreachable") from err
        except httpx.TimeoutException as err:
            raise LLMError(f"{where}: no answer within {self.timeout_s:g} s", code="timeout") from err
        except httpx.HTTPError as err:  # connection reset, server gone mid-answer
            raise LLMError(f"{where}: {type(err).__name__}: {err}", code="llm_unreachable") from err
        except (pydantic.ValidationError, json.JSONDecodeError) as err:
            first = err.errors()[0] if isinstance(err, pydantic.ValidationError) else None
            why = f"{'.'.join(map(str, first['loc']))}: {first['msg']}" if first else str(err)
            raise LLMError(f"{where}: the reply is not Ollama's JSON ({why})", code="malformed_reply") from err
        finally:
            if client is not self._client:
                await client.close()
