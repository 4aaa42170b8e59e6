"""`eaio demo`: the whole suite against the virtual building, on embedded defaults only.

Each part runs as its own child process, exactly as an operator would run it: the sim, the
Modbus MCP server (streamable HTTP, so a person's MCP client can join in), ingest, and the
agent (which reaches the server by URL). Children live in their own process groups so that
Ctrl-C reaches only this supervisor, which then stops them in order; on Linux they also die
with it if it is killed outright, so nothing is ever orphaned.
"""

from __future__ import annotations

import asyncio
import ctypes
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from rich.console import Console

from .agents.records import Records
from .agents.runtime import agent_db_path
from .config import SiteConfig
from .pipeline.sqlite import SqliteStore, StoreCounts

__all__ = ["run_demo"]

out = Console(highlight=False, soft_wrap=True)
STOP_GRACE_S = 10.0
STARTUP_TIMEOUT_S = 30.0


@dataclass
class Child:
    name: str
    argv: list[str]
    env: dict[str, str]
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None
    log: IO[bytes] | None = field(default=None, repr=False)

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            self.argv,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C goes to the supervisor only; it stops us in order
            preexec_fn=_die_with_parent if sys.platform == "linux" else None,
        )

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        if self.log:
            self.log.close()
        return self.proc.returncode


def _die_with_parent() -> None:
    # PR_SET_PDEATHSIG: the kernel sends SIGTERM to this child if the supervisor dies.
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)


def _port_open(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex((host, port)) == 0


def _wait_for(what: str, ready: Callable[[], bool], children: list[Child]) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while not ready():
        dead = [c for c in children if not c.alive()]
        if dead:
            raise RuntimeError(f"{dead[0].name} exited during start-up; see {dead[0].log_path}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} not ready after {STARTUP_TIMEOUT_S:.0f} s")
        time.sleep(0.1)


def _busy_ports(cfg: SiteConfig, mcp_port: int) -> list[str]:
    wanted = [(d.id, d.connection.host, d.connection.port) for d in cfg.devices]
    wanted.append(("modbus MCP server", "127.0.0.1", mcp_port))
    return [f"{name} ({host}:{port})" for name, host, port in wanted if _port_open(host, port)]


def _summary(cfg: SiteConfig) -> dict[str, object]:
    """What the run produced, read through the store's and the records' own query APIs."""
    counts, points = asyncio.run(_store_counts(cfg))
    messages: list[str] = []
    agent_db = agent_db_path(cfg)
    if agent_db.exists():
        with Records(agent_db) as records:
            messages = [r.recommendation.message for r in records.list_recommendations(status=None)]
    return {
        "readings_stored": counts.total,
        "bad_readings": counts.bad,
        "points_seen": points,
        "recommendations": len(messages),
        "recommendation_messages": messages,
    }


async def _store_counts(cfg: SiteConfig) -> tuple[StoreCounts, int]:
    if not cfg.sqlite_path().exists():
        return StoreCounts(), 0
    async with SqliteStore.from_config(cfg) as store:
        return await store.counts(), len(await store.latest())


def _children(cfg: SiteConfig, mcp_port: int) -> list[Child]:
    assert cfg.source is not None
    exe = [sys.executable, "-m", "eaio"]
    conf = ["--config", str(cfg.source)]
    env = dict(os.environ, PYTHONUNBUFFERED="1", EAIO_DATA_DIR=str(cfg.data_dir.resolve()))
    agent_env = dict(env, EAIO_AGENT__SERVERS=json.dumps([{"name": "modbus", "url": f"http://127.0.0.1:{mcp_port}/mcp"}]))
    logs = cfg.data_dir / "logs"
    return [
        Child("sim", [*exe, "sim", *conf], env, logs / "sim.log"),
        Child("modbus-server", [*exe, "serve", "modbus", *conf, "--transport", "http", "--port", str(mcp_port)],
              env, logs / "modbus-server.log"),
        Child("ingest", [*exe, "ingest", *conf], env, logs / "ingest.log"),
        Child("agent", [*exe, "agent", *conf], agent_env, logs / "agent.log"),
    ]


def run_demo(cfg: SiteConfig, duration: float | None = None) -> int:
    """Run the demo until ``duration`` seconds pass or Ctrl-C; print a summary. Returns an exit code."""
    mcp_port = cfg.server_settings("modbus").port
    busy = _busy_ports(cfg, mcp_port)
    if busy:
        out.print(f"[red]ports already in use:[/red] {', '.join(busy)} — is another demo running?")
        return 1
    cfg.data_dir.mkdir(parents=True, exist_ok=True)
    sim, server, ingest, agent = _children(cfg, mcp_port)
    stop = {"now": False}

    def on_signal(signum: int, _frame: object) -> None:
        stop["now"] = True

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    started: list[Child] = []
    code = 0
    try:
        _start(sim, started)
        for d in cfg.devices:
            _wait_for(f"sim device {d.id}", lambda d=d: _port_open(d.connection.host, d.connection.port), started)
        _start(server, started)
        _wait_for("Modbus MCP server", lambda: _port_open("127.0.0.1", mcp_port), started)
        _start(ingest, started)
        _start(agent, started)
        _where(cfg, mcp_port)
        code = _supervise(cfg, started, duration, stop)
    except RuntimeError as e:
        out.print(f"[red]demo failed:[/red] {e}")
        code = 1
    finally:
        for child in reversed(started):
            child.stop()
        for s, handler in old.items():
            signal.signal(s, handler)
    _print_summary(cfg)
    return code


def _start(child: Child, started: list[Child]) -> None:
    child.start()
    started.append(child)


def _supervise(cfg: SiteConfig, children: list[Child], duration: float | None, stop: dict[str, bool]) -> int:
    t0 = time.monotonic()
    next_status = t0 + 5
    while not stop["now"]:
        if duration is not None and time.monotonic() - t0 >= duration:
            break
        dead = [c for c in children if not c.alive()]
        if dead:
            out.print(f"[red]{dead[0].name} stopped unexpectedly[/red] (exit {dead[0].proc.returncode}); "  # type: ignore[union-attr]
                      f"see {dead[0].log_path}")
            return 1
        if time.monotonic() >= next_status:
            s = _summary(cfg)
            out.print(f"  t={time.monotonic() - t0:5.0f}s  readings {s['readings_stored']:>6}  "
                      f"bad {s['bad_readings']:>4}  recommendations {s['recommendations']}")
            next_status += 5
        time.sleep(0.2)
    return 0


def _where(cfg: SiteConfig, mcp_port: int) -> None:
    out.print("[bold]EAIO demo[/bold] — the virtual building, read, validated, stored and advised on")
    for d in cfg.devices:
        out.print(f"  device  {d.id:<11} modbus tcp {d.connection.host}:{d.connection.port} unit {d.connection.unit}")
    if cfg.sim.control_port:
        out.print(f"  sim control      http://127.0.0.1:{cfg.sim.control_port}/state")
    out.print(f"  MCP server       http://127.0.0.1:{mcp_port}/mcp  (streamable HTTP; add it to your MCP client)")
    out.print(f"  store            {cfg.sqlite_path()}")
    out.print(f"  agent records    {agent_db_path(cfg)}")
    out.print(f"  write audit      {cfg.audit_path('modbus')}")
    out.print(f"  logs             {cfg.data_dir / 'logs'}/")
    out.print("  Ctrl-C stops everything.")


def _print_summary(cfg: SiteConfig) -> None:
    s = _summary(cfg)
    out.print("[bold]summary[/bold]")
    out.print(f"  readings stored  {s['readings_stored']} ({s['points_seen']} points)")
    out.print(f"  bad readings     {s['bad_readings']}")
    out.print(f"  recommendations  {s['recommendations']}")
    for msg in s["recommendation_messages"]:  # type: ignore[attr-defined]
        out.print(f"    - {msg}")
