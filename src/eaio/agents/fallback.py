"""The fallback chain: the configured model, then the smaller one, then (the caller's) no-LLM planner.

``ModelChain.run`` tries ``llm.model`` (mode ``full``), and when it fails — Ollama unreachable,
the model not pulled, a timeout, a reply it cannot read — runs the task again on
``llm.fallback_model`` (mode ``limited``). When every model failed it raises ``LLMError``; the
runtime then runs the planner and records mode ``degraded``.

Memory pressure picks the smaller model up front: when the main model's size from ``/api/tags``
times ``MEMORY_HEADROOM`` (room for the KV cache and runtime buffers) is more than MemAvailable
in ``/proc/meminfo``, loading it would swap or be refused, so the chain starts with the fallback
model and says why in the result's notes. (A model Ollama already holds loaded is counted the
same way: ``/api/ps`` is not consulted, so the check errs towards the smaller model.)

A task that failed part-way on the main model is run again from the start on the fallback; the
calls the first model made are kept in the result (each call record names its model).
"""

from __future__ import annotations

import logging
from pathlib import Path

from ..config import LLMSettings, SiteConfig
from ..errors import LLMError
from ..models import DecisionMode
from .base import ToolCaller, ToolSpec
from .llm import TaskFailed, TaskResult, WriteHook, run_task
from .ollama import ModelInfo, OllamaBackend

__all__ = ["MEMORY_HEADROOM", "ModelChain", "mem_available"]

log = logging.getLogger(__name__)

MEMORY_HEADROOM = 1.2
GiB = 1024**3


def mem_available(meminfo: Path = Path("/proc/meminfo")) -> int | None:
    """MemAvailable in bytes, or None where the kernel does not say."""
    try:
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def _find(models: list[ModelInfo], name: str) -> ModelInfo | None:
    # Ollama lists "llama3.1:latest" for a model asked for as "llama3.1".
    return next((m for m in models if m.name in (name, f"{name}:latest")), None)


class ModelChain:
    """The configured models, tried in order. The constructor does no I/O."""

    def __init__(self, settings: LLMSettings, *, meminfo: Path = Path("/proc/meminfo")) -> None:
        self.settings = settings
        self.meminfo = meminfo
        fallback = settings.fallback_model
        self.chain: list[tuple[str, DecisionMode]] = [(settings.model, DecisionMode.FULL)]
        if fallback and fallback != settings.model:
            self.chain.append((fallback, DecisionMode.LIMITED))

    @classmethod
    def from_config(cls, cfg: SiteConfig) -> ModelChain | None:
        """None when ``agent.llm.backend`` is "none"."""
        llm = cfg.agent.llm
        return None if llm.backend == "none" else cls(llm)

    async def models(self) -> list[str]:
        """The models the server has (``/api/tags``); ``LLMError`` when it cannot be reached."""
        return [m.name for m in await OllamaBackend.from_settings(self.settings).tags()]

    async def run(
        self,
        host: ToolCaller,
        task: str,
        *,
        tools: list[ToolSpec],
        context: str = "",
        write_hook: WriteHook | None = None,
    ) -> TaskResult:
        chain, notes = list(self.chain), []
        pressure = await self._memory_pressure()
        if pressure is not None and len(chain) > 1:
            chain = chain[1:]
            notes.append(pressure)
            log.warning("%s", pressure)
        failures: list[str] = []
        earlier_calls: list[dict] = []
        for model, mode in chain:
            try:
                async with OllamaBackend.from_settings(self.settings, model) as backend:
                    result = await run_task(backend, host, task, tools=tools, settings=self.settings,
                                            context=context, write_hook=write_hook)
            except LLMError as err:
                failures.append(f"{model} failed: {err}")
                log.warning("model %s failed: %s", model, err)
                if isinstance(err, TaskFailed):
                    earlier_calls.extend(err.partial.tool_calls)
                continue
            limited = mode is DecisionMode.LIMITED or result.mode is DecisionMode.LIMITED
            return result.model_copy(update={
                "mode": DecisionMode.LIMITED if limited else DecisionMode.FULL,
                "model": result.model or model,
                "tool_calls": earlier_calls + result.tool_calls,
                "notes": notes + failures + result.notes,
            })
        raise LLMError("no model could answer: " + "; ".join(notes + failures))

    async def _memory_pressure(self) -> str | None:
        """Why the main model should not be loaded now, or None (also when nothing can be known)."""
        main, fallback = self.chain[0][0], self.chain[-1][0]
        available = mem_available(self.meminfo)
        if available is None or len(self.chain) < 2:
            return None
        try:
            models = await OllamaBackend.from_settings(self.settings).tags()
        except LLMError:
            return None  # the chat turn will say what is wrong, model by model
        info = _find(models, main)
        if info is None or info.size is None or info.size * MEMORY_HEADROOM <= available:
            return None
        return (f"memory: {main} needs about {info.size * MEMORY_HEADROOM / GiB:.1f} GiB "
                f"({info.size / GiB:.1f} GiB model x {MEMORY_HEADROOM}), {available / GiB:.1f} GiB is available: "
                f"started with {fallback}")
