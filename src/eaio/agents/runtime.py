"""The periodic agent: a cycle at start and every ``agent.interval_s``, one Decision per cycle.

``run_agent`` (behind ``eaio agent``) opens the MCP host, runs cycles until the duration ends
or SIGINT/SIGTERM arrives, and leaves through ``async with`` so every stdio child is closed.
The LLM seam is ``Runtime(..., backend=...)``: with no backend the no-LLM planner runs and the
decision's mode is "degraded".
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import anyio

from ..config import SiteConfig
from ..errors import EaioError
from ..models import Decision, DecisionMode, Recommendation
from .base import LLMBackend
from .host import SEP, CallLog, McpHost
from .planner import Planner
from .records import Records

__all__ = ["Runtime", "ToolHost", "agent_db_path", "format_new", "run_agent"]

log = logging.getLogger(__name__)


class ToolHost(Protocol):
    """What the runtime needs of the host (McpHost, or a stand-in in tests)."""

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


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


class Runtime:
    """Runs cycles: advise (planner, or later an LLM), record, announce what is new."""

    def __init__(
        self,
        host: ToolHost,
        planner: Planner,
        records: Records,
        backend: LLMBackend | None = None,
        *,
        echo: Callable[[str], None] = _stderr,
    ) -> None:
        self.host = host
        self.planner = planner
        self.records = records
        self.backend = backend
        self.echo = echo

    async def cycle(self, trigger: str = "schedule") -> Decision:
        if self.backend is not None:
            # v0 has no LLM workflow yet; the planner's answer is what a failed model falls back to.
            log.warning("LLM backend '%s' is not used by runtime v0; running the no-LLM planner", self.backend.name)
        self.host.drain_calls()  # calls made outside a cycle are not this decision's
        result = await self.planner.cycle()
        new = [rec for rec in result.recommendations if self.records.upsert(rec)]
        # An incomplete cycle saw only part of the building: it must not resolve what it missed.
        resolved = self.records.resolve_absent(result.recommendations) if result.complete else 0
        outcome = f"{len(result.recommendations)} recommendation(s), {len(new)} new, {resolved} resolved"
        if result.errors:
            outcome += f", {len(result.errors)} failed call(s)"
        decision = Decision(
            trigger=trigger,
            mode=DecisionMode.DEGRADED,
            inputs=result.inputs | {"errors": result.errors},
            tool_calls=[c.as_dict() for c in self.host.drain_calls()],
            outputs=result.recommendations,
            outcome=outcome,
        )
        self.records.record_decision(decision)
        for rec in new:
            self.echo(format_new(rec))
        log.info("cycle %s: %s", decision.id[:8], outcome)
        return decision

    async def run(
        self, interval_s: float, *, once: bool = False, duration: float | None = None, signals: bool = True
    ) -> int:
        """Cycle until ``once``, ``duration`` or a signal; returns the number of cycles run."""
        cycles = 0
        with anyio.move_on_after(duration):
            async with anyio.create_task_group() as tg:
                if signals:
                    tg.start_soon(_cancel_on_signal, tg.cancel_scope)
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


async def _cancel_on_signal(scope: anyio.CancelScope) -> None:
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as received:
        async for signum in received:
            log.info("%s: stopping", signal.Signals(signum).name)
            scope.cancel()
            return


def _backend(cfg: SiteConfig) -> LLMBackend | None:
    if cfg.agent.llm.backend != "none":
        log.warning("llm.backend '%s' is not available in v0; the no-LLM planner runs", cfg.agent.llm.backend)
    return None


async def run_agent(cfg: SiteConfig, once: bool = False, duration: float | None = None) -> None:
    """``eaio agent``: open the servers, cycle on a schedule, record everything in agent.db."""
    logging.basicConfig(level=os.environ.get("EAIO_LOG_LEVEL", "WARNING"), stream=sys.stderr)
    try:
        async with McpHost.from_config(cfg) as host:
            servers = [s for s in host.servers if f"{s}{SEP}read_points" in host.tools]
            planner = Planner(host.call_tool, servers, comfort_band_c=cfg.agent.comfort_band_c)
            with Records(agent_db_path(cfg)) as records:
                runtime = Runtime(host, planner, records, _backend(cfg))
                await runtime.run(cfg.agent.interval_s, once=once, duration=duration)
                counts = records.counts()
        _stderr(f"eaio agent: stopped; {counts['open']} open recommendation(s), {counts['decisions']} decision(s)")
    except EaioError as err:
        _stderr(f"eaio agent: {err}")
        raise SystemExit(1) from None
