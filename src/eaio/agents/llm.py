"""The tool-use loop: the model chooses the tools, the loop checks and runs them.

One task is a conversation: a system prompt (plus the caller's context, e.g. recalled memories),
the task, then turns until the model answers without calling a tool, or ``llm.max_steps`` turns
have run. Each turn:

- ``num_ctx`` is sized to the prompt: about 3.5 characters of JSON per token (a common rule of
  thumb for English and JSON with BPE tokenizers), plus ``REPLY_BUDGET`` for the answer, rounded
  up to a power of two between ``MIN_CTX`` and ``llm.max_ctx``; ``llm.num_ctx`` overrides it.
  It only grows within a task, and powers of two change rarely: Ollama reloads a model whenever
  ``num_ctx`` changes.
- Truncation: Ollama silently drops the start of a prompt longer than ``num_ctx`` (the system
  prompt and tools first) and reports the tokens it did read as ``prompt_eval_count``. Below
  ``TRUNCATION_RATIO`` of the estimate, the reply was written without the tools or the task in
  view: it is discarded and the turn is redone offering only the tools relevant to the task
  (the core read tools, plus the few whose name and description share the most words with the
  task). The result is then ``truncated`` and its mode ``limited``. The ratio leaves room for
  the estimate being rough (real counts run above chars / 3.5 for JSON); a missing or zero count
  (older Ollama omits it for a cached prompt) is not judged.
- Tool calls come from the reply's ``tool_calls``, or, when a model writes them as text
  (``{"name", "arguments"}``, ``<tool_call>...</tool_call>``, a fenced JSON block), from its
  content — only when the name is one of the tools, so an answer that merely contains JSON stays
  an answer.
- Each call is checked before it runs: an unknown tool, or arguments that break the tool's input
  schema (including an argument the schema does not name), is refused with a tool message that
  says why; the model can then correct itself. Read tools go to the host; write tools (``read_only``
  false) are offered only with a ``write_hook`` and every call to one goes to it (the approval
  policy), never straight to the host. Results are trimmed to ``llm.max_tool_result_chars``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import re
from collections.abc import Awaitable, Callable
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.validators import validator_for
from pydantic import BaseModel, Field

from ..config import LLMSettings
from ..errors import EaioError, LLMError
from ..models import DecisionMode
from .base import ChatMessage, ChatResponse, LLMBackend, ToolCall, ToolCaller, ToolSpec
from .host import SEP, trim_result
from .ollama import ollama_tool, wire_messages

__all__ = [
    "CHARS_PER_TOKEN",
    "MIN_CTX",
    "REPLY_BUDGET",
    "TRUNCATION_RATIO",
    "TaskFailed",
    "TaskResult",
    "WriteHook",
    "check_arguments",
    "estimate_tokens",
    "parse_text_calls",
    "relevant_tools",
    "run_task",
    "size_ctx",
]

log = logging.getLogger(__name__)

CHARS_PER_TOKEN = 3.5
REPLY_BUDGET = 1024
MIN_CTX = 2048
TRUNCATION_RATIO = 0.6
CORE_TOOLS = ("list_points", "read_points")  # kept whatever the task says: without them nothing can be read
RELEVANT_EXTRA = 3  # tools beyond the core ones kept after a truncation

SYSTEM_PROMPT = (
    "You are the operations agent of a building (EAIO). You see the building only through the tools: "
    "call them for live values before you answer, and never invent point ids or values — point ids come "
    "from list_points. Answer briefly and give the values you used."
)
WRITE_PROMPT = (
    " To change a setpoint call write_point (dry_run first); a write may be queued for a person's approval "
    "or denied by policy, and the tool result says which."
)

WriteHook = Callable[[str, dict[str, Any]], Awaitable[dict[str, Any]]]


class TaskResult(BaseModel):
    answer: str = Field(description="The model's final text")
    mode: DecisionMode = Field(description="full: main model, all offered tools; limited: the smaller model, "
                               "or tools cut after a truncation")
    model: str | None = None
    steps: int = Field(description="Model turns taken")
    tool_calls: list[dict[str, Any]] = Field(default_factory=list, description="{tool, arguments, ok, code, "
                                             "result_chars, from_text, model} per call, refused ones too")
    refused: list[str] = Field(default_factory=list, description="Why calls were refused, as sent to the model")
    truncated: bool = False
    notes: list[str] = Field(default_factory=list, description="Why the run went as it did (fallbacks, cuts)")


class TaskFailed(LLMError):
    """``LLMError`` that carries what the task did before the model failed (calls already made)."""

    def __init__(self, message: str, *, code: str, partial: TaskResult) -> None:
        super().__init__(message, code=code)
        self.partial = partial


# -- sizing ---------------------------------------------------------------------------------------
def estimate_tokens(messages: list[ChatMessage], tools: list[ToolSpec]) -> int:
    """Prompt tokens, estimated from the JSON of messages and tools (chars / CHARS_PER_TOKEN).

    Measured on the JSON that goes on the wire (the tools as the model is shown them), not on the
    MCP schemas, whose titles and anyOf make them a third larger than what the model reads.
    """
    msgs = json.dumps(wire_messages(messages), ensure_ascii=False)
    specs = json.dumps([ollama_tool(t) for t in tools], ensure_ascii=False)
    return math.ceil((len(msgs) + len(specs)) / CHARS_PER_TOKEN)


def size_ctx(estimate: int, settings: LLMSettings, floor: int = 0) -> int:
    """``num_ctx`` for a prompt of ``estimate`` tokens: settings.num_ctx, else a power of two that fits."""
    if settings.num_ctx is not None:
        return settings.num_ctx
    ctx = MIN_CTX
    while ctx < estimate + REPLY_BUDGET:
        ctx *= 2
    return max(floor, min(ctx, settings.max_ctx))


def _words(text: str) -> set[str]:
    stop = {"the", "and", "for", "with", "this", "that", "are", "from", "what", "why", "how", "its", "all", "any"}
    out = set()
    for w in re.findall(r"[a-z0-9]+", text.lower()):
        if len(w) < 3 or w in stop:
            continue
        out.add(w[:-1] if len(w) > 3 and w.endswith("s") else w)  # points ~ point
    return out


def relevant_tools(task: str, tools: list[ToolSpec], extra: int = RELEVANT_EXTRA) -> list[ToolSpec]:
    """The core read tools plus the ``extra`` tools sharing most words with the task (original order)."""
    words = _words(task)
    core = {t.name for t in tools if t.name.rsplit(SEP, 1)[-1] in CORE_TOOLS}
    scored = [(len(words & _words(f"{t.name} {t.description}")), i, t.name)
              for i, t in enumerate(tools) if t.name not in core]
    best = {name for score, _, name in sorted(scored, key=lambda s: (-s[0], s[1]))[:extra] if score > 0}
    return [t for t in tools if t.name in core or t.name in best]


# -- checking calls -------------------------------------------------------------------------------
def check_arguments(spec: ToolSpec, arguments: dict[str, Any]) -> str | None:
    """Why ``arguments`` break the tool's input schema, or None. An argument the schema does not name
    is refused too: MCP schemas rarely say ``additionalProperties: false``, and a hallucinated
    argument would otherwise be dropped without the model knowing."""
    schema = dict(spec.input_schema) or {"type": "object"}
    if "properties" in schema and "additionalProperties" not in schema and "patternProperties" not in schema:
        schema["additionalProperties"] = False
    cls = validator_for(schema, default=Draft202012Validator)
    errors = sorted(cls(schema).iter_errors(arguments), key=lambda e: [str(p) for p in e.absolute_path])
    if not errors:
        return None
    found = "; ".join(f"{'.'.join(map(str, e.absolute_path)) or 'arguments'}: {e.message}" for e in errors[:5])
    props = schema.get("properties") or {}
    required = set(schema.get("required") or [])
    names = ", ".join(f"{k}{' (required)' if k in required else ''}" for k in props) or "none"
    return f"invalid arguments for {spec.name}: {found}. Its arguments are: {names}"


_TAGGED = re.compile(r"<tool_call>\s*(.*?)\s*(?:</tool_call>|\Z)", re.DOTALL)
_FENCED = re.compile(r"```[a-zA-Z_]*\s*\n?(.*?)```", re.DOTALL)


def parse_text_calls(content: str, known: set[str]) -> tuple[list[ToolCall], list[str]]:
    """Tool calls a model wrote as text, and what was wrong with the malformed ones.

    Tagged ``<tool_call>`` blocks are calls whatever they name (an unknown name is then refused like
    any other); fenced blocks, a reply that is only JSON, or a JSON object inside prose count only
    when they name a known tool.
    """
    tagged = _TAGGED.findall(content)
    blocks = [(b, True) for b in tagged] or [(b, False) for b in _FENCED.findall(content)]
    if not blocks and content.strip()[:1] in ("{", "["):
        blocks = [(content.strip(), False)]
    calls: list[ToolCall] = []
    problems: list[str] = []
    for text, sure in blocks:
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as err:
            if sure or any(_mentions(text, k) for k in known):
                problems.append(f"malformed tool call (not JSON: {err.msg} at char {err.pos}): {text[:200]}")
            continue
        _collect(obj, known, sure, calls, problems)
    if not blocks:  # prose with an embedded {"name": <known tool>, ...}
        decoder = json.JSONDecoder()
        for match in re.finditer(r"\{", content):
            try:
                obj, _ = decoder.raw_decode(content, match.start())
            except json.JSONDecodeError:
                continue
            if isinstance(obj, dict) and _name_of(obj) in known:
                _collect(obj, known, False, calls, problems)
    return calls, problems


def _mentions(text: str, tool: str) -> bool:
    return f'"{tool}"' in text or f'"{tool.rsplit(SEP, 1)[-1]}"' in text


def _name_of(obj: dict[str, Any]) -> Any:
    fn = obj.get("function")
    return fn.get("name") if isinstance(fn, dict) else obj.get("name")


def _collect(obj: Any, known: set[str], sure: bool, calls: list[ToolCall], problems: list[str]) -> None:
    for item in obj if isinstance(obj, list) else [obj]:
        if not isinstance(item, dict):
            continue
        body = item["function"] if isinstance(item.get("function"), dict) else item
        name = body.get("name")
        if not isinstance(name, str) or not (sure or name in known or _resolve(name, known) is not None):
            if sure:
                problems.append(f"malformed tool call (no tool name): {json.dumps(item)[:200]}")
            continue
        args = body.get("arguments", body.get("parameters", {}))
        if isinstance(args, str):  # some models encode the arguments as a JSON string
            with contextlib.suppress(json.JSONDecodeError):
                args = json.loads(args) if args.strip() else {}
        if not isinstance(args, dict):
            problems.append(f"malformed call of {name}: arguments must be a JSON object, got {json.dumps(args)[:120]}")
            continue
        calls.append(ToolCall(name=name, arguments=args))


def _resolve(name: str, known: set[str] | dict[str, Any]) -> str | None:
    """The tool meant by ``name``: itself, or the one tool whose short name it is (``read_points``)."""
    if name in known:
        return name
    matches = [k for k in known if k.rsplit(SEP, 1)[-1] == name]
    return matches[0] if len(matches) == 1 else None


# -- the loop -------------------------------------------------------------------------------------
class _Task:
    """The state of one task: the conversation, the tools offered, what ran and what was refused."""

    def __init__(self, backend: LLMBackend, host: ToolCaller, task: str, tools: list[ToolSpec],
                 settings: LLMSettings, context: str, write_hook: WriteHook | None) -> None:
        self.backend, self.host, self.task, self.settings, self.write_hook = backend, host, task, settings, write_hook
        self.tools = [t for t in tools if write_hook is not None or _is_read(t)]
        system = SYSTEM_PROMPT + (WRITE_PROMPT if any(not _is_read(t) for t in self.tools) else "")
        if context.strip():
            system += "\n\n" + context.strip()
        self.messages = [ChatMessage(role="system", content=system), ChatMessage(role="user", content=task)]
        self.calls: list[dict[str, Any]] = []
        self.refused: list[str] = []
        self.notes: list[str] = []
        self.truncated = False
        self.reduced = False
        self.num_ctx = 0
        self.model: str | None = None

    def result(self, answer: str, steps: int) -> TaskResult:
        # A reply written from a truncated prompt is limited whether or not tools could be cut.
        return TaskResult(answer=answer, mode=DecisionMode.LIMITED if self.truncated else DecisionMode.FULL,
                          model=self.model, steps=steps, tool_calls=self.calls, refused=self.refused,
                          truncated=self.truncated, notes=self.notes)

    async def run(self) -> TaskResult:
        nudged, last, steps = False, "", 0
        for steps in range(1, self.settings.max_steps + 1):
            reply = await self._turn(steps)
            if reply is None:  # truncated; redone with fewer tools on the next step
                continue
            msg = reply.message
            calls, from_text, problems = msg.tool_calls, False, []
            if not calls:
                calls, problems = parse_text_calls(msg.content, {t.name for t in self.tools})
                from_text = True
            if not calls and not problems:
                if msg.content.strip():
                    return self.result(msg.content.strip(), steps)
                if nudged:
                    raise self._failed("the model answered with nothing twice", "malformed_reply", steps)
                nudged = True
                self.messages.append(ChatMessage(role="user", content="Your reply was empty. Answer the task."))
                continue
            last = msg.content.strip()
            self.messages.append(ChatMessage(role="assistant", content=msg.content,
                                             tool_calls=[] if from_text else calls))
            for problem in problems:
                self._refuse(None, {}, "malformed_call", problem, from_text=True)
            for call in calls:
                await self._run_call(call, from_text)
        answer = f"Stopped after {self.settings.max_steps} model turns (llm.max_steps) without a final answer."
        self.notes.append(answer)
        return self.result(f"{answer} Last reply: {last}" if last else answer, steps)

    async def _turn(self, step: int) -> ChatResponse | None:
        estimate = estimate_tokens(self.messages, self.tools)
        self.num_ctx = size_ctx(estimate, self.settings, floor=self.num_ctx)
        try:
            reply = await self.backend.chat(self.messages, self.tools, num_ctx=self.num_ctx)
        except LLMError as err:
            raise self._failed(err.message, err.code, step - 1) from err
        self.model = reply.model or self.model
        read = reply.prompt_eval_count
        if read and read < TRUNCATION_RATIO * estimate:
            self.truncated = True
            fewer = relevant_tools(self.task, self.tools)
            note = (f"step {step}: the model read {read} of about {estimate} prompt tokens (num_ctx {self.num_ctx}): "
                    "the prompt was truncated")
            if not self.reduced and len(fewer) < len(self.tools):
                self.reduced = True
                self.notes.append(f"{note}; redone with {len(fewer)} of {len(self.tools)} tools: "
                                  + ", ".join(t.name for t in fewer))
                log.warning("%s; offering only %d tools", note, len(fewer))
                self.tools = fewer
                return None
            self.notes.append(f"{note}; nothing left to cut, the reply is used as it is")
        return reply

    async def _run_call(self, call: ToolCall, from_text: bool) -> None:
        offered = {t.name: t for t in self.tools}
        name = _resolve(call.name, offered)
        if name is None:
            why = f"unknown tool '{call.name}'; the tools are: {', '.join(offered) or 'none'}"
            self._refuse(call.name, call.arguments, "unknown_tool", why, from_text)
            return
        spec = offered[name]
        why = check_arguments(spec, call.arguments)
        if why is not None:
            self._refuse(name, call.arguments, "invalid_argument", why, from_text)
            return
        try:
            if _is_read(spec):
                result = await self.host.call_tool(name, call.arguments)
            else:
                assert self.write_hook is not None  # write tools are offered only with a hook
                result = await self.write_hook(name, call.arguments)
        except EaioError as err:
            self._record(name, call.arguments, False, err.code, len(str(err)), from_text)
            self._tool_message(name, str(err))
            return
        text = json.dumps(result, ensure_ascii=False, separators=(",", ":"), default=str)
        self._record(name, call.arguments, True, None, len(text), from_text)
        # Whole items of the longest list are kept (never a cut in the middle of the JSON), with a note
        # telling the model how much was left out and how to narrow the call.
        self._tool_message(name, text if len(text) <= self.settings.max_tool_result_chars
                           else trim_result(result, self.settings.max_tool_result_chars))

    def _refuse(self, name: str | None, args: dict[str, Any], code: str, why: str, from_text: bool) -> None:
        self.refused.append(why)
        self._record(name, args, False, code, 0, from_text)
        self._tool_message(name, f"refused: {why}")

    def _record(self, name: str | None, args: dict[str, Any], ok: bool, code: str | None, chars: int,
                from_text: bool) -> None:
        self.calls.append({"tool": name, "arguments": args, "ok": ok, "code": code, "result_chars": chars,
                           "from_text": from_text, "model": self.model})

    def _tool_message(self, name: str | None, content: str) -> None:
        self.messages.append(ChatMessage(role="tool", content=content, tool_name=name))

    def _failed(self, message: str, code: str, steps: int) -> TaskFailed:
        return TaskFailed(message, code=code, partial=self.result("", steps))


def _is_read(spec: ToolSpec) -> bool:
    return spec.read_only and not spec.name.endswith(f"{SEP}write_point")


async def run_task(
    backend: LLMBackend,
    host: ToolCaller,
    task: str,
    *,
    tools: list[ToolSpec],
    settings: LLMSettings,
    context: str = "",
    write_hook: WriteHook | None = None,
) -> TaskResult:
    """Run ``task`` with the model choosing among ``tools``; raises ``TaskFailed`` (an ``LLMError``)
    when the model cannot be reached or answers nothing usable."""
    return await _Task(backend, host, task, tools, settings, context, write_hook).run()
