"""Run every benchmark, print a table and write bench/results/latest.json."""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from . import agent, agent_host, bacnet, demo_memory, events, influx, mcp_read, mqtt, opcua, scan, validate

OUT = Path(__file__).resolve().parent / "results"


def main(argv: list[str]) -> int:
    """``python -m bench [scan] [mcp] [memory] [mqtt] [bacnet] [opcua] [validate] [influx] [events] [agent]``
    — all of them when none is named."""
    wanted = set(argv) or {"scan", "mcp", "memory", "mqtt", "bacnet", "opcua", "validate", "influx", "events", "agent"}
    console = Console()
    results: dict[str, object] = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "python": sys.version.split()[0],
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "loadavg_at_start": os.getloadavg(),
    }
    if "scan" in wanted:
        with console.status("scan of 1,000 scattered points (EAIO vs raw pymodbus)..."):
            results["modbus_scan"] = scan.run()
    if "mcp" in wanted:
        with console.status("read_points of 100 points over MCP stdio..."):
            results["mcp_read_points"] = mcp_read.run()
    if "mqtt" in wanted:
        with console.status("MQTT: Mosquitto into the store vs raw paho..."):
            results["mqtt_ingest"] = mqtt.run()
    if "bacnet" in wanted:
        with console.status("BACnet: 200 points, RPM batches vs one ReadProperty each..."):
            results["bacnet_rpm"] = bacnet.run()
    if "opcua" in wanted:
        with console.status("OPC-UA: 1,000 nodes, batched vs one read each and asyncua read_values..."):
            results["opcua_read"] = opcua.run()
    if "validate" in wanted:
        with console.status("validation rules on batches of 5,000 readings..."):
            results["validation"] = validate.run()
    if "influx" in wanted:
        with console.status("InfluxDB 1.x: raw line protocol vs the store vs through the buffer..."):
            results["influx"] = influx.run()
    if "events" in wanted:
        with console.status("event bus: observe cost, QoS 1 to Mosquitto vs raw paho..."):
            results["events"] = events.run()
    if "agent" in wanted:
        with console.status("agent: MCP host overhead per call over stdio..."):
            results["agent_host"] = agent_host.run()
        with console.status("agent: decision cycles without an LLM, 50-point site..."):
            results["agent_cycle"] = agent.run()
    if "memory" in wanted:
        with console.status(f"demo for {demo_memory.DURATION_S:.0f} s, sampling memory..."):
            results["demo_memory"] = demo_memory.run()
    console.print(_table(results))
    console.print(f"load average at start: {results['loadavg_at_start']}")
    OUT.mkdir(exist_ok=True)
    (OUT / "latest.json").write_text(json.dumps(results, indent=2, default=str))
    console.print(f"written {OUT / 'latest.json'}")
    return 0


def _table(results: dict[str, Any]) -> Table:
    t = Table(title="EAIO benchmarks")
    t.add_column("measure")
    t.add_column("EAIO", justify="right")
    t.add_column("baseline (same run)", justify="right")
    t.add_column("ratio", justify="right")
    t.add_column("target")
    if s := results.get("modbus_scan"):
        t.add_row("1,000-point scan: requests", str(s["eaio_requests"]), f"{s['raw_requests']} (raw pymodbus)",
              f"{s['request_ratio']:.1f}x fewer", ">= 20x")
        t.add_row("1,000-point scan: time", f"{s['eaio_s'] * 1e3:.1f} ms", f"{s['raw_s'] * 1e3:.1f} ms",
              f"{s['speedup']:.1f}x faster", ">= 10x")
    if m := results.get("mcp_read_points"):
        t.add_row("read_points(100), mcp Client over stdio: p50 / p95",
                  f"{m['p50_ms']:.2f} / {m['p95_ms']:.2f} ms", f"{m['adapter_p50_ms']:.2f} ms (adapter alone)",
                  "", "p50 <= 2 ms")
        t.add_row("read_points(100), raw JSON-RPC on stdio: p50 / p95",
                  f"{m['wire_p50_ms']:.2f} / {m['wire_p95_ms']:.2f} ms", "",
                  f"+{m['server_overhead_p50_ms']:.2f} ms over adapter", "")
    if q := results.get("mqtt_ingest"):
        one, fifty = q["one_reading_per_message"], q["fifty_readings_per_message"]
        t.add_row("MQTT QoS 0, 1 reading/message: messages/s into SQLite",
                  f"{one['eaio']['messages_per_s']:,.0f}", f"{one['raw_paho']['messages_per_s']:,.0f} (raw paho)",
                  f"{one['ratio_to_raw']:.0%} of raw", ">= 80 %")
        t.add_row("MQTT QoS 0, 50 readings/message: readings/s into SQLite",
                  f"{fifty['eaio']['readings_per_s']:,.0f}", f"{fifty['raw_paho']['readings_per_s']:,.0f} (raw paho)",
                  f"{fifty['ratio_to_raw']:.0%} of raw", ">= 100,000/s")
        if q1 := q.get("fifty_readings_per_message_qos1_persistent"):
            t.add_row("MQTT QoS 1, persistent session (acknowledged once stored), 50 readings/message: readings/s",
                      f"{q1['eaio']['readings_per_s']:,.0f}", f"{q1['raw_paho']['readings_per_s']:,.0f} (raw paho)",
                      f"{q1['ratio_to_raw']:.0%} of raw", "")
    if b := results.get("bacnet_rpm"):
        t.add_row(f"BACnet 200 points: RPM, batch {b['rpm_batch']}, PV+flags (vs ReadProperty of PV each)",
                  f"{b['eaio_ms']:.1f} ms, {b['eaio_requests']} req", f"{b['raw_ms']:.1f} ms, {b['raw_requests']} req "
                  "(raw bacpypes3)", f"{b['speedup']:.1f}x faster", ">= 10x")
        if sd := b.get("stock_device"):  # the same device answering RPM with stock bacpypes3
            t.add_row("BACnet 200 points, device answering RPM with stock bacpypes3 (as above)",
                      f"{sd['eaio_ms']:.1f} ms, {sd['eaio_requests']} req", f"{b['raw_ms']:.1f} ms (raw bacpypes3)",
                      f"{sd['speedup']:.1f}x faster", "")
    if o := results.get("opcua_read"):
        t.add_row("OPC-UA 1,000 nodes: EAIO batched read vs one read per node", f"{o['eaio_s'] * 1e3:.1f} ms",
                  f"{o['per_node_s'] * 1e3:.0f} ms (raw asyncua)", f"{o['speedup_vs_per_node']:.1f}x faster", ">= 20x")
        t.add_row("OPC-UA 1,000 nodes: EAIO vs asyncua read_values", f"{o['eaio_s'] * 1e3:.1f} ms",
                  f"{o['read_values_s'] * 1e3:.1f} ms (raw asyncua)", f"{o['share_of_read_values']:.0%} of raw",
                  ">= 50 %")
    if v := results.get("validation"):
        t.add_row("validation, every rule on, batches of 5,000: per reading", f"{v['eaio_us_per_reading']:.2f} us",
                  f"{v['bare_loop_us_per_reading']:.3f} us (bare loop)", f"{v['ratio_to_bare_loop']:.0f}x", "<= 5 us")
    if i := results.get("influx"):
        t.add_row("InfluxDB 1.x ingest through the durable buffer: readings/s", f"{i['buffered_readings_per_s']:,}",
                  f"{i['raw_readings_per_s']:,} (raw line protocol)", f"{i['buffered_vs_raw']:.0%} of raw", ">= 50 %")
        t.add_row("InfluxDB 1.x, the store's write alone (encode + POST)", f"{i['store_readings_per_s']:,}",
                  f"{i['raw_readings_per_s']:,}", f"{i['store_vs_raw']:.0%} of raw", "")
    if e := results.get("events"):
        o, q = e["observe"], e["mqtt_qos1"]
        t.add_row("events: observe a batch, nothing due: per reading", f"{o['us_per_reading_nothing_due']:.2f} us",
                  f"{o['us_per_reading_bare_pass']:.2f} us (bare pass)", f"{o['ratio_to_bare_pass']:.1f}x", "")
        t.add_row("events: QoS 1 to Mosquitto, events/s", f"{q['bus_events_per_s']:,.0f}",
                  f"{q['raw_paho_per_s']:,.0f} (raw paho)", f"{q['ratio_to_raw']:.0%} of raw", "")
    if a := results.get("agent_host"):
        t.add_row("agent: MCP host call over stdio, p50 / p95", f"{a['host_p50_ms']:.2f} / {a['host_p95_ms']:.2f} ms",
                  f"{a['raw_p50_ms']:.2f} ms (mcp Client)", f"+{a['overhead_p50_ms']:.2f} ms", "overhead <= 3 ms")
    if c := results.get("agent_cycle"):
        t.add_row(f"agent: decision cycle, no LLM, {c['points']} points: p50 / p95",
                  f"{c['cycle_p50_ms']:.0f} / {c['cycle_p95_ms']:.0f} ms",
                  f"{c['raw_mcp_calls_p50_ms']:.0f} ms (same MCP calls, raw)", f"{c['ratio_p50_to_raw']:.2f}x",
                  "<= 200 ms")
    for role, mb in sorted(results.get("demo_memory", {}).get("peak_rss_mb", {}).items()):
        target = {"modbus-server": "<= 100 MB", "mqtt-server": "<= 100 MB", "ingest": "<= 150 MB"}.get(role, "")
        t.add_row(f"demo peak RSS: {role}", f"{mb:.0f} MB", "", "", target)
    return t


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
