"""Shared pieces of the benchmarks: private ports, a site file, the sim in a child process."""

from __future__ import annotations

import contextlib
import random
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "config" / "site.example.yaml"


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


def wait_port(port: int, proc: subprocess.Popen[bytes] | None = None, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not port_open(port):
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited with {proc.returncode} before port {port} opened")
        if time.monotonic() > deadline:
            raise RuntimeError(f"port {port} not open after {timeout} s")
        time.sleep(0.05)


def scattered_device(n_points: int, span: int, seed: int = 7) -> dict[str, Any]:
    """One device with ``n_points`` uint16 holding registers spread at random over ``span`` addresses."""
    registers = sorted(random.Random(seed).sample(range(span), n_points))
    return {
        "id": "big-plc",
        "name": "Large controller (bench)",
        "protocol": "modbus",
        "poll_interval_s": 60,
        "connection": {"host": "127.0.0.1", "port": free_port(), "unit": 1, "timeout_s": 2.0},
        "points": [
            {"id": f"plc.p{r:05d}", "kind": "generic", "address": {"table": "holding", "register": r}}
            for r in registers
        ],
    }


def write_site(tmp: Path, **changes: Any) -> Path:
    """The demo site on free ports under ``tmp``, with top-level ``changes`` merged in. When
    ``devices`` is replaced, the MQTT parts that name the demo's MQTT device go too."""
    raw = yaml.safe_load(EXAMPLE.read_text())
    if "devices" in changes:
        raw["sim"].pop("mqtt", None)
        raw["sim"].get("opcua", {}).pop("history", None)
        kept = {d.get("protocol") for d in changes["devices"]}
        raw["servers"] = {k: v for k, v in raw["servers"].items() if k in kept}
    for dev in raw["devices"]:
        if dev["protocol"] == "bacnet":
            dev["connection"]["address"] = f"127.0.0.1:{free_port(socket.SOCK_DGRAM)}"
        elif dev["protocol"] == "opcua":
            dev["connection"]["endpoint"] = f"opc.tcp://127.0.0.1:{free_port()}/eaio/plant"
        else:
            dev["connection"]["port"] = free_port()
    raw["bacnet"]["ports"] = {role: free_port(socket.SOCK_DGRAM) for role in raw["bacnet"]["ports"]}
    raw["data_dir"] = str(tmp / "data")
    raw["sim"]["control_port"] = None
    for server in raw["servers"].values():
        server["port"] = free_port()
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(raw.get(key), dict):
            raw[key].update(value)
        else:
            raw[key] = value
    path = tmp / "site.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


@contextlib.contextmanager
def sim_process(site: Path) -> Iterator[dict[str, Any]]:
    """`eaio sim` in a child process (so it does not share our GIL), stopped on exit."""
    raw = yaml.safe_load(site.read_text())
    proc = subprocess.Popen(
        [sys.executable, "-m", "eaio", "sim", "--config", str(site)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        for dev in raw["devices"]:
            conn = dev["connection"]
            if dev["protocol"] == "opcua":
                wait_port(int(conn["endpoint"].split(":")[2].split("/")[0]), proc)
            elif dev["protocol"] != "bacnet":  # UDP: nothing to connect to; its users retry
                wait_port(conn["port"], proc)
        yield raw
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


@contextlib.contextmanager
def tempdir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="eaio-bench-") as d:
        yield Path(d)


def percentile(values: list[float], q: float) -> float:
    s = sorted(values)
    k = max(0, min(len(s) - 1, round(q / 100 * (len(s) - 1))))
    return s[k]
