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

import yaml
from rich.console import Console

from .agents.records import Records
from .agents.runtime import agent_db_path
from .broker import find_mosquitto, write_mosquitto_conf
from .config import SiteConfig, load_config
from .pipeline.sqlite import SqliteStore, StoreCounts
from .protocol_adapters.udp import udp_port_free

__all__ = ["run_demo"]

out = Console(highlight=False, soft_wrap=True)
STOP_GRACE_S = 10.0
STARTUP_TIMEOUT_S = 30.0
_LOCAL = ("127.0.0.1", "localhost", "::1")


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


def _busy_ports(cfg: SiteConfig) -> list[str]:
    wanted = [(d.id, d.connection.host, d.connection.port) for d in cfg.devices_for("modbus")]
    wanted += [(f"{d.id} broker", d.connection.host, d.connection.port) for d in cfg.devices_for("mqtt")]
    wanted += [(f"{d.id} (OPC-UA)", d.connection.host, d.connection.port) for d in cfg.devices_for("opcua")]
    wanted += [(f"{p} MCP server", "127.0.0.1", cfg.server_settings(p).port) for p in cfg.protocols()]
    busy = [f"{name} ({host}:{port})" for name, host, port in wanted if _port_open(host, port)]
    udp = [(f"{d.id} (BACnet)", d.connection.host, d.connection.port) for d in cfg.devices_for("bacnet")]
    if cfg.devices_for("bacnet"):
        host = cfg.bacnet.interface.split("/")[0]
        udp += [(f"EAIO's BACnet {role} application", host, port) for role, port in cfg.bacnet.ports.items()
                if role in ("ingest", "server")]
    return busy + [f"{name} (udp {host}:{port})" for name, host, port in udp if not udp_port_free(host, port)]


def _summary(cfg: SiteConfig) -> dict[str, object]:
    """What the run produced, read through the store's and the records' own query APIs."""
    counts, points, dead = asyncio.run(_store_counts(cfg))
    found: list[tuple[str, str]] = []  # (status, message), open ones first
    pending = 0
    agent_db = agent_db_path(cfg)
    if agent_db.exists():
        with Records(agent_db) as records:
            found = [(status, r.recommendation.message) for status in ("open", "resolved")
                     for r in records.list_recommendations(status=status)]
            pending = len(records.list_approvals("pending"))
    return {
        "readings_stored": counts.total,
        "bad_readings": counts.bad,
        "uncertain_readings": counts.uncertain,
        "pending_approvals": pending,
        "points_seen": points,
        "dead_letters": dead,
        "recommendations": len(found),
        "open_recommendations": sum(status == "open" for status, _ in found),
        "recommendation_messages": [f"[{status}] {msg}" for status, msg in found],
    }


async def _store_counts(cfg: SiteConfig) -> tuple[StoreCounts, int, int]:
    if not cfg.sqlite_path().exists():
        return StoreCounts(), 0, 0
    async with SqliteStore.from_config(cfg) as store:
        return await store.counts(), len(await store.latest()), await store.dead_letter_count()


def _children(cfg: SiteConfig) -> list[Child]:
    """Every process of the demo, in start order: brokers, sim, one MCP server per protocol,
    ingest, agent."""
    assert cfg.source is not None
    exe = [sys.executable, "-m", "eaio"]
    conf = ["--config", str(cfg.source)]
    env = dict(os.environ, PYTHONUNBUFFERED="1", EAIO_DATA_DIR=str(cfg.data_dir.resolve()))
    logs = cfg.data_dir / "logs"
    children = [Child(f"mosquitto-{port}", argv, env, logs / f"mosquitto-{port}.log") for port, argv in _brokers(cfg)]
    children.append(Child("sim", [*exe, "sim", *conf], env, logs / "sim.log"))
    urls = []
    for protocol in cfg.protocols():
        port = cfg.server_settings(protocol).port
        argv = [*exe, "serve", protocol, *conf, "--transport", "http", "--port", str(port)]
        children.append(Child(f"{protocol}-server", argv, env, logs / f"{protocol}-server.log"))
        urls.append({"name": protocol, "url": f"http://127.0.0.1:{port}/mcp"})
    children.append(Child("ingest", [*exe, "ingest", *conf], env, logs / "ingest.log"))
    agent_env = dict(env, EAIO_AGENT__SERVERS=json.dumps(urls))
    children.append(Child("agent", [*exe, "agent", *conf], agent_env, logs / "agent.log"))
    return children


def _brokers(cfg: SiteConfig) -> list[tuple[int, list[str]]]:
    """A private Mosquitto for each local broker address the MQTT devices use."""
    exe = find_mosquitto()
    ports = sorted({d.connection.port for d in cfg.devices_for("mqtt") if d.connection.host in _LOCAL})
    if exe is None:
        return []
    return [(port, [exe, "-c", str(write_mosquitto_conf(cfg.data_dir / f"mosquitto-{port}", port))]) for port in ports]


def _without_mqtt(cfg: SiteConfig) -> SiteConfig:
    """The same site without its MQTT parts, for a machine without mosquitto."""
    assert cfg.source is not None
    raw = yaml.safe_load(cfg.source.read_text(encoding="utf-8"))
    raw["devices"] = [d for d in raw.get("devices", []) if d.get("protocol") != "mqtt"]
    raw.get("servers", {}).pop("mqtt", None)
    raw.get("sim", {}).pop("mqtt", None)
    raw["data_dir"] = str(cfg.data_dir.resolve())
    cfg.data_dir.mkdir(parents=True, exist_ok=True)
    path = cfg.data_dir / "site.without-mqtt.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    return load_config(path)


def run_demo(cfg: SiteConfig, duration: float | None = None) -> int:
    """Run the demo until ``duration`` seconds pass or Ctrl-C; print a summary. Returns an exit code."""
    if cfg.devices_for("mqtt") and find_mosquitto() is None:
        out.print("mosquitto is not installed: running without the MQTT parts (apt-get install mosquitto)")
        cfg = _without_mqtt(cfg)
    busy = _busy_ports(cfg)
    if busy:
        out.print(f"[red]ports already in use:[/red] {', '.join(busy)} — is another demo running?")
        return 1
    cfg.data_dir.mkdir(parents=True, exist_ok=True)
    stop = {"now": False}

    def on_signal(signum: int, _frame: object) -> None:
        stop["now"] = True

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    started: list[Child] = []
    code = 0
    try:
        for child in _children(cfg):
            _start(child, started)
            for what, host, port in _ports_of(cfg, child.name):
                _wait_for(what, lambda h=host, p=port: _port_open(h, p), started)
        _where(cfg)
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


def _ports_of(cfg: SiteConfig, child: str) -> list[tuple[str, str, int]]:
    """What must answer before the next child starts."""
    if child.startswith("mosquitto-"):
        return [(child, "127.0.0.1", int(child.split("-")[1]))]
    if child == "sim":
        return [(f"sim device {d.id}", d.connection.host, d.connection.port) for d in cfg.devices_for("modbus")]
    if child.endswith("-server"):
        return [(f"{child} (MCP)", "127.0.0.1", cfg.server_settings(child.removesuffix("-server")).port)]
    return []


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
                      f"bad {s['bad_readings']:>4}  recommendations {s['open_recommendations']} open, "
                      f"{s['recommendations']} in all")
            next_status += 5
        time.sleep(0.2)
    return 0


def _where(cfg: SiteConfig) -> None:
    out.print("[bold]EAIO demo[/bold] — the virtual building, read, validated, stored and advised on")
    for d in cfg.devices_for("modbus"):
        out.print(f"  device  {d.id:<11} modbus tcp {d.connection.host}:{d.connection.port} unit {d.connection.unit}")
    for d in cfg.devices_for("mqtt"):
        out.print(f"  device  {d.id:<11} mqtt broker {d.connection.host}:{d.connection.port} (private mosquitto)")
    for d in cfg.devices_for("bacnet"):
        c = d.connection
        out.print(f"  device  {d.id:<11} bacnet/ip udp {c.host}:{c.port} device {c.device_instance}")
    for d in cfg.devices_for("opcua"):
        out.print(f"  device  {d.id:<11} opc-ua {d.connection.endpoint}")
    if cfg.sim.control_port:
        out.print(f"  sim control      http://127.0.0.1:{cfg.sim.control_port}/state")
    for p in cfg.protocols():
        port = cfg.server_settings(p).port
        out.print(f"  MCP server       http://127.0.0.1:{port}/mcp  ({p}, streamable HTTP; add it to your MCP client)")
    out.print(f"  store            {cfg.sqlite_path()}")
    out.print(f"  agent records    {agent_db_path(cfg)}")
    out.print(f"  write audit      {cfg.audit_path('modbus').parent}/")
    out.print(f"  logs             {cfg.data_dir / 'logs'}/")
    out.print("  Ctrl-C stops everything.")


def _print_summary(cfg: SiteConfig) -> None:
    s = _summary(cfg)
    out.print("[bold]summary[/bold]")
    out.print(f"  readings stored  {s['readings_stored']} ({s['points_seen']} points)")
    out.print(f"  bad readings     {s['bad_readings']}  (uncertain {s['uncertain_readings']})")
    if cfg.devices_for("mqtt"):
        out.print(f"  dead letters     {s['dead_letters']}")
    out.print(f"  recommendations  {s['recommendations']} ({s['open_recommendations']} open, the rest resolved)")
    for msg in s["recommendation_messages"]:  # type: ignore[attr-defined]
        out.print(f"    - {msg}", markup=False, highlight=False)
    if s["pending_approvals"]:
        out.print(f"  writes awaiting approval  {s['pending_approvals']}  "
                  f"(eaio approvals --config {cfg.source}; eaio approve ID / eaio reject ID)")
