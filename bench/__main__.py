"""Run every benchmark, print a table and write bench/results/latest.json."""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from . import demo_memory, mcp_read, scan

OUT = Path(__file__).resolve().parent / "results"


def main() -> int:
    console = Console()
    results: dict[str, object] = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "python": sys.version.split()[0],
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "loadavg_at_start": os.getloadavg(),
    }
    with console.status("scan of 1,000 scattered points (EAIO vs raw pymodbus)..."):
        results["modbus_scan"] = s = scan.run()
    with console.status("read_points of 100 points over MCP stdio..."):
        results["mcp_read_points"] = m = mcp_read.run()
    with console.status(f"demo for {demo_memory.DURATION_S:.0f} s, sampling memory..."):
        results["demo_memory"] = d = demo_memory.run()

    t = Table(title="EAIO benchmarks")
    t.add_column("measure")
    t.add_column("EAIO", justify="right")
    t.add_column("baseline (same run)", justify="right")
    t.add_column("ratio", justify="right")
    t.add_column("target")
    t.add_row("1,000-point scan: requests", str(s["eaio_requests"]), f"{s['raw_requests']} (raw pymodbus)",
              f"{s['request_ratio']:.1f}x fewer", ">= 20x")
    t.add_row("1,000-point scan: time", f"{s['eaio_s'] * 1e3:.1f} ms", f"{s['raw_s'] * 1e3:.1f} ms",
              f"{s['speedup']:.1f}x faster", ">= 10x")
    t.add_row("read_points(100) over MCP stdio: p50", f"{m['p50_ms']:.2f} ms",
              f"{m['adapter_p50_ms']:.2f} ms (adapter alone)", "", "<= 2 ms")
    t.add_row("read_points(100) over MCP stdio: p95", f"{m['p95_ms']:.2f} ms", "", "", "")
    for role, mb in sorted(d["peak_rss_mb"].items()):
        target = {"modbus-server": "<= 100 MB", "ingest": "<= 150 MB"}.get(role, "")
        t.add_row(f"demo peak RSS: {role}", f"{mb:.0f} MB", "", "", target)
    console.print(t)
    console.print(f"load average at start: {results['loadavg_at_start']}")
    OUT.mkdir(exist_ok=True)
    (OUT / "latest.json").write_text(json.dumps(results, indent=2, default=str))
    console.print(f"written {OUT / 'latest.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
