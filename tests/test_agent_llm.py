"""The tool-use loop and the fallback chain: the real ``ollama`` client against the stand-in,
tool calls run against the real Modbus MCP server (in process) reading the virtual building.

The stand-in plays the model: each test scripts its replies, then checks what the agent did
with them (calls made, refused, routed to the write hook) and what it sent back (the next
request the stand-in received).
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import pytest

from eaio.agents.base import ToolSpec
from eaio.agents.fallback import ModelChain
from eaio.agents.host import McpHost
from eaio.agents.llm import TaskFailed, relevant_tools, run_task
from eaio.agents.ollama import OllamaBackend
from eaio.config import LLMSettings, SiteConfig
from eaio.errors import LLMError
from eaio.models import DecisionMode
from eaio.servers.app import build_server
from ollama_standin import GiB, OllamaStandIn, model_entry

MAIN, SMALL = "qwen2.5:7b", "qwen2.5:1.5b"


@pytest.fixture
def ollama() -> Iterator[OllamaStandIn]:
    with OllamaStandIn() as standin:
        yield standin


@asynccontextmanager
async def modbus(site: SiteConfig) -> AsyncIterator[McpHost]:
    server, _ = build_server("modbus", site)
    async with McpHost({"modbus": server}) as host:
        yield host


def settings(ollama: OllamaStandIn, **changes: Any) -> LLMSettings:
    return LLMSettings(**{"backend": "ollama", "url": ollama.url, "model": MAIN, "fallback_model": SMALL, **changes})


def call(name: str, **arguments: Any) -> dict[str, Any]:
    return {"tool_calls": [{"name": name, "arguments": arguments}]}


def tool_messages(request: dict[str, Any]) -> list[dict[str, Any]]:
    return [m for m in request["messages"] if m["role"] == "tool"]


def offered(request: dict[str, Any]) -> list[str]:
    return [t["function"]["name"] for t in request["tools"]]


async def task(ollama: OllamaStandIn, host: McpHost, text: str, **kw: Any) -> Any:
    s = kw.pop("llm", None) or settings(ollama)
    async with OllamaBackend.from_settings(s) as backend:
        return await run_task(backend, host, text, tools=list(host.tools.values()), settings=s, **kw)


# -- the loop on real tools ----------------------------------------------------------------------
@pytest.mark.anyio
async def test_the_model_reads_the_building_through_the_mcp_tools(
    site: SiteConfig, sim: Any, ollama: OllamaStandIn
) -> None:
    ollama.script(call("modbus__read_points", point_ids=["zone2.temp", "zone2.cool_sp"]),
                  {"content": "zone2 is too warm."})
    async with modbus(site) as host:
        result = await task(ollama, host, "Is zone2 too warm?", context="Site: demo office.")
        journal = host.drain_calls()

    assert result.answer == "zone2 is too warm."
    assert (result.mode, result.model, result.steps, result.truncated) == (DecisionMode.FULL, MAIN, 2, False)
    assert result.tool_calls == [{"tool": "modbus__read_points", "arguments": {"point_ids": ["zone2.temp",
                                  "zone2.cool_sp"]}, "ok": True, "code": None,
                                  "result_chars": result.tool_calls[0]["result_chars"], "from_text": False,
                                  "model": MAIN}]
    assert [(c.tool, c.ok) for c in journal] == [("modbus__read_points", True)]  # it really ran, once

    first, second = ollama.requests
    assert first["messages"][0]["role"] == "system"
    assert first["messages"][0]["content"].endswith("Site: demo office.")
    assert first["messages"][1] == {"role": "user", "content": "Is zone2 too warm?"}
    # Read tools only: nothing can write without a write hook.
    assert set(offered(first)) == {"modbus__list_devices", "modbus__list_points", "modbus__read_points",
                                   "modbus__server_health", "modbus__read_registers"}
    assert first["keep_alive"] == "10m"
    assert first["options"]["temperature"] == 0.1
    ctx = first["options"]["num_ctx"]
    assert ctx >= 2048
    assert ctx & (ctx - 1) == 0  # a power of two: Ollama reloads the model when num_ctx changes
    assert second["options"]["num_ctx"] >= ctx
    # The reading went back to the model as the tool's structured result.
    [reply] = tool_messages(second)
    assert reply["tool_name"] == "modbus__read_points"
    readings = {r["point_id"]: r for r in json.loads(reply["content"])["readings"]}
    assert readings["zone2.temp"]["quality"] == "good"
    assert readings["zone2.temp"]["value"] == pytest.approx(sim.value("zone2.temp"), abs=1.0)
    assert readings["zone2.cool_sp"]["value"] == sim.value("zone2.cool_sp")


@pytest.mark.parametrize(
    "content",
    [
        '<tool_call>\n{"name": "modbus__read_points", "arguments": {"point_ids": ["zone1.temp"]}}\n</tool_call>',
        'I will read it.\n```json\n{"name": "read_points", "arguments": {"point_ids": ["zone1.temp"]}}\n```',
        '{"name": "modbus__read_points", "parameters": "{\\"point_ids\\": [\\"zone1.temp\\"]}"}',
        'Let me check {"name": "modbus__read_points", "arguments": {"point_ids": ["zone1.temp"]}} first.',
    ],
    ids=["hermes-tag", "fenced-short-name", "bare-json-string-arguments", "inside-prose"],
)
@pytest.mark.anyio
async def test_calls_written_as_text_are_run(site: SiteConfig, sim: Any, ollama: OllamaStandIn,
                                             content: str) -> None:
    ollama.script({"content": content}, {"content": "zone1 is fine."})
    async with modbus(site) as host:
        result = await task(ollama, host, "How is zone1?")
        journal = host.drain_calls()
    assert result.answer == "zone1 is fine."
    assert [(c["tool"], c["arguments"], c["ok"], c["from_text"]) for c in result.tool_calls] == [
        ("modbus__read_points", {"point_ids": ["zone1.temp"]}, True, True)]
    assert [c.tool for c in journal] == ["modbus__read_points"]
    second = ollama.requests[1]
    assert second["messages"][2] == {"role": "assistant", "content": content}  # kept as the model wrote it
    [reply] = tool_messages(second)
    assert json.loads(reply["content"])["readings"][0]["point_id"] == "zone1.temp"


@pytest.mark.parametrize(
    ("content", "why"),
    [
        ('<tool_call>{"name": "modbus__read_points", "arguments": {"point_ids": [</tool_call>',
         "malformed tool call (not JSON"),
        ('{"name": "modbus__read_points", "arguments": ["zone1.temp"]}',
         "malformed call of modbus__read_points: arguments must be a JSON object"),
        ('<tool_call>{"arguments": {"point_ids": ["zone1.temp"]}}</tool_call>', "malformed tool call (no tool name)"),
    ],
    ids=["bad-json", "arguments-not-an-object", "no-name"],
)
@pytest.mark.anyio
async def test_malformed_calls_are_refused_with_a_message_back(site: SiteConfig, sim: Any, ollama: OllamaStandIn,
                                                               content: str, why: str) -> None:
    ollama.script({"content": content}, {"content": "sorry, I cannot tell."})
    async with modbus(site) as host:
        result = await task(ollama, host, "How is zone1?")
        assert host.drain_calls() == []  # nothing reached the server
    assert result.answer == "sorry, I cannot tell."
    assert len(result.refused) == 1
    assert result.refused[0].startswith(why)
    assert [(c["ok"], c["code"]) for c in result.tool_calls] == [(False, "malformed_call")]
    [reply] = tool_messages(ollama.requests[1])
    assert reply["content"] == f"refused: {result.refused[0]}"


@pytest.mark.anyio
async def test_json_that_names_no_tool_is_an_answer(site: SiteConfig, ollama: OllamaStandIn) -> None:
    ollama.script({"content": '{"zone": "zone1", "status": "ok"}'})
    async with modbus(site) as host:
        result = await task(ollama, host, "Answer in JSON: how is zone1?")
    assert result.answer == '{"zone": "zone1", "status": "ok"}'
    assert (result.steps, result.tool_calls, result.refused) == (1, [], [])


@pytest.mark.anyio
async def test_a_hallucinated_tool_is_refused(site: SiteConfig, ollama: OllamaStandIn) -> None:
    ollama.script(call("modbus__reset_building", confirm=True), {"content": "I cannot reset it."})
    async with modbus(site) as host:
        result = await task(ollama, host, "Reset the building")
        assert host.drain_calls() == []
    [why] = result.refused
    assert why.startswith("unknown tool 'modbus__reset_building'; the tools are: modbus__list_devices, ")
    assert "modbus__read_points" in why
    assert "write_point" not in why  # not offered, so not named
    second = ollama.requests[1]
    assert second["messages"][2]["tool_calls"] == [{"function": {"name": "modbus__reset_building",
                                                                 "arguments": {"confirm": True}}}]
    assert tool_messages(second) == [{"role": "tool", "content": f"refused: {why}",
                                      "tool_name": "modbus__reset_building"}]
    assert result.tool_calls[0]["code"] == "unknown_tool"


@pytest.mark.parametrize(
    ("arguments", "expected"),
    [
        ({"point_ids": "zone1.temp"}, "point_ids: 'zone1.temp' is not of type 'array'"),
        ({"point_ids": ["zone1.temp"], "verbose": True}, "('verbose' was unexpected)"),
        ({}, "arguments: 'point_ids' is a required property"),
    ],
    ids=["wrong-type", "hallucinated-argument", "missing-argument"],
)
@pytest.mark.anyio
async def test_arguments_that_break_the_schema_are_refused_before_the_call(
    site: SiteConfig, ollama: OllamaStandIn, arguments: dict[str, Any], expected: str
) -> None:
    ollama.script(call("modbus__read_points", **arguments),
                  call("modbus__read_points", point_ids=["zone1.temp"]), {"content": "done"})
    async with modbus(site) as host:
        result = await task(ollama, host, "How warm is zone1?")
        journal = host.drain_calls()
    [why] = result.refused
    assert why.startswith("invalid arguments for modbus__read_points: ")
    assert expected in why
    assert why.endswith("Its arguments are: point_ids (required)")
    # Refused before the call: only the corrected call reached the server (it fails: no sim runs here, so the
    # device is offline; what matters is that the refused one never went out).
    assert [c.tool for c in journal] == ["modbus__read_points"]
    assert (result.tool_calls[0]["ok"], result.tool_calls[0]["code"]) == (False, "invalid_argument")
    assert tool_messages(ollama.requests[1]) == [{"role": "tool", "content": f"refused: {why}",
                                                  "tool_name": "modbus__read_points"}]


@pytest.mark.anyio
async def test_a_tool_error_goes_back_as_its_code_and_message(site: SiteConfig, sim: Any,
                                                              ollama: OllamaStandIn) -> None:
    ollama.script(call("modbus__read_points", point_ids=["zone9.temp"]), {"content": "no such zone"})
    async with modbus(site) as host:
        result = await task(ollama, host, "How warm is zone9?")
    assert [(c["ok"], c["code"]) for c in result.tool_calls] == [(False, "unknown_point")]
    [reply] = tool_messages(ollama.requests[1])
    assert reply["content"].startswith("unknown_point: ")
    assert "zone9.temp" in reply["content"]
    assert result.refused == []  # the call was valid; the device side said no


@pytest.mark.anyio
async def test_large_results_are_trimmed_and_say_so(site: SiteConfig, ollama: OllamaStandIn) -> None:
    ollama.script(call("modbus__list_points"), {"content": "many points"})
    async with modbus(site) as host:
        result = await task(ollama, host, "What points are there?", llm=settings(ollama, max_tool_result_chars=1500))
    full = result.tool_calls[0]["result_chars"]
    assert full > 1500
    [reply] = tool_messages(ollama.requests[1])
    assert len(reply["content"]) <= 1500
    # Whole points, still JSON, and a note on how many were left out and how to see them.
    trimmed = json.loads(reply["content"])
    assert 0 < len(trimmed["points"]) < len(site.points())
    assert trimmed["_trimmed"].startswith(f"points: {len(trimmed['points'])} of {len(site.points())} items shown")


@pytest.mark.anyio
async def test_truncation_is_answered_by_offering_only_the_relevant_tools(site: SiteConfig, sim: Any,
                                                                        ollama: OllamaStandIn) -> None:
    # num_ctx 512 cannot hold five tool schemas: the stand-in, like Ollama, reads only 512 tokens.
    ollama.script({"content": "written without seeing the tools"},
                  call("modbus__read_points", point_ids=["zone2.temp"]), {"content": "zone2 reads warm."})
    async with modbus(site) as host:
        result = await task(ollama, host, "Is zone2 too warm?", llm=settings(ollama, num_ctx=512))
    first, second, _ = ollama.requests
    assert first["options"]["num_ctx"] == 512
    assert len(offered(first)) == 5
    assert offered(second) == ["modbus__list_points", "modbus__read_points"]
    assert second["messages"] == first["messages"]  # the truncated reply was dropped, the turn redone
    assert result.answer == "zone2 reads warm."
    assert (result.truncated, result.mode, result.steps) == (True, DecisionMode.LIMITED, 3)
    assert "the prompt was truncated; redone with 2 of 5 tools" in result.notes[0]


@pytest.mark.parametrize(
    ("count", "truncated"),
    [(10, True), (0, False), (None, False)],
    ids=["far-below-the-estimate", "zero-cached-prompt", "not-reported"],
)
@pytest.mark.anyio
async def test_truncation_with_nothing_left_to_cut_keeps_the_reply_but_says_so(
    site: SiteConfig, ollama: OllamaStandIn, count: int | None, truncated: bool
) -> None:
    reply: dict[str, Any] = {"content": "an answer"}
    reply["raw" if count is None else "prompt_eval_count"] = (
        {"model": MAIN, "message": {"role": "assistant", "content": "an answer"}, "done": True}
        if count is None else count)
    ollama.script(reply)
    s = settings(ollama)
    async with modbus(site) as host, OllamaBackend.from_settings(s) as backend:
        core = [host.tools["modbus__list_points"], host.tools["modbus__read_points"]]
        result = await run_task(backend, host, "Is zone2 too warm?", tools=core, settings=s)
    assert (result.answer, result.steps, len(ollama.requests)) == ("an answer", 1, 1)
    assert result.truncated is truncated
    assert result.mode is (DecisionMode.LIMITED if truncated else DecisionMode.FULL)
    if truncated:
        [note] = result.notes
        assert re.fullmatch(r"step 1: the model read 10 of about \d+ prompt tokens \(num_ctx 2048\): the prompt "
                            r"was truncated; nothing left to cut, the reply is used as it is", note)
    else:
        assert result.notes == []


def test_relevant_tools_keep_the_core_reads_and_the_best_matches() -> None:
    tools = [ToolSpec(name=f"modbus__{n}", description=d, read_only=True) for n, d in [
        ("list_devices", "List the devices"), ("list_points", "List points"), ("read_points", "Read points"),
        ("read_registers", "Raw Modbus registers of a device"), ("server_health", "Health of this server"),
        ("read_history", "Past values of a point over a time range"),
    ]]
    names = [t.name for t in relevant_tools("show the history of zone1 over the last day", tools)]
    assert names == ["modbus__list_points", "modbus__read_points", "modbus__read_history"]


@pytest.mark.anyio
async def test_steps_are_bounded(site: SiteConfig, sim: Any, ollama: OllamaStandIn) -> None:
    ollama.script(*[call("modbus__read_points", point_ids=["zone1.temp"]) for _ in range(3)])
    async with modbus(site) as host:
        result = await task(ollama, host, "Watch zone1", llm=settings(ollama, max_steps=3))
    assert result.steps == 3
    assert result.answer.startswith("Stopped after 3 model turns (llm.max_steps) without a final answer.")
    assert len(result.tool_calls) == 3
    assert len(ollama.requests) == 3
    assert ollama.pending == 0


@pytest.mark.anyio
async def test_an_empty_answer_twice_is_an_llm_error(site: SiteConfig, sim: Any, ollama: OllamaStandIn) -> None:
    ollama.script(call("modbus__read_points", point_ids=["zone1.temp"]), {"content": ""}, {"content": "  "})
    async with modbus(site) as host:
        with pytest.raises(TaskFailed) as err:
            await task(ollama, host, "How is zone1?")
    assert err.value.code == "malformed_reply"
    assert [c["tool"] for c in err.value.partial.tool_calls] == ["modbus__read_points"]  # what it did is kept
    assert ollama.requests[2]["messages"][-1] == {"role": "user", "content": "Your reply was empty. Answer the task."}


# -- writes ---------------------------------------------------------------------------------------
@pytest.mark.anyio
async def test_write_tools_are_offered_only_with_a_hook_and_go_to_it(site: SiteConfig, sim: Any,
                                                                      ollama: OllamaStandIn) -> None:
    before = sim.value("zone3.cool_sp")
    requested: list[tuple[str, dict[str, Any]]] = []

    async def hook(tool: str, arguments: dict[str, Any]) -> dict[str, Any]:
        requested.append((tool, arguments))
        return {"status": "pending_approval", "approval_id": "ap-1"}

    write = call("modbus__write_point", point_id="zone3.cool_sp", value=28.0, duration_s=3600,
                 reason="zone3 is empty")
    ollama.script(write, {"content": "without a hook"}, write, {"content": "queued for approval"})
    async with modbus(site) as host:
        refused = await task(ollama, host, "Set zone3 back")
        allowed = await task(ollama, host, "Set zone3 back", write_hook=hook)
        journal = host.drain_calls()

    assert "modbus__write_point" not in offered(ollama.requests[0])
    assert refused.refused[0].startswith("unknown tool 'modbus__write_point'")
    assert "modbus__write_point" in offered(ollama.requests[2])
    assert "write_point (dry_run first)" in ollama.requests[2]["messages"][0]["content"]
    assert requested == [("modbus__write_point", {"point_id": "zone3.cool_sp", "value": 28.0, "duration_s": 3600,
                                                  "reason": "zone3 is empty"})]
    assert allowed.answer == "queued for approval"
    assert json.loads(tool_messages(ollama.requests[3])[0]["content"]) == {"status": "pending_approval",
                                                                          "approval_id": "ap-1"}
    assert journal == []  # never straight to the server
    assert sim.value("zone3.cool_sp") == before


@pytest.mark.anyio
async def test_a_write_that_breaks_the_schema_never_reaches_the_hook(site: SiteConfig,
                                                                    ollama: OllamaStandIn) -> None:
    requested: list[str] = []

    async def hook(tool: str, arguments: dict[str, Any]) -> dict[str, Any]:
        requested.append(tool)
        return {"status": "written"}

    ollama.script(call("modbus__write_point", point_id="zone3.cool_sp", value="very high"), {"content": "no"})
    async with modbus(site) as host:
        result = await task(ollama, host, "Set zone3 back", write_hook=hook)
    assert requested == []
    assert "value: 'very high' is not valid under any of the given schemas" in result.refused[0]


# -- the fallback chain ---------------------------------------------------------------------------
def chain(ollama: OllamaStandIn, **changes: Any) -> ModelChain:
    return ModelChain(settings(ollama, **changes))


@pytest.mark.anyio
async def test_the_main_model_runs_in_full_mode(site: SiteConfig, ollama: OllamaStandIn) -> None:
    ollama.script({"content": "all fine"})
    async with modbus(site) as host:
        result = await chain(ollama).run(host, "Any problems?", tools=list(host.tools.values()))
    assert (result.mode, result.model, result.notes) == (DecisionMode.FULL, MAIN, [])
    assert [r["model"] for r in ollama.requests] == [MAIN]
    assert await chain(ollama).models() == [MAIN, SMALL, "nomic-embed-text:latest"]


@pytest.mark.anyio
async def test_a_missing_main_model_falls_back_to_the_smaller_one(site: SiteConfig, ollama: OllamaStandIn) -> None:
    ollama.script({"content": "the small model answers"})
    async with modbus(site) as host:
        result = await chain(ollama, model="llama3.3:70b").run(host, "Any problems?", tools=list(host.tools.values()))
    assert (result.answer, result.mode, result.model) == ("the small model answers", DecisionMode.LIMITED, SMALL)
    assert [r["model"] for r in ollama.requests] == ["llama3.3:70b", SMALL]
    assert result.notes[0].startswith("llama3.3:70b failed: model_not_found: ")


@pytest.mark.anyio
async def test_a_main_model_failing_mid_task_keeps_its_calls(site: SiteConfig, sim: Any,
                                                             ollama: OllamaStandIn) -> None:
    ollama.script(call("modbus__read_points", point_ids=["zone1.temp"]),
                  {"status": 500, "error": "llama runner process has terminated: signal: killed"},
                  {"content": "zone1 is fine"})
    async with modbus(site) as host:
        result = await chain(ollama).run(host, "How is zone1?", tools=list(host.tools.values()))
    assert (result.mode, result.model) == (DecisionMode.LIMITED, SMALL)
    assert [(c["tool"], c["model"]) for c in result.tool_calls] == [("modbus__read_points", MAIN)]
    assert "llama runner process has terminated" in result.notes[0]


@pytest.mark.anyio
async def test_every_model_failing_is_an_llm_error(site: SiteConfig, ollama: OllamaStandIn) -> None:
    ollama.stop()
    async with modbus(site) as host:
        with pytest.raises(LLMError) as err:
            await chain(ollama).run(host, "Any problems?", tools=list(host.tools.values()))
    assert err.value.message.startswith("no model could answer: ")
    assert f"{MAIN} failed: llm_unreachable" in err.value.message
    assert f"{SMALL} failed: llm_unreachable" in err.value.message
    ollama.start()  # back on the same port: the same chain works again
    ollama.script({"content": "back"})
    async with modbus(site) as host:
        result = await chain(ollama).run(host, "Any problems?", tools=list(host.tools.values()))
    assert (result.answer, result.mode) == ("back", DecisionMode.FULL)


@pytest.mark.anyio
async def test_memory_pressure_picks_the_smaller_model_up_front(site: SiteConfig) -> None:
    huge = 1 << 50  # a 1 PiB model: more than any machine's MemAvailable
    with OllamaStandIn([model_entry(MAIN, huge), model_entry(SMALL, 1 * GiB)]) as standin:
        standin.script({"content": "small model here"})
        async with modbus(site) as host:
            result = await chain(standin).run(host, "Any problems?", tools=list(host.tools.values()))
    assert [r["model"] for r in standin.requests] == [SMALL]  # the main model was never asked to load
    assert (result.mode, result.model) == (DecisionMode.LIMITED, SMALL)
    assert result.notes[0].startswith(f"memory: {MAIN} needs about ")
    assert result.notes[0].endswith(f"started with {SMALL}")


def test_from_config_is_none_without_a_backend(site: SiteConfig) -> None:
    assert ModelChain.from_config(site) is None  # the demo runs the no-LLM planner
    with_llm = site.model_copy(update={"agent": site.agent.model_copy(update={
        "llm": LLMSettings(backend="ollama", model="m:1", fallback_model=None)})})
    built = ModelChain.from_config(with_llm)
    assert built is not None
    assert built.chain == [("m:1", DecisionMode.FULL)]
