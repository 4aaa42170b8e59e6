"""The ``eaio`` command. Each sub-command loads and checks the config first, then delegates."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from .config import SiteConfig, load_config
from .errors import ConfigError

app = typer.Typer(help="EAIO — Energy AI Optimizer", no_args_is_help=True, add_completion=False)
err = Console(stderr=True)

ConfigOpt = Annotated[Path, typer.Option("--config", "-c", help="Site YAML file")]
DEFAULT_CONFIG = Path("config/site.example.yaml")


def _load(path: Path) -> SiteConfig:
    try:
        return load_config(path)
    except ConfigError as e:
        err.print(f"[red]invalid configuration[/red] ({len(e.problems)} problem(s)):")
        for line in e.message.splitlines():
            err.print(f"  {line}", markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None


@app.command("check-config")
def check_config(path: Annotated[Path, typer.Argument(help="Site YAML file")]) -> None:
    """Validate a site file and report every problem with its field path."""
    cfg = _load(path)
    typer.echo(f"{path}: ok — {len(cfg.devices)} devices, {len(cfg.points())} points")


@app.command()
def sim(
    config: ConfigOpt = DEFAULT_CONFIG,
    speed: Annotated[float | None, typer.Option(help="Sim seconds per wall second")] = None,
    fault: Annotated[
        list[str] | None, typer.Option(help="KIND:TARGET[:MAGNITUDE], e.g. stuck:zone1.temp, offline:plant-ctrl, "
                                     "unreliable:zone4.temp")
    ] = None,
    duration: Annotated[float | None, typer.Option(help="Stop after this many wall seconds")] = None,
) -> None:
    """Run the virtual building: it serves every configured device on its host and port."""
    from .sim.runner import parse_fault, run_sim

    cfg = _load(config)
    try:
        faults = [parse_fault(f) for f in fault or []]
    except ValueError as e:
        err.print(f"[red]--fault:[/red] {e}")
        raise typer.Exit(2) from None
    asyncio.run(run_sim(cfg, speed=speed, faults=faults, duration=duration))


@app.command("sim-fault")
def sim_fault(
    spec: Annotated[str, typer.Argument(help="KIND:TARGET[:MAGNITUDE], or 'clear' / 'clear:TARGET'")],
    control: Annotated[str, typer.Option(help="The sim's control URL")] = "http://127.0.0.1:8790",
) -> None:
    """Inject or clear a fault in a running virtual building."""
    from .sim.control import send_fault

    try:
        typer.echo(send_fault(control, spec))
    except (ValueError, ConnectionError) as e:
        err.print(f"[red]sim-fault:[/red] {e}", markup=True, highlight=False)
        raise typer.Exit(1) from None


@app.command()
def serve(
    protocol: Annotated[str, typer.Argument(help="modbus, mqtt, bacnet or opcua")],
    config: ConfigOpt = DEFAULT_CONFIG,
    transport: Annotated[str | None, typer.Option(help="stdio or http")] = None,
    host: Annotated[str | None, typer.Option(help="HTTP bind address (default 127.0.0.1)")] = None,
    port: Annotated[int | None, typer.Option(help="HTTP port")] = None,
) -> None:
    """Run the MCP server of one protocol (stdio by default, or streamable HTTP)."""
    from .servers import run_server

    cfg = _load(config)
    if protocol not in ("modbus", "mqtt", "bacnet", "opcua"):
        err.print(f"[red]unknown protocol[/red] '{protocol}': expected modbus, mqtt, bacnet or opcua")
        raise typer.Exit(2)
    if transport not in (None, "stdio", "http"):
        err.print(f"[red]--transport[/red] must be stdio or http, not '{transport}'")
        raise typer.Exit(2)
    run_server(protocol, cfg, transport=transport, host=host, port=port)


@app.command()
def ingest(
    config: ConfigOpt = DEFAULT_CONFIG,
    duration: Annotated[float | None, typer.Option(help="Stop after this many seconds")] = None,
) -> None:
    """Poll every device, validate, and store readings in the configured store."""
    from .pipeline.ingest import run_ingest

    cfg = _load(config)
    asyncio.run(run_ingest(cfg, duration=duration))


@app.command()
def agent(
    config: ConfigOpt = DEFAULT_CONFIG,
    once: Annotated[bool, typer.Option(help="Run one cycle and exit")] = False,
    duration: Annotated[float | None, typer.Option(help="Stop after this many seconds")] = None,
) -> None:
    """Run the agent: discover the servers' tools and advise on a schedule."""
    from .agents.runtime import run_agent

    cfg = _load(config)
    asyncio.run(run_agent(cfg, once=once, duration=duration))


@app.command()
def demo(
    config: ConfigOpt = DEFAULT_CONFIG,
    duration: Annotated[float | None, typer.Option(help="Stop after this many seconds (default: until Ctrl-C)")] = None,
) -> None:
    """Run the sim, the Modbus MCP server, ingest and the agent together on embedded defaults."""
    from .demo import run_demo

    cfg = _load(config)
    raise typer.Exit(run_demo(cfg, duration=duration))


if __name__ == "__main__":
    app()
