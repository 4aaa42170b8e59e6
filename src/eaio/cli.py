"""The ``eaio`` command. Each sub-command loads and checks the config first, then delegates."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated, Any

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


agent_app = typer.Typer(help="The agent: workflows on a schedule, on events and on demand", add_completion=False)
app.add_typer(agent_app, name="agent")


@agent_app.callback(invoke_without_command=True)
def agent(
    ctx: typer.Context,
    config: ConfigOpt = DEFAULT_CONFIG,
    once: Annotated[bool, typer.Option(help="Run one cycle and exit")] = False,
    duration: Annotated[float | None, typer.Option(help="Stop after this many seconds")] = None,
) -> None:
    """Run the agent: discover the servers' tools, run workflows on a schedule and on bus events."""
    # A group whose callback is the agent itself: `eaio agent --config F --once` stays as it was,
    # and `eaio agent ask "..."` is a sub-command.
    ctx.obj = config
    if ctx.invoked_subcommand is not None:
        return
    from .agents.runtime import run_agent

    cfg = _load(config)
    asyncio.run(run_agent(cfg, once=once, duration=duration))


@agent_app.command("ask")
def agent_ask(
    ctx: typer.Context,
    question: Annotated[str, typer.Argument(help='e.g. "why is zone 2 warm?"')],
    config: Annotated[Path | None, typer.Option("--config", "-c", help="Site YAML file")] = None,
) -> None:
    """Ask the agent once; prints its answer (a model's, or the planner's evidence in sentences)."""
    from .agents.runtime import ask_agent
    from .errors import EaioError

    cfg = _load(config or ctx.obj or DEFAULT_CONFIG)
    try:
        decision, outcome = asyncio.run(ask_agent(cfg, question))
    except EaioError as e:
        err.print(f"eaio agent ask: {e}", markup=False, highlight=False)
        raise typer.Exit(1) from None
    model = f", {outcome.model}" if outcome.model else ""
    typer.echo(outcome.answer or "(no answer)")
    err.print(f"[dim]mode {decision.mode.value}{model}; decision {decision.id}[/dim]", highlight=False)


def _approval_records(config: Path) -> tuple[SiteConfig, Path]:
    from .agents.runtime import agent_db_path

    cfg = _load(config)
    return cfg, agent_db_path(cfg)


@app.command()
def approvals(
    config: ConfigOpt = DEFAULT_CONFIG,
    all_: Annotated[bool, typer.Option("--all", help="Every request, not only pending ones")] = False,
) -> None:
    """List the agent's writes waiting for approval (or, with --all, every write it asked for)."""
    from .agents.approvals import is_expired
    from .agents.records import Records

    _, path = _approval_records(config)
    with Records(path) as records:
        rows = records.list_approvals(None if all_ else "pending")
    if not rows:
        typer.echo("no pending approvals" if not all_ else "no write requests")
        return
    for r in rows:
        dur = f" for {r.duration_s / 60:g} min" if r.duration_s else ""
        status = "pending (expired)" if r.status == "pending" and is_expired(r) else r.status
        by = f" (by {r.decided_by})" if r.decided_by else ""
        typer.echo(f"{r.id}  {r.created:%Y-%m-%d %H:%M:%S}  {status:<17} {r.point_id} = {r.value}{dur}  "
                   f"[{r.tool}] {r.reason}{by}")


@app.command()
def approve(
    approval_id: Annotated[str, typer.Argument(help="The id `eaio approvals` shows")],
    config: ConfigOpt = DEFAULT_CONFIG,
) -> None:
    """Execute a queued write through the servers (their guard, bounds and audit), and record the result.

    A temporary write (with a duration) whose servers are the agent's stdio children is handed to
    the running agent instead: a server restores its temporary writes when it stops, so a server
    started just for this command would undo the write as the command exits."""
    from .agents.approvals import execute_approval, hand_to_agent, known_approval
    from .agents.host import McpHost
    from .agents.records import Records
    from .errors import EaioError

    cfg, path = _approval_records(config)
    ephemeral = cfg.agent.servers is None or any(ref.command is not None for ref in cfg.agent.servers)

    async def run() -> Any:
        with Records(path) as records:
            row = known_approval(records, approval_id)
            if ephemeral and row.duration_s:
                return hand_to_agent(records, approval_id, who=_who())
            async with McpHost.from_config(cfg) as host:
                return await execute_approval(host, records, approval_id, who=_who())

    try:
        row = asyncio.run(run())
    except EaioError as e:
        err.print(f"eaio approve: {e}", markup=False, highlight=False)
        raise typer.Exit(2 if e.code == "unknown_approval" else 1) from None
    if row.status == "approved":
        typer.echo(f"{row.id}: approved; the running agent (eaio agent) writes {row.point_id} = {row.value} "
                   f"for {row.duration_s / 60:g} min within a few seconds (see `eaio approvals --all`)")
        return
    result = row.result or {}
    if row.status != "executed":
        err.print(f"eaio approve: {row.id} failed: {row.note}", markup=False, highlight=False)
        raise typer.Exit(1)
    restore = f", restored at {result['restore_at']}" if result.get("restore_at") else ""
    typer.echo(f"{row.id}: {row.point_id} = {result.get('readback_value', row.value)} written "
               f"(audit {result.get('audit_id', '?')}{restore})")


@app.command()
def reject(
    approval_id: Annotated[str, typer.Argument(help="The id `eaio approvals` shows")],
    config: ConfigOpt = DEFAULT_CONFIG,
    reason: Annotated[str, typer.Option(help="Why, kept with the request")] = "",
) -> None:
    """Refuse a queued write: it will never be made."""
    from .agents.approvals import reject_approval
    from .agents.records import Records
    from .errors import EaioError

    _, path = _approval_records(config)
    try:
        with Records(path) as records:
            row = reject_approval(records, approval_id, reason=reason, who=_who())
    except EaioError as e:
        err.print(f"eaio reject: {e}", markup=False, highlight=False)
        raise typer.Exit(2 if e.code == "unknown_approval" else 1) from None
    typer.echo(f"{row.id}: rejected ({row.point_id} = {row.value} will not be written)")


def _who() -> str:
    import getpass

    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "operator"


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
