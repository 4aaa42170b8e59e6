"""The agent runtime: workflows on a schedule, on bus events and on demand; one Decision per run.

``run_agent`` (behind ``eaio agent``) opens the MCP host, the records, the memory (when enabled)
and the event triggers (when the bus has a broker), runs the scheduled cycle (comfort + energy)
at start and every ``agent.interval_s``, runs the workflow each event asks for, and leaves
through ``async with`` so every stdio child is closed. ``ask_agent`` (behind ``eaio agent ask``)
runs the ``ask`` workflow once and returns its answer.

With ``agent.llm.backend: ollama`` the model chain (main model, then the smaller one) runs each
workflow; when every model fails the no-LLM planner runs it (mode ``degraded``). Without a
model the planner runs everything.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any, Protocol

import anyio

from ..config import SiteConfig
from ..errors import EaioError
from ..models import Decision, Recommendation
from .approvals import Actuator, ApprovalPolicy
from .base import ToolSpec
from .host import SEP, CallLog, McpHost
from .planner import Planner
from .records import Records
from .workflows import CYCLE, Chain, MemoryLike, Outcome, Trigger, Workflows

__all__ = ["Runtime", "ToolHost", "agent_db_path", "ask_agent", "format_new", "format_write", "run_agent"]

log = logging.getLogger(__name__)
APPROVED_POLL_S = 2.0  # how often the running agent looks for writes approved for it


class ToolHost(Protocol):
    """What the runtime needs of the host (McpHost, or a stand-in in tests)."""

    tools: dict[str, ToolSpec]

    async def call_tool(self, name: str, args: dict[str, Any] | None = None) -> dict[str, Any]: ...

    def drain_calls(self) -> list[CallLog]: ...


def agent_db_path(cfg: SiteConfig) -> Path:
    return cfg.resolve("agent.db")


def format_new(rec: Recommendation) -> str:
    """The one stderr line for a new recommendation."""
    line = f"eaio agent: NEW {rec.severity.value} {rec.kind} {rec.zone or 'site'}: {rec.message}"
    if rec.estimated_saving_kw is not None:
        line += f" (~{rec.estimated_saving_kw:g} kW)"
    return line


def format_write(w: dict[str, Any]) -> str:
    """The one stderr line for a write the agent asked for."""
    what = f"{w['point_id']} = {w['value']}" + (f" for {w['duration_s'] / 60:g} min" if w.get("duration_s") else "")
    if w["status"] == "pending":
        return f"eaio agent: APPROVAL NEEDED {w['approval_id']}: {what} — `eaio approve {w['approval_id']}` " \
               f"or `eaio reject {w['approval_id']}`"
    return f"eaio agent: WRITE {w['status']} {what} ({w['policy']}{': ' + w['note'] if w.get('note') else ''})"


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


class Runtime:
    """Runs workflows: the planner or a model, record, announce what is new."""

    def __init__(
        self,
        host: ToolHost,
        planner: Planner,
        records: Records,
        *,
        echo: Callable[[str], None] = _stderr,
        policy: ApprovalPolicy | None = None,
        chain: Chain | None = None,
        memory: MemoryLike | None = None,
        demand_interval_s: float = 900.0,
        demand_peak_kw: float | None = None,
    ) -> None:
        self.host = host
        self.records = records
        self.echo = echo
        # Without a configured policy every write waits for a person: the safe default.
        self.actuator = Actuator(host, records, policy or ApprovalPolicy([], "approve"))
        self.workflows = Workflows(host, planner, records, self.actuator, chain=chain, memory=memory,
                                   demand_interval_s=demand_interval_s, demand_peak_kw=demand_peak_kw)
        self._busy = anyio.Lock()  # one workflow at a time: they share the host and the records

    async def cycle(self, trigger: str = "schedule") -> Decision:
        """The scheduled cycle: comfort + energy over the whole building."""
        decision, _ = await self.handle(Trigger(CYCLE, source=trigger))
        return decision

    async def handle(self, trigger: Trigger) -> tuple[Decision, Outcome]:
        async with self._busy:
            decision, outcome = await self.workflows.run(trigger)
        for rec in outcome.new:
            self.echo(format_new(rec))
        for w in outcome.writes:
            self.echo(format_write(w))
        log.info("%s %s (%s): %s", trigger.label, trigger.name, decision.mode.value, decision.outcome)
        return decision, outcome

    async def run(
        self,
        interval_s: float,
        *,
        once: bool = False,
        duration: float | None = None,
        signals: bool = True,
        triggers: AsyncIterator[Trigger] | None = None,
    ) -> int:
        """Cycle until ``once``, ``duration`` or a signal, running event triggers in between;
        returns the number of scheduled cycles run."""
        cycles = 0
        with anyio.move_on_after(duration):
            async with anyio.create_task_group() as tg:
                if signals:
                    tg.start_soon(_cancel_on_signal, tg.cancel_scope)
                if triggers is not None and not once:
                    tg.start_soon(self._events, triggers)
                if not once:
                    tg.start_soon(self._approved_writes)
                deadline = anyio.current_time()
                while True:
                    await self.cycle("start" if cycles == 0 else "schedule")
                    cycles += 1
                    if once:
                        break
                    deadline += interval_s
                    await anyio.sleep(max(0.0, deadline - anyio.current_time()))
                tg.cancel_scope.cancel()
        return cycles

    async def _approved_writes(self) -> None:
        """Writes an operator approved for this agent (``eaio approve`` with stdio servers): made
        through this agent's servers, which live as long as it does, so a temporary write is
        restored when its duration ends, not when a short-lived command exits."""
        from .approvals import execute_approved

        while True:
            try:
                for row in await execute_approved(self.host, self.records):
                    self.echo(f"eaio agent: approved write {row.id} {row.status}: {row.point_id} = {row.value}"
                              + (f" ({row.note})" if row.status != "executed" else ""))
            except EaioError as err:  # a failed write is recorded on its row; this only guards the loop
                log.error("approved writes: %s", err)
            await anyio.sleep(APPROVED_POLL_S)

    async def _events(self, triggers: AsyncIterator[Trigger]) -> None:
        async for trigger in triggers:
            try:
                await self.handle(trigger)
            except EaioError as err:  # one failed event run must not end the agent
                log.error("%s %s failed: %s", trigger.label, trigger.name, err)


async def _cancel_on_signal(scope: anyio.CancelScope) -> None:
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as received:
        async for signum in received:
            log.info("%s: stopping", signal.Signals(signum).name)
            scope.cancel()
            return


def _chain(cfg: SiteConfig) -> Chain | None:
    if cfg.agent.llm.backend == "none":
        return None
    from .fallback import ModelChain  # only with a model: the ollama client is not needed otherwise

    return ModelChain.from_config(cfg)


async def _memory(cfg: SiteConfig, stack: AsyncExitStack) -> MemoryLike | None:
    """The memory, when enabled and a model will use it; None (and a warning) when it cannot open."""
    if not cfg.agent.memory.enabled or cfg.agent.llm.backend == "none":
        # Recall feeds prompts; without a model nothing would read what is remembered.
        return None
    try:
        from .memory import Memory

        memory = Memory.from_config(cfg)
        if memory is None:
            return None
        return await stack.enter_async_context(memory)
    except Exception as err:  # memory helps the model; an agent without it still decides safely
        log.warning("memory unavailable (%s); running without recall", err)
        return None


def _log_setup() -> None:
    logging.basicConfig(level=os.environ.get("EAIO_LOG_LEVEL", "WARNING"), stream=sys.stderr)


@contextlib.asynccontextmanager
async def _opened(cfg: SiteConfig, echo: Callable[[str], None] = _stderr) -> AsyncIterator[tuple[Runtime, Records]]:
    async with AsyncExitStack() as stack:
        host = await stack.enter_async_context(McpHost.from_config(cfg))
        servers = [s for s in host.servers if f"{s}{SEP}read_points" in host.tools]
        planner = Planner(host.call_tool, servers, comfort_band_c=cfg.agent.comfort_band_c)
        records = stack.enter_context(Records(agent_db_path(cfg), reopen_within_s=cfg.agent.reopen_within_s))
        memory = await _memory(cfg, stack)
        runtime = Runtime(host, planner, records, echo=echo, policy=ApprovalPolicy.from_config(cfg),
                          chain=_chain(cfg), memory=memory, demand_interval_s=cfg.energy.demand_interval_s,
                          demand_peak_kw=cfg.agent.demand_peak_kw)
        yield runtime, records


async def run_agent(cfg: SiteConfig, once: bool = False, duration: float | None = None) -> None:
    """``eaio agent``: open the servers, cycle on a schedule and on events, record everything in agent.db."""
    _log_setup()
    try:
        async with _opened(cfg) as (runtime, records), AsyncExitStack() as stack:
            triggers = None
            if cfg.events.mqtt is not None and cfg.agent.events and not once:
                from .triggers import EventTriggers

                triggers = await stack.enter_async_context(EventTriggers(cfg))
            await runtime.run(cfg.agent.interval_s, once=once, duration=duration, triggers=triggers)
            counts = records.counts()
        _stderr(f"eaio agent: stopped; {counts['open']} open recommendation(s), {counts['decisions']} decision(s), "
                f"{counts['pending']} write(s) awaiting approval")
    except EaioError as err:
        _stderr(f"eaio agent: {err}")
        raise SystemExit(1) from None


async def ask_agent(cfg: SiteConfig, question: str) -> tuple[Decision, Outcome]:
    """``eaio agent ask``: the ask workflow once (a model when configured, else the planner)."""
    _log_setup()
    async with _opened(cfg, echo=lambda _: None) as (runtime, _records):
        return await runtime.handle(Trigger(("ask",), source="ask", question=question))
