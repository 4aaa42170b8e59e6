"""`eaio demo` end to end: every part as its own process, against the virtual building."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest

from eaio.config import load_config
from eaio.pipeline.energy import derived_points

pytestmark = pytest.mark.slow


def _eaio_children(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def test_a_twenty_second_demo_stores_readings_and_advises(site_file: Callable[..., Path]) -> None:
    path = site_file(mqtt=True, bacnet=True, opcua=True)
    cfg = load_config(path)
    res = subprocess.run(
        [sys.executable, "-m", "eaio", "demo", "--config", str(path), "--duration", "20"],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    out = res.stdout
    stored = re.search(r"readings stored\s+(\d+) \((\d+) points\)", out)
    assert stored, out
    # Every point of the demo building that reports was read or received, more than once
    # (Modbus devices poll every 5-10 s; the sim publishes MQTT sensors every wall second).
    # zone1.iot_cool_sp is command-only: nothing ever publishes its state.
    reporting = [p for p in cfg.points() if p.id != "zone1.iot_cool_sp"]
    # Plus the energy readings ingest derives when a demand interval (15 min) closes during the
    # run: a run across a quarter hour has them, one inside it does not.
    derived = derived_points(cfg)
    assert len(reporting) <= int(stored.group(2)) <= len(reporting) + len(derived)
    assert int(stored.group(1)) > len(reporting)
    assert re.search(r"bad readings\s+0\b", out), out
    recs = int(re.search(r"recommendations\s+(\d+)", out.split("summary")[1]).group(1))  # type: ignore[union-attr]
    assert recs >= 2
    assert "zone2" in out
    assert "zone3" in out
    for protocol in ("modbus", "mqtt"):
        assert f"http://127.0.0.1:{cfg.server_settings(protocol).port}/mcp" in out


def test_ctrl_c_stops_every_child(site_file: Callable[..., Path]) -> None:
    path = site_file(mqtt=True, bacnet=True, opcua=True)
    cfg = load_config(path)
    demo = subprocess.Popen(
        [sys.executable, "-m", "eaio", "demo", "--config", str(path)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while len(_eaio_children(demo.pid)) < 4 or not cfg.sqlite_path().exists():
            assert demo.poll() is None, demo.stdout.read() if demo.stdout else ""
            assert time.monotonic() < deadline, "demo did not start its four parts"
            time.sleep(0.1)
        children = _eaio_children(demo.pid)
        demo.send_signal(signal.SIGINT)
        out, _ = demo.communicate(timeout=60)
    finally:
        if demo.poll() is None:
            demo.kill()
    assert demo.returncode == 0, out
    assert "summary" in out
    _gone, alive = psutil.wait_procs(children, timeout=5)
    assert not alive, [p.cmdline() for p in alive]


def test_without_mosquitto_the_demo_runs_without_mqtt(
    site_file: Callable[..., Path], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from eaio import demo

    monkeypatch.setattr(demo, "find_mosquitto", lambda: None)
    cfg = load_config(site_file(mqtt=True))
    assert demo.run_demo(cfg, duration=6) == 0
    out = capsys.readouterr().out
    assert "mosquitto is not installed: running without the MQTT parts" in out
    assert "iot-gw" not in out  # no MQTT device, broker or server was started
    assert "/mcp  (mqtt" not in out
    stored = re.search(r"readings stored\s+(\d+) \((\d+) points\)", out)
    assert stored, out
    assert int(stored.group(2)) == sum(len(d.points) for d in cfg.devices_for("modbus"))

