"""(c) Peak resident memory of each process of the demo, sampled while `eaio demo` runs."""

from __future__ import annotations

import subprocess
import sys
import time
from typing import Any

import psutil

from .common import tempdir, write_site

DURATION_S = 20.0
ROLES = {"sim": "sim", "ingest": "ingest", "agent": "agent"}


def _role(cmdline: list[str]) -> str | None:
    if cmdline and cmdline[0].endswith("mosquitto"):
        return "mosquitto"
    if "-m" in cmdline and "eaio" in cmdline:
        args = cmdline[cmdline.index("eaio") + 1 :]
        if len(args) > 1 and args[0] == "serve":
            return f"{args[1]}-server"
        if args:
            return ROLES.get(args[0])
    return None


def run() -> dict[str, Any]:
    with tempdir() as tmp:
        site = write_site(tmp)
        demo = subprocess.Popen(
            [sys.executable, "-m", "eaio", "demo", "--config", str(site), "--duration", str(DURATION_S)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )
        peaks: dict[str, float] = {}
        root = psutil.Process(demo.pid)
        while demo.poll() is None:
            try:
                kids = root.children(recursive=True)
            except psutil.NoSuchProcess:
                break
            for p in kids:
                try:
                    role = _role(p.cmdline())
                    if role:
                        peaks[role] = max(peaks.get(role, 0.0), p.memory_info().rss / 2**20)
                except psutil.Error:
                    continue
            time.sleep(0.2)
        output = demo.stdout.read().decode() if demo.stdout else ""
        if demo.returncode != 0:
            raise RuntimeError(f"demo exited {demo.returncode}:\n{output}")
        return {
            "duration_s": DURATION_S,
            "peak_rss_mb": peaks,
            "targets": {"modbus-server": "<= 100 MB", "mqtt-server": "<= 100 MB", "ingest": "<= 150 MB"},
        }
