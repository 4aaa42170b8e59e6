"""`eaio sim` and `eaio sim-fault` as an operator runs them: subprocesses over loopback."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

from eaio.config import load_config

EAIO = [sys.executable, "-m", "eaio"]


def test_sim_serves_every_device_and_exits(site_file: Callable[..., Path]) -> None:
    path = site_file()
    cfg = load_config(path)
    done = subprocess.run([*EAIO, "sim", "--config", str(path), "--duration", "2"],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    for dev in cfg.devices:
        assert f"{dev.id}  modbus tcp 127.0.0.1:{dev.connection.port} unit 1" in done.stdout


def test_sim_rejects_a_bad_fault(site_file: Callable[..., Path]) -> None:
    done = subprocess.run([*EAIO, "sim", "--config", str(site_file()), "--fault", "melt:zone1.temp"],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 2
    assert "unknown fault kind 'melt'" in done.stderr


def test_sim_fault_through_the_control_api(site_file: Callable[..., Path]) -> None:
    path = site_file(sim={"control_port": 0})
    proc = subprocess.Popen([*EAIO, "sim", "--config", str(path)], stdout=subprocess.PIPE, text=True)
    try:
        url = ""
        deadline = time.monotonic() + 20
        while not url:
            assert time.monotonic() < deadline, "sim did not start in time"
            assert proc.poll() is None, "sim exited before it served"
            line = proc.stdout.readline() if proc.stdout else ""
            if line.startswith("control  http"):
                url = line.split()[1]
        fault = subprocess.run([*EAIO, "sim-fault", "spike:zone2.temp:5", "--control", url],
                               capture_output=True, text=True, timeout=30)
        assert fault.returncode == 0, fault.stderr
        assert "injected spike on zone2.temp" in fault.stdout
        with urllib.request.urlopen(f"{url}/state", timeout=5) as resp:
            state = json.loads(resp.read())
        assert any(f["kind"] == "spike" and f["target"] == "zone2.temp" for f in state["faults"])
        assert "zone1.temp" in state["values"]
        bad = subprocess.run([*EAIO, "sim-fault", "stuck:no.such", "--control", url],
                             capture_output=True, text=True, timeout=30)
        assert bad.returncode != 0
        cleared = subprocess.run([*EAIO, "sim-fault", "clear", "--control", url],
                                 capture_output=True, text=True, timeout=30)
        assert cleared.returncode == 0
        assert "cleared 1 fault" in cleared.stdout
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout:
            proc.stdout.close()


def test_send_fault_reports_an_unreachable_sim() -> None:
    from conftest import free_port
    from eaio.sim.control import send_fault

    with pytest.raises(ConnectionError, match="not reachable"):
        send_fault(f"http://127.0.0.1:{free_port()}", "clear:zone1.temp")
