"""Load and check the site configuration before any I/O.

YAML -> pydantic models (``extra="forbid"``) -> a check step for what a schema cannot say
(duplicate ids, overlapping registers, write bounds outside limits). Every problem names the
file and the field path, e.g. ``devices[2].points[5].address.register``. Environment variables
``EAIO_<FIELD>`` (nested with ``__``, e.g. ``EAIO_STORAGE__SQLITE__PATH``) override the file.
"""

from __future__ import annotations

import itertools
from collections import defaultdict
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from .errors import ConfigError
from .models import BacnetDevice, BacnetLocal, ModbusDevice, MqttDevice, MqttTls, OpcuaDevice, Point, PointKind
from .models.mqtt import _TEMPLATE, MqttConnection

__all__ = [
    "AgentServerRef",
    "AgentSettings",
    "ApprovalRule",
    "BufferSettings",
    "EnergySettings",
    "EventMqtt",
    "EventSettings",
    "InfluxSettings",
    "IngestSettings",
    "LLMSettings",
    "MemorySettings",
    "ServerSettings",
    "SimBacnet",
    "SimFaultSpec",
    "SimMqtt",
    "SimOpcua",
    "SimSettings",
    "SiteConfig",
    "SiteInfo",
    "StorageSettings",
    "load_config",
]


# A device is one of the protocols' device models, chosen by its `protocol` field.
_DEVICE_MODELS = (ModbusDevice, MqttDevice, BacnetDevice, OpcuaDevice)
AnyDevice = Annotated[ModbusDevice | MqttDevice | BacnetDevice | OpcuaDevice, Field(discriminator="protocol")]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SiteInfo(_Strict):
    id: str = "site"
    name: str = ""
    timezone: str = "UTC"


class SqliteSettings(_Strict):
    path: str = Field(default="eaio.db", description="Relative paths are under data_dir")


class InfluxSettings(_Strict):
    """An InfluxDB server: version 2 through influxdb-client (token, org, bucket; Flux queries) or
    version 1 over its HTTP API (line protocol to /write, InfluxQL to /query)."""

    version: Literal[1, 2] = 2
    url: str = Field(default="http://127.0.0.1:8086", pattern=r"^https?://")
    token: str | None = Field(default=None, description="v2: API token (required)")
    org: str | None = Field(default=None, description="v2: organisation (required)")
    bucket: str = Field(default="eaio", min_length=1, description="v2: bucket")
    database: str = Field(default="eaio", min_length=1, description="v1: database (created when missing)")
    retention_policy: str | None = Field(default=None, description="v1: retention policy; default the database's")
    username: str | None = Field(default=None, description="v1: user, when the server requires auth")
    password: str | None = None
    measurement: str = Field(default="readings", min_length=1, description="Measurement every reading is written to")
    timeout_s: float = Field(default=10.0, gt=0, le=300, description="Per HTTP request")
    verify_ssl: bool = True

    @model_validator(mode="after")
    def _v2_credentials(self) -> InfluxSettings:
        if self.version == 2 and (not self.token or not self.org):
            raise ValueError("InfluxDB 2 needs 'token' and 'org'")
        return self


class BufferSettings(_Strict):
    """The durable store-and-forward buffer in front of a remote store (SQLite, WAL)."""

    path: str = Field(default="buffer.db", description="Relative paths are under data_dir")
    max_readings: int = Field(default=10_000_000, ge=1_000, description="Capacity; a warning at 90% full")
    batch_size: int = Field(default=5_000, ge=1, le=5_000, description="Most readings (lines) per store write")
    retry_initial_s: float = Field(default=0.5, gt=0, le=60, description="First wait after a failed write")
    retry_max_s: float = Field(default=30.0, gt=0, le=3600, description="Longest wait between retries")


class StorageSettings(_Strict):
    backend: Literal["sqlite", "influxdb"] = Field(
        default="sqlite", description="sqlite: embedded, written directly; influxdb: through the durable buffer"
    )
    sqlite: SqliteSettings = Field(default_factory=SqliteSettings)
    influxdb: InfluxSettings | None = None
    buffer: BufferSettings = Field(default_factory=BufferSettings)

    @model_validator(mode="after")
    def _backend_settings(self) -> StorageSettings:
        if self.backend == "influxdb" and self.influxdb is None:
            raise ValueError("backend 'influxdb' needs an 'influxdb' section")
        return self


class EventMqtt(_Strict):
    """The broker events are published to (QoS 1)."""

    host: str = "127.0.0.1"
    port: int = Field(default=1883, ge=1, le=65535)
    client_id: str = Field(default="eaio-events", min_length=1)
    username: str | None = None
    password: str | None = None
    tls: MqttTls | None = None
    keepalive_s: int = Field(default=30, ge=5, le=3600)
    max_queued: int = Field(default=100_000, ge=100, description="Events held while the broker is away")

    def connection(self) -> MqttConnection:
        """As an MQTT connection (a clean session: events are published, and subscribed live)."""
        return MqttConnection(host=self.host, port=self.port, clean_session=True, keepalive_s=self.keepalive_s,
                              username=self.username, password=self.password, tls=self.tls)


class EventSettings(_Strict):
    """The event bus: topics eaio/<site>/<kind>/<point> as JSON. In process always; on MQTT when a
    broker is given."""

    mqtt: EventMqtt | None = Field(default=None, description="Broker to publish to; none: events stay in process")
    prefix: str = Field(default="eaio", min_length=1, description="First topic level")
    readings_every_s: float | None = Field(
        default=60.0, ge=0, description="At most one reading event per point per this many seconds (0: every "
        "reading; null: none). Quality changes, faults and demand are never decimated",
    )
    qos: Literal[0, 1, 2] = 1


class EnergySettings(_Strict):
    demand_interval_s: float = Field(
        default=900.0, ge=60, le=86_400, description="Demand (kW) is averaged over intervals of this length"
    )


class ServerSettings(_Strict):
    transport: Literal["stdio", "http"] = "stdio"
    host: str = "127.0.0.1"
    port: int = Field(default=8700, ge=0, le=65535)
    audit_log: str = Field(default="", description="JSONL audit file; default <data_dir>/audit/<protocol>.jsonl")
    max_read_points: int = Field(default=500, ge=1, description="Points one read_points call may ask for")


class IngestSettings(_Strict):
    stale_after_polls: float = Field(default=3.0, gt=0, description="Missed polls before a point is stale")
    batch_size: int = Field(
        default=20_000, ge=1,
        description="Most readings per store transaction. Under load the writer takes what is pending up to this: "
                    "bigger transactions amortise the index pages each one rewrites (one per point).",
    )
    flush_interval_s: float = Field(
        default=0.1, ge=0, le=60,
        description="Longest a reading waits for more to share its store transaction (unless batch_size fills first)",
    )


class AgentServerRef(_Strict):
    name: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    command: list[str] | None = None
    url: str | None = None
    token: str | None = None

    @model_validator(mode="after")
    def _one_way(self) -> AgentServerRef:
        if (self.command is None) == (self.url is None):
            raise ValueError("give exactly one of 'command' or 'url'")
        return self


class LLMSettings(_Strict):
    """The local model, through Ollama. Without it (or when it fails) the no-LLM planner runs."""

    backend: Literal["none", "ollama"] = "none"
    url: str = Field(default="http://127.0.0.1:11434", pattern=r"^https?://")
    model: str = Field(default="qwen2.5:7b", min_length=1, description="A model that supports tools")
    fallback_model: str | None = Field(default="qwen2.5:1.5b", description="Smaller model: after the main one fails, "
                                       "or up front when free memory cannot hold the main one")
    num_ctx: int | None = Field(default=None, ge=512, le=262_144,
                                description="Context window sent as options.num_ctx; default: sized to the prompt")
    max_ctx: int = Field(default=32_768, ge=2048, le=262_144, description="Largest num_ctx the sizing may choose")
    keep_alive: str = Field(default="10m", description="How long Ollama keeps the model loaded after a call")
    max_steps: int = Field(default=8, ge=1, le=50, description="Most model turns (tool rounds) per task")
    timeout_s: float = Field(default=120.0, gt=0, le=3600, description="Per model turn")
    temperature: float = Field(default=0.1, ge=0, le=2)
    max_tool_result_chars: int = Field(default=4_000, ge=200, le=200_000,
                                       description="A tool result is trimmed to this before it enters a prompt")


class ApprovalRule(_Strict):
    """Which writes an agent may make on its own. The first rule that matches a point decides."""

    points: list[str] = Field(default_factory=list, description="Point id globs ('zone*.cool_sp'); any when empty")
    kinds: list[PointKind] = Field(default_factory=list, description="Point kinds; any when empty")
    brick: list[str] = Field(default_factory=list, description="Brick classes; any when empty")
    policy: Literal["auto", "approve", "deny"] = Field(
        description="auto: written at once (inside bounds, audited); approve: queued for `eaio approve ID`; deny: never"
    )


class MemorySettings(_Strict):
    """The agent's memory of decisions, outcomes and notes (chromadb, persistent, under data_dir)."""

    enabled: bool = True
    path: str = Field(default="memory", description="chromadb directory; relative paths are under data_dir")
    embedder: Literal["onnx", "ollama"] = Field(
        default="onnx", description="onnx: a model shipped in a Python package, run on onnxruntime (offline); "
        "ollama: the llm.url server's embeddings")
    ollama_model: str = Field(default="nomic-embed-text", description="Embedding model when embedder is ollama")
    ollama_timeout_s: float = Field(default=60.0, gt=0, le=3600, description="Per embedding request when embedder "
                                    "is ollama (the first one may load the model)")
    recall: int = Field(default=3, ge=0, le=20, description="Similar past situations recalled into a prompt")


class AgentSettings(_Strict):
    interval_s: float = Field(default=60.0, gt=0)
    servers: list[AgentServerRef] | None = Field(
        default=None, description="Default: one stdio child 'eaio serve <protocol>' per protocol in use"
    )
    comfort_band_c: float = Field(default=1.0, gt=0, description="Allowed distance from setpoint")
    call_timeout_s: float = Field(default=10.0, gt=0)
    llm: LLMSettings = Field(default_factory=LLMSettings)
    approvals: list[ApprovalRule] = Field(
        default_factory=list, description="Write policy by point class; the first match decides"
    )
    default_approval: Literal["auto", "approve", "deny"] = Field(
        default="approve", description="Policy for a write no rule matches"
    )
    memory: MemorySettings = Field(default_factory=MemorySettings)
    events: bool = Field(default=True, description="Run workflows on bus events (faults, stale sensors, demand "
                         "peaks) when events.mqtt names a broker")
    demand_peak_kw: float | None = Field(default=None, gt=0,
                                         description="A demand event above this starts the demand workflow")
    reopen_within_s: float = Field(default=900.0, ge=0, description="A finding back this soon after it was "
                                   "resolved reopens its recommendation instead of making a new one")


class SimFaultSpec(_Strict):
    kind: Literal["stuck", "spike", "drift", "offline", "unreliable"]
    target: str = Field(description="A point id (stuck, spike, drift, unreliable) or a device id (offline)")
    magnitude: float = Field(default=0.0, description="spike: added value; drift: units per sim hour")
    start_s: float = Field(default=0.0, ge=0, description="Sim seconds after start")
    duration_s: float | None = Field(default=None, gt=0)


class SimMqtt(_Strict):
    """The virtual building's MQTT face: IoT zone sensors and sub-meters published as JSON."""

    device: str = Field(description="Id of the MQTT device whose broker connection the sim publishes through")
    prefix: str | None = Field(default=None, description="Topic prefix; default the site id")
    env_interval_s: float = Field(default=60.0, gt=0, description="Sim seconds between zone env messages")
    meter_interval_s: float = Field(default=60.0, gt=0, description="Sim seconds between sub-meter messages")
    qos: Literal[0, 1] = 1


class SimBacnet(_Strict):
    """How the virtual building's BACnet devices behave on the wire (all of them)."""

    no_rpm: list[str] = Field(default_factory=list,
                              description="Devices that refuse ReadPropertyMultiple, as some old controllers do")
    no_cov: list[str] = Field(default_factory=list,
                              description="Devices that refuse SubscribeCOV (Reject unrecognized-service), as "
                              "controllers without COV do: clients must poll their points")
    max_apdu: int = Field(default=1476, ge=50, le=1476, description="Largest APDU the devices accept")
    segmentation: bool = Field(default=True, description="Whether the devices segment long answers")


class SimOpcua(_Strict):
    """The virtual building's OPC-UA servers (all of them)."""

    certificate: str | None = Field(default=None, description="Server certificate (PEM/DER): with it and the key, "
                                    "the servers also offer Basic256Sha256 Sign and SignAndEncrypt")
    private_key: str | None = None
    history: list[str] = Field(default_factory=list, description="Point ids whose values the servers keep history of")
    history_size: int = Field(default=10_000, ge=10, le=1_000_000, description="Values kept per historized node")
    username: str | None = Field(default=None, description="When set (with password), logins are required")
    password: str | None = None


class SimSettings(_Strict):
    speed: float = Field(default=1.0, gt=0, le=10000)
    start: datetime | None = Field(default=None, description="Sim clock at start (local site time)")
    seed: int = 42
    step_s: float = Field(default=0.5, gt=0, le=60, description="Wall seconds between physics updates")
    noise: bool = Field(default=True, description="Sensor noise on measured values (temperature, humidity, CO2, "
                        "pressure), as real sensors have; off gives the physics' exact values")
    control_port: int | None = Field(default=None, ge=0, le=65535, description="HTTP control API")
    meter_start_wh: int = Field(
        default=4_294_967_295 - 20_000, ge=0, le=4_294_967_295, description="Initial 32-bit energy counter"
    )
    faults: list[SimFaultSpec] = Field(default_factory=list)
    strict_gaps: list[str] = Field(
        default_factory=list,
        description="Devices whose faces refuse reads through unmapped registers (as some real devices do); "
        "the others serve each table as one block from its lowest to its highest mapped register",
    )
    mqtt: SimMqtt | None = Field(default=None, description="MQTT face (off when absent)")
    bacnet: SimBacnet = Field(default_factory=SimBacnet, description="The BACnet faces' wire behaviour")
    opcua: SimOpcua = Field(default_factory=SimOpcua, description="The OPC-UA faces' security and history")


class SiteConfig(BaseSettings):
    model_config = SettingsConfigDict(
        extra="forbid", env_prefix="EAIO_", env_nested_delimiter="__", nested_model_default_partial_update=True
    )

    site: SiteInfo = Field(default_factory=SiteInfo)
    data_dir: Path = Path(".eaio")
    devices: list[AnyDevice] = Field(default_factory=list)
    storage: StorageSettings = Field(default_factory=StorageSettings)
    servers: dict[str, ServerSettings] = Field(default_factory=dict)
    ingest: IngestSettings = Field(default_factory=IngestSettings)
    events: EventSettings = Field(default_factory=EventSettings)
    energy: EnergySettings = Field(default_factory=EnergySettings)
    agent: AgentSettings = Field(default_factory=AgentSettings)
    sim: SimSettings = Field(default_factory=SimSettings)
    bacnet: BacnetLocal = Field(default_factory=BacnetLocal, description="EAIO's own BACnet/IP applications")
    # Where this configuration came from; set by load_config, never read from YAML.
    source: Path | None = Field(default=None, exclude=True)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The environment overrides the file, as an operator expects of a deployed service.
        return (env_settings, init_settings)

    # -- convenience views -------------------------------------------------------------------
    def points(self) -> list[Point]:
        return [p for d in self.devices for p in d.points]

    def point(self, point_id: str) -> Point | None:
        return self._point_index().get(point_id)

    def _point_index(self) -> dict[str, Point]:
        return {p.id: p for p in self.points()}

    def devices_for(self, protocol: str) -> list[Any]:
        return [d for d in self.devices if d.protocol == protocol]

    def protocols(self) -> list[str]:
        return sorted({d.protocol for d in self.devices})

    def server_settings(self, protocol: str) -> ServerSettings:
        return self.servers.get(protocol, ServerSettings())

    def resolve(self, path: str | Path) -> Path:
        """A path from the config, relative to data_dir unless absolute."""
        p = Path(path)
        return p if p.is_absolute() else self.data_dir / p

    def audit_path(self, protocol: str) -> Path:
        configured = self.server_settings(protocol).audit_log
        return self.resolve(configured or f"audit/{protocol}.jsonl")

    def sqlite_path(self) -> Path:
        return self.resolve(self.storage.sqlite.path)

    def buffer_path(self) -> Path:
        return self.resolve(self.storage.buffer.path)


def _format_loc(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in ("modbus", "mqtt", "bacnet", "opcua") and out.endswith("]"):
            continue  # the discriminator tag adds nothing a reader needs
        else:
            out += ("." if out else "") + str(part)
    return out


def _pydantic_problems(err: ValidationError) -> list[tuple[str, str]]:
    problems = []
    for e in err.errors():
        if e["type"] in ("union_tag_invalid", "union_tag_not_found"):
            # The device's `protocol` chooses its model: say so at that field, in plain words.
            ctx = e.get("ctx", {})
            expected = ", ".join(repr(get_args(m.model_fields["protocol"].annotation)[0]) for m in _DEVICE_MODELS)
            got = f" (got {ctx['tag']!r})" if "tag" in ctx else " (missing)"
            problems.append((_format_loc((*e["loc"], "protocol")), f"must be one of {expected}{got}"))
            continue
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] not in ("missing", "extra_forbidden") and "input" in e and not isinstance(e["input"], dict):
            msg += f" (got {e['input']!r})"
        if e["type"] == "extra_forbidden":
            msg = "unknown field"
        problems.append((_format_loc(tuple(e["loc"])), msg))
    return problems


def check(cfg: SiteConfig) -> list[tuple[str, str]]:
    """Checks across fields that a schema cannot express."""
    problems: list[tuple[str, str]] = []
    seen_dev: dict[str, int] = {}
    seen_pt: dict[str, str] = {}
    for di, dev in enumerate(cfg.devices):
        if dev.id in seen_dev:
            problems.append((f"devices[{di}].id", f"duplicate device id '{dev.id}' (also devices[{seen_dev[dev.id]}])"))
        seen_dev.setdefault(dev.id, di)
        for pi, pt in enumerate(dev.points):
            where = f"devices[{di}].points[{pi}]"
            if pt.id in seen_pt:
                problems.append((f"{where}.id", f"duplicate point id '{pt.id}' (also {seen_pt[pt.id]})"))
            seen_pt.setdefault(pt.id, where)
            problems += _check_write_bounds(pt, where)
        if isinstance(dev, ModbusDevice):
            problems += _check_modbus(dev, di)
        elif isinstance(dev, MqttDevice):
            problems += _check_mqtt(dev, di)
        elif isinstance(dev, OpcuaDevice):
            problems += _check_opcua(dev, di)
        else:
            problems += _check_bacnet(dev, di)
    problems += _check_bacnet_addresses(cfg)
    if cfg.sim.mqtt is not None and cfg.sim.mqtt.device not in {d.id for d in cfg.devices_for("mqtt")}:
        problems.append(("sim.mqtt.device", f"'{cfg.sim.mqtt.device}' is not an MQTT device of this site"))
    opcua_points = {p.id for d in cfg.devices_for("opcua") for p in d.points}
    for i, point_id in enumerate(cfg.sim.opcua.history):
        if point_id not in opcua_points:
            problems.append((f"sim.opcua.history[{i}]", f"'{point_id}' is not a point of an OPC-UA device"))
    bacnet_ids = {d.id for d in cfg.devices_for("bacnet")}
    for i, dev_id in enumerate(cfg.sim.bacnet.no_rpm):
        if dev_id not in bacnet_ids:
            problems.append((f"sim.bacnet.no_rpm[{i}]", f"'{dev_id}' is not a BACnet device of this site"))
    for i, dev_id in enumerate(cfg.sim.bacnet.no_cov):
        if dev_id not in bacnet_ids:
            problems.append((f"sim.bacnet.no_cov[{i}]", f"'{dev_id}' is not a BACnet device of this site"))
    problems += _check_derived(cfg)
    for name in cfg.servers:
        if name not in ("modbus", "bacnet", "opcua", "mqtt"):
            problems.append((f"servers.{name}", "unknown protocol; expected modbus, bacnet, opcua or mqtt"))
    return problems


def _check_derived(cfg: SiteConfig) -> list[tuple[str, str]]:
    """Ingest derives '<counter>.interval' and '<point>.demand' readings: a configured point with one
    of those ids would mix two series under one id."""
    from .pipeline.energy import energy_sources  # the pipeline builds on the config; imported only when checking

    try:
        energy_sources(cfg)
    except ConfigError as err:
        return list(err.problems)
    return []


def _check_modbus(dev: ModbusDevice, di: int) -> list[tuple[str, str]]:
    problems = []
    used: dict[tuple[int, str], list[tuple[int, int, int]]] = defaultdict(list)
    for pi, pt in enumerate(dev.points):
        a = pt.address
        used[(a.unit if a.unit is not None else dev.connection.unit, a.table)].append(
            (a.register, a.register + a.count - 1, pi)
        )
    for (unit, table), spans in used.items():
        spans.sort()
        for (s0, e0, p0), (s1, _e1, p1) in itertools.pairwise(spans):
            if s1 <= e0:
                problems.append((
                    f"devices[{di}].points[{p1}].address.register",
                    f"registers {s1}.. overlap points[{p0}] ({table} {s0}..{e0}, unit {unit})",
                ))
    return problems


def _check_mqtt(dev: MqttDevice, di: int) -> list[tuple[str, str]]:
    problems = []
    declared = {p.id for p in dev.points}
    for si, sub in enumerate(dev.subscriptions):
        for template in sub.templates():
            # A template without wildcards names one point: it must be declared on this device.
            if not _TEMPLATE.search(template) and template not in declared:
                problems.append((f"devices[{di}].subscriptions[{si}]", f"'{template}' is not a point of this device"))
    for pi, pt in enumerate(dev.points):
        if pt.writable and pt.command is None:
            problems.append((f"devices[{di}].points[{pi}].command", "a writable MQTT point needs a command topic"))
    if dev.connection.tls is None and dev.connection.port == 8883:
        problems.append((f"devices[{di}].connection.tls", "port 8883 is MQTT over TLS: give a tls section"))
    return problems


def _check_bacnet(dev: BacnetDevice, di: int) -> list[tuple[str, str]]:
    problems = []
    seen: dict[tuple[str, int, str], int] = {}
    for pi, pt in enumerate(dev.points):
        a = pt.address
        key = (a.type, a.instance, a.property)
        if key in seen:
            problems.append((f"devices[{di}].points[{pi}].address",
                             f"{a.object_id} {a.property} is also points[{seen[key]}]"))
        seen.setdefault(key, pi)
        if pt.writable and not pt.commandable:
            problems.append((f"devices[{di}].points[{pi}].writable",
                             f"{a.type} {a.property} has no priority array: only the present-value of an "
                             "output or value object (AO, AV, BO, BV, MSO, MSV) is writable"))
    return problems


def _check_opcua(dev: OpcuaDevice, di: int) -> list[tuple[str, str]]:
    problems = []
    seen: dict[str, int] = {}
    for pi, pt in enumerate(dev.points):
        if pt.address.node_id in seen:
            problems.append((f"devices[{di}].points[{pi}].address.node_id",
                             f"'{pt.address.node_id}' is also points[{seen[pt.address.node_id]}]"))
        seen.setdefault(pt.address.node_id, pi)
    return problems


def _check_bacnet_addresses(cfg: SiteConfig) -> list[tuple[str, str]]:
    problems = []
    seen: dict[tuple[str, int], int] = {}
    for di, dev in enumerate(cfg.devices):
        if isinstance(dev, BacnetDevice):
            key = (dev.connection.host, dev.connection.port)
            if key in seen:
                problems.append((f"devices[{di}].connection.address",
                                 f"{key[0]}:{key[1]} is also devices[{seen[key]}] (one BACnet device per address)"))
            seen.setdefault(key, di)
            if key[1] in cfg.bacnet.ports.values() and key[0] == cfg.bacnet.interface.split("/")[0]:
                problems.append((f"devices[{di}].connection.address",
                                 f"{key[0]}:{key[1]} is one of EAIO's own ports (bacnet.ports)"))
    return problems


def _check_write_bounds(pt: Point, where: str) -> list[tuple[str, str]]:
    if not pt.writable:
        if pt.write_bounds is not None:
            return [(f"{where}.write_bounds", "given for a point that is not writable")]
        return []
    if pt.is_binary:
        return []
    wb = pt.write_bounds
    if wb is None or wb.low is None or wb.high is None:
        return [(f"{where}.write_bounds", "a writable analog point needs write_bounds with low and high")]
    if pt.limits and not (pt.limits.contains(wb.low) and pt.limits.contains(wb.high)):
        return [(f"{where}.write_bounds", f"{wb.describe()} must lie inside limits {pt.limits.describe()}")]
    return []


def load_config(path: str | Path, **overrides: Any) -> SiteConfig:
    """Read, validate and check a site file. Raises ConfigError naming the file and fields."""
    source = Path(path)
    try:
        raw = yaml.safe_load(source.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(str(source), [("", "file not found")]) from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(str(source), [(where, f"not valid YAML: {getattr(err, 'problem', err)}")]) from err
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(str(source), [("", "the top level must be a mapping")])
    raw.update(overrides)
    try:
        cfg = SiteConfig(**raw)
    except ValidationError as err:
        raise ConfigError(str(source), _pydantic_problems(err)) from err
    problems = check(cfg)
    if problems:
        raise ConfigError(str(source), problems)
    cfg.source = source.resolve()
    return cfg
