"""The Ollama backend through the real ``ollama`` client, against the wire-level stand-in.

Checks what goes on the wire (tools built from the real MCP schemas, num_ctx, keep_alive,
messages), what comes back (tool calls, prompt_eval_count), the model list, and that every way
Ollama can fail arrives as an LLMError with a code.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from ollama._types import ChatRequest, Tool

from eaio.agents.base import ChatMessage, ToolCall, ToolSpec
from eaio.agents.host import McpHost
from eaio.agents.ollama import OllamaBackend, ollama_parameters, ollama_tool
from eaio.config import SiteConfig
from eaio.errors import LLMError
from eaio.servers.app import build_server
from ollama_standin import GiB, OllamaStandIn, model_entry


@pytest.fixture
def ollama() -> Iterator[OllamaStandIn]:
    with OllamaStandIn() as standin:
        yield standin


async def _modbus_tools(site: SiteConfig) -> list[ToolSpec]:
    """The real Modbus server's tools, as the host discovers them (no device needs to answer)."""
    server, _ = build_server("modbus", site)
    async with McpHost({"modbus": server}) as host:
        return list(host.tools.values())


@pytest.mark.anyio
async def test_a_turn_sends_tools_options_keep_alive_and_the_conversation(
    site: SiteConfig, ollama: OllamaStandIn
) -> None:
    tools = await _modbus_tools(site)
    ollama.script({"content": "", "tool_calls": [{"name": "modbus__read_points",
                                                  "arguments": {"point_ids": ["zone1.temp"]}}],
                   "prompt_eval_count": 321, "eval_count": 17})
    messages = [
        ChatMessage(role="system", content="be brief"),
        ChatMessage(role="user", content="how warm is zone1?"),
        ChatMessage(role="assistant", content="", tool_calls=[ToolCall(name="modbus__list_points", arguments={})]),
        ChatMessage(role="tool", content='{"points":[]}', tool_name="modbus__list_points"),
    ]
    async with OllamaBackend(ollama.url, "qwen2.5:7b", keep_alive="7m",
                             temperature=0.2) as backend:
        reply = await backend.chat(messages, tools, num_ctx=4096)

    assert reply.message.tool_calls == [ToolCall(name="modbus__read_points", arguments={"point_ids": ["zone1.temp"]})]
    assert (reply.prompt_eval_count, reply.eval_count, reply.model) == (321, 17, "qwen2.5:7b")
    [sent] = ollama.requests
    assert sent["model"] == "qwen2.5:7b"
    assert sent["stream"] is False
    assert sent["keep_alive"] == "7m"
    assert sent["options"] == {"num_ctx": 4096, "temperature": 0.2}
    assert sent["messages"] == [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "how warm is zone1?"},
        # (the client leaves an empty content out)
        {"role": "assistant", "tool_calls": [{"function": {"name": "modbus__list_points", "arguments": {}}}]},
        {"role": "tool", "content": '{"points":[]}', "tool_name": "modbus__list_points"},
    ]
    # Every MCP tool, under its namespaced name, with its description and the parameters we built:
    # the client passed them through without dropping anything.
    by_name = {t["function"]["name"]: t for t in sent["tools"]}
    assert set(by_name) == {t.name for t in tools}
    for spec in tools:
        wire = by_name[spec.name]
        assert wire["type"] == "function"
        assert wire["function"]["description"] == spec.description
        assert wire["function"]["parameters"] == ollama_parameters(spec.input_schema)
    write = by_name["modbus__write_point"]["function"]["parameters"]
    assert write["required"] == ["point_id", "value"]
    assert write["properties"]["value"]["type"] == ["boolean", "integer", "number"]
    assert write["properties"]["duration_s"]["type"] == "number"
    assert "default false" in write["properties"]["dry_run"]["description"]
    read = by_name["modbus__read_points"]["function"]["parameters"]
    assert read["properties"]["point_ids"] == {"type": "array", "items": {"type": "string"},
                                              "description": "Point ids, e.g. ['ahu1.sat', 'zone1.temp']"}


@pytest.mark.anyio
async def test_the_client_would_drop_optional_argument_types_without_the_rewrite(site: SiteConfig) -> None:
    # Why ollama_parameters exists: the client's Tool model keeps only type/items/description/enum
    # of a property, so an MCP anyOf (every optional argument) would arrive typeless.
    spec = next(t for t in await _modbus_tools(site) if t.name == "modbus__list_points")
    raw = {"type": "function", "function": {"name": spec.name, "parameters": spec.input_schema}}
    as_sent = ChatRequest(model="m", tools=[Tool.model_validate(raw)]).model_dump(exclude_none=True)
    assert "type" not in as_sent["tools"][0]["function"]["parameters"]["properties"]["zone"]
    ours = ChatRequest(model="m", tools=[Tool.model_validate(ollama_tool(spec))]).model_dump(exclude_none=True)
    assert ours["tools"][0]["function"]["parameters"]["properties"]["zone"]["type"] == "string"


def test_parameters_inline_refs_and_keep_constraints_in_the_description() -> None:
    schema = {
        "type": "object",
        "$defs": {"Table": {"enum": ["holding", "input"], "type": "string", "title": "Table"}},
        "properties": {
            "table": {"$ref": "#/$defs/Table", "description": "Register table"},
            "count": {"type": "integer", "minimum": 1, "maximum": 125, "description": "How many"},
            "unit": {"anyOf": [{"type": "integer"}, {"type": "null"}], "default": None},
            "where": {"type": "object", "properties": {"zone": {"type": "string"}, "floor": {"type": "integer"}}},
        },
        "required": ["table"],
    }
    out = ollama_parameters(schema)
    assert out["required"] == ["table"]
    assert out["properties"]["table"] == {"type": "string", "enum": ["holding", "input"],
                                          "description": "Register table"}
    assert out["properties"]["count"] == {"type": "integer", "description": "How many (minimum 1; maximum 125)"}
    assert out["properties"]["unit"] == {"type": "integer"}
    assert out["properties"]["where"] == {"type": "object", "description": "fields {zone: string, floor: integer}"}


@pytest.mark.anyio
async def test_tags_lists_the_models_with_their_sizes() -> None:
    models = [model_entry("llama3.1:latest", 5 * GiB, family="llama", parameter_size="8.0B")]
    with OllamaStandIn(models) as standin:
        listed = await OllamaBackend(standin.url, "llama3.1").tags()
    assert [(m.name, m.size, m.family, m.parameter_size) for m in listed] == [
        ("llama3.1:latest", 5 * GiB, "llama", "8.0B")]
    assert standin.received == [("GET", "/api/tags", None)]


@pytest.mark.anyio
async def test_an_unknown_model_is_model_not_found(ollama: OllamaStandIn) -> None:
    ollama.script({"content": "never used"})
    with pytest.raises(LLMError) as err:
        await OllamaBackend(ollama.url, "no-such:70b").chat([ChatMessage(role="user", content="hi")], [])
    assert err.value.code == "model_not_found"
    assert "no-such:70b" in err.value.message
    assert ollama.pending == 1  # Ollama refuses before generating anything


@pytest.mark.anyio
async def test_a_stopped_server_is_unreachable(ollama: OllamaStandIn) -> None:
    ollama.stop()
    backend = OllamaBackend(ollama.url, "qwen2.5:7b")
    with pytest.raises(LLMError) as err:
        await backend.chat([ChatMessage(role="user", content="hi")], [])
    assert err.value.code == "llm_unreachable"
    assert ollama.url in err.value.message
    with pytest.raises(LLMError) as err:
        await backend.tags()
    assert err.value.code == "llm_unreachable"


@pytest.mark.parametrize(
    ("reply", "code", "words"),
    [
        ({"drop": True}, "llm_unreachable", "RemoteProtocolError"),
        ({"status": 500, "error": "llama runner process has terminated"}, "llm_error", "HTTP 500"),
        ({"raw": {"model": "x", "message": {"role": "assistant", "tool_calls": [
            {"function": {"name": "modbus__read_points", "arguments": "zone1.temp"}}]}}},
         "malformed_reply", "arguments"),
        ({"raw": {"done": True}}, "malformed_reply", "message"),
    ],
    ids=["connection-dropped", "server-error", "arguments-not-an-object", "no-message"],
)
@pytest.mark.anyio
async def test_failures_become_llm_errors(ollama: OllamaStandIn, reply: dict[str, Any], code: str,
                                          words: str) -> None:
    ollama.script(reply)
    async with OllamaBackend(ollama.url, "qwen2.5:7b") as backend:
        with pytest.raises(LLMError) as err:
            await backend.chat([ChatMessage(role="user", content="hi")], [])
    assert err.value.code == code
    assert words in err.value.message


@pytest.mark.anyio
async def test_no_answer_within_the_timeout_is_a_timeout(ollama: OllamaStandIn) -> None:
    ollama.script({"content": "too late", "delay_s": 3})
    backend = OllamaBackend(ollama.url, "qwen2.5:7b", timeout_s=0.3)
    with pytest.raises(LLMError) as err:
        await backend.chat([ChatMessage(role="user", content="hi")], [])
    assert err.value.code == "timeout"
    assert "0.3 s" in err.value.message


@pytest.mark.anyio
async def test_embed_show_and_the_default_prompt_count(ollama: OllamaStandIn) -> None:
    # The stand-in's other endpoints, through the same client the memory and the agent use.
    from ollama import AsyncClient

    ollama.embed = lambda texts: [[float(len(t)), 1.0] for t in texts]
    client = AsyncClient(host=ollama.url)
    emb = await client.embed(model="nomic-embed-text", input=["ab", "abcd"])
    assert [list(v) for v in emb.embeddings] == [[2.0, 1.0], [4.0, 1.0]]
    assert (await client.show("qwen2.5:7b")).capabilities == ["completion", "tools"]
    ollama.script({"content": "ok"}, {"content": "ok"})
    big = [{"role": "user", "content": "x" * 30_000}]
    full = await client.chat(model="qwen2.5:7b", messages=big, options={"num_ctx": 32768}, stream=False)
    cut = await client.chat(model="qwen2.5:7b", messages=big, options={"num_ctx": 2048}, stream=False)
    assert full.prompt_eval_count is not None
    assert full.prompt_eval_count > 10_000 >= 2048 == cut.prompt_eval_count  # never more than num_ctx
    assert json.loads(json.dumps(ollama.requests[0]["messages"])) == big
    await client.close()
