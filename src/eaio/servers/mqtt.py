"""The MQTT MCP server: the core tools plus subscribe_topics, read_messages, publish_message
and broker_info.

``MqttService`` is ``CoreService`` (the same guards, restores and audit for write_point) plus
the logic of the MQTT tools, in a plain class testable without MCP. read_points answers the
last value received per point (with its age): the service subscribes every mapped point when
it opens, so values arrive by push, never by polling.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from typing import TYPE_CHECKING, Annotated, Any, Self

from mcp.server.mcpserver import Context, MCPServer
from mcp.types import CallToolResult, ToolAnnotations
from pydantic import Field

from ..config import SiteConfig
from ..errors import DeviceError, EaioError, ValidationFailed
from ..models import AuditRecord, MqttDevice, ReadingBatch, WriteOutcome
from ..models.mqtt import check_filter
from .results import BrokerInfo, BrokerList, MessageInfo, MessagePage, PublishResult, SubscribeResult
from .service import CoreService
from .tools import LOCAL_ONLY, ToolName, actor_of, register_core_tools, run_tool

if TYPE_CHECKING:
    from ..protocol_adapters.mqtt import MqttAdapter

__all__ = ["MqttService", "build_mqtt_service", "register_mqtt_tools"]

MAX_TOPICS = 50  # filters per subscribe_topics call
MAX_MESSAGES = 1000  # messages per read_messages page
PREVIEW_CHARS = 200  # of a published payload, in its audit record
# A plain int with the choices in the schema, not a Literal: the SDK would refuse qos=3 before
# the tool runs, and a refused publish must still be audited like any other attempt.
QoS = Annotated[int, Field(json_schema_extra={"enum": [0, 1, 2]})]


# Subscribing changes what this server holds on the broker, but destroys nothing and twice is once.
SUBSCRIBE = ToolAnnotations(read_only_hint=False, destructive_hint=False, idempotent_hint=True, open_world_hint=True)
# A published message may drive real equipment, and publishing it twice delivers it twice.
PUBLISH = ToolAnnotations(read_only_hint=False, destructive_hint=True, idempotent_hint=False, open_world_hint=True)


class MqttService(CoreService):
    def __init__(self, cfg: SiteConfig, adapter: MqttAdapter | None = None) -> None:
        if adapter is None:
            from ..protocol_adapters.mqtt import MqttAdapter

            # role "server": a client id of its own, so the broker never confuses it with the ingest's.
            adapter = MqttAdapter(cfg.devices_for("mqtt"), role="server")
        super().__init__(cfg, "mqtt", adapter)
        self.mqtt: Any = adapter

    async def __aenter__(self) -> Self:
        await super().__aenter__()
        try:
            await self.mqtt.subscribe(self.mqtt.points(), self._on_readings)
        except BaseException:
            await super().__aexit__(None, None, None)
            raise
        return self

    async def _on_readings(self, readings: ReadingBatch) -> None:
        """Nothing to do: the adapter keeps the last value per point, which read_points answers."""

    def _health(self) -> list[dict[str, Any]]:
        # The core tools judge a device by "online"; for a broker connection that is "connected".
        rows = super()._health()
        for h in rows:
            h.setdefault("online", bool(h.get("connected")))
        return rows

    def mqtt_device(self, device_id: str | None) -> MqttDevice:
        """The named device, or the only one when ``device_id`` is None."""
        if device_id is not None:
            device = self.device(device_id)
        elif len(self._devices) == 1:
            device = next(iter(self._devices.values()))
        else:
            known = ", ".join(sorted(self._devices)) or "none"
            raise ValidationFailed(f"give device_id: this server has several MQTT devices ({known})")
        assert isinstance(device, MqttDevice)
        return device

    # -- subscribe_topics / read_messages ----------------------------------------------------------
    async def subscribe_topics(
        self, topics: Sequence[str], qos: int = 0, device_id: str | None = None
    ) -> SubscribeResult:
        device = self.mqtt_device(device_id)
        filters = list(dict.fromkeys(topics))
        if not 1 <= len(filters) <= MAX_TOPICS:
            raise ValidationFailed(f"give 1 to {MAX_TOPICS} topic filters (got {len(filters)})")
        _check_qos(qos)
        for f in filters:
            try:
                check_filter(f)
            except ValueError as err:
                raise ValidationFailed(str(err)) from err
        await self.mqtt.subscribe_topics(device.id, filters, qos)
        held = next((h.get("subscriptions") for h in self._health() if h.get("device_id") == device.id), None)
        return SubscribeResult(device_id=device.id, topics=filters, qos=qos, subscriptions=list(held or filters))

    def read_messages(self, since_id: int = 0, limit: int = 100) -> MessagePage:
        if not 1 <= limit <= MAX_MESSAGES:
            raise ValidationFailed(f"limit must be 1..{MAX_MESSAGES}, got {limit}")
        if since_id < 0:
            raise ValidationFailed(f"since_id must be 0 or more, got {since_id}")
        # One more than asked tells whether the page was cut short.
        rows = list(self.mqtt.messages(since_id, limit + 1))
        more = len(rows) > limit
        rows = rows[:limit]
        # Ids are consecutive: a gap before the first one is what the bounded buffer evicted.
        dropped = max(0, int(rows[0]["id"]) - since_id - 1) if rows else 0
        return MessagePage(
            messages=[_message(m) for m in rows],
            next_since_id=int(rows[-1]["id"]) if rows else since_id,
            dropped=dropped,
            more=more,
        )

    # -- publish_message ---------------------------------------------------------------------------
    async def publish_message(
        self,
        topic: str,
        payload: str,
        *,
        qos: int = 0,
        retain: bool = False,
        device_id: str | None = None,
        reason: str | None = None,
        actor: str = "unknown",
    ) -> PublishResult:
        """Check, audit and publish one message. Raises (after auditing) when refused or failed."""
        data = payload.encode("utf-8")
        record = AuditRecord(
            server=self.name, actor=actor, point_id=f"topic:{topic}", device_id=device_id, reason=reason,
            outcome=WriteOutcome.REFUSED, message=_publish_summary(qos, retain, payload, data),
        )
        try:
            device = self.mqtt_device(device_id)
            record.device_id = device.id
            _check_publish(device, topic, data, qos, reason)
        except EaioError as err:
            self._audit_refusal(record, WriteOutcome.REFUSED, err)
            raise
        try:
            await self.mqtt.publish(device.id, topic, data, qos, retain)
        except DeviceError as err:
            self._audit_refusal(record, WriteOutcome.FAILED, err)
            raise
        record.outcome = WriteOutcome.ACCEPTED
        self.audit.append(record)
        return PublishResult(
            device_id=device.id, topic=topic, size=len(data), qos=qos, retain=retain, audit_id=record.id
        )

    def _audit_refusal(self, record: AuditRecord, outcome: WriteOutcome, err: EaioError) -> None:
        summary = record.message
        record.outcome, record.code, record.message = outcome, err.code, f"{err.message} [{summary}]"
        self.audit.append(record)
        err.args = (f"{err.message} (audit {record.id})",)

    # -- broker_info -------------------------------------------------------------------------------
    def broker_info(self) -> BrokerList:
        health = {h.get("device_id"): h for h in self._health()}
        brokers = []
        for device in self._devices.values():
            assert isinstance(device, MqttDevice)
            h, conn = health.get(device.id, {}), device.connection
            brokers.append(BrokerInfo(
                device_id=device.id,
                broker=str(h.get("broker") or f"{conn.host}:{conn.port}"),
                client_id=str(h.get("client_id") or f"{conn.client_id or 'eaio'}-{device.id}-server"),
                tls=conn.tls is not None,
                connected=bool(h.get("connected")),
                session_present=h.get("session_present"),
                subscriptions=list(h.get("subscriptions") or []),
                received=int(h.get("received") or 0),
                readings=int(h.get("readings") or 0),
                dead_letters=int(h.get("dead_letters") or 0),
                reconnects=int(h.get("reconnects") or 0),
                last_error=h.get("last_error"),
            ))
        return BrokerList(brokers=brokers)


def _check_qos(qos: int) -> None:
    if isinstance(qos, bool) or qos not in (0, 1, 2):
        raise ValidationFailed(f"qos must be 0, 1 or 2, got {qos!r}")


def _check_publish(device: MqttDevice, topic: str, data: bytes, qos: int, reason: str | None) -> None:
    """Everything a publish must pass before it reaches the broker; raises the refusal."""
    if reason is not None and len(reason) > 500:
        raise ValidationFailed("reason must be at most 500 characters")
    if not topic or "+" in topic or "#" in topic or "\0" in topic or len(topic.encode()) > 65535:
        raise ValidationFailed(f"'{topic}' is not a topic to publish to (non-empty, no '+' or '#' wildcards)")
    _check_qos(qos)
    if not any(topic.startswith(prefix) for prefix in device.publish_prefixes):
        allowed = ", ".join(f"'{p}'" for p in device.publish_prefixes) or "none are configured"
        raise DeviceError(
            f"'{topic}' is outside the topics '{device.id}' may publish to (publish_prefixes: {allowed})",
            code="not_allowed", device=device.id,
        )
    limit = device.connection.max_payload_bytes
    if len(data) > limit:
        raise ValidationFailed(f"the payload is {len(data)} bytes; '{device.id}' takes at most {limit}")


def _publish_summary(qos: int, retain: bool, payload: str, data: bytes) -> str:
    preview = payload if len(payload) <= PREVIEW_CHARS else payload[:PREVIEW_CHARS] + "..."
    return f"qos={qos} retain={str(retain).lower()} {len(data)} bytes: {preview}"


def _message(m: dict[str, Any]) -> MessageInfo:
    """One buffered message; the payload comes as bytes, or as text already with its encoding."""
    raw, encoding = m.get("payload", b""), m.get("encoding", "utf-8")
    if isinstance(raw, str):
        data = base64.b64decode(raw) if encoding == "base64" else raw.encode("utf-8")
    else:
        data = bytes(raw)
    try:
        text, encoding = data.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        text, encoding = base64.b64encode(data).decode("ascii"), "base64"
    return MessageInfo(
        id=int(m["id"]), ts=m["ts"], device_id=str(m.get("device_id", "")), topic=str(m["topic"]),
        payload=text, encoding=encoding, size=len(data),
        qos=int(m.get("qos", 0)), retain=bool(m.get("retain", False)),
    )


def build_mqtt_service(cfg: SiteConfig, adapter: MqttAdapter | None = None) -> MqttService:
    return MqttService(cfg, adapter)


def register_mqtt_tools(server: MCPServer, service: CoreService) -> None:
    register_core_tools(server, service)
    assert isinstance(service, MqttService)
    _register_subscribe_tools(server, service)
    _register_publish_tools(server, service)


def _register_subscribe_tools(server: MCPServer, service: MqttService) -> None:
    async def subscribe_topics(
        topics: Annotated[list[str], Field(description="Topic filters; '+' is one level, '#' the rest, e.g. "
                                                       "['building/+/temp', 'meters/#']")],
        qos: Annotated[QoS, Field(description="Maximum QoS to receive at")] = 0,
        device_id: Annotated[str | None, Field(description="The broker (device id); default: the only one")] = None,
    ) -> Annotated[CallToolResult, SubscribeResult]:
        return await run_tool(
            service, ToolName.SUBSCRIBE_TOPICS,
            lambda: service.subscribe_topics(topics, qos, device_id), topics=topics, qos=qos, device_id=device_id,
        )

    async def read_messages(
        since_id: Annotated[int, Field(ge=0, description="Only messages with a larger id; 0: the oldest kept")] = 0,
        limit: Annotated[int, Field(ge=1, le=MAX_MESSAGES, description="At most this many messages")] = 100,
    ) -> Annotated[CallToolResult, MessagePage]:
        return await run_tool(
            service, ToolName.READ_MESSAGES,
            lambda: service.read_messages(since_id, limit), since_id=since_id, limit=limit,
        )

    server.add_tool(subscribe_topics, name=ToolName.SUBSCRIBE_TOPICS.value, annotations=SUBSCRIBE, description=(
        "Subscribe this server to MQTT topic filters (wildcards '+' and '#' work). Messages received from then "
        "on can be read with read_messages. Use it to explore what devices publish."
    ))
    server.add_tool(read_messages, name=ToolName.READ_MESSAGES.value, annotations=LOCAL_ONLY, description=(
        "Read received MQTT messages (topic, payload, QoS, retain, time), oldest first: those with an id larger "
        "than since_id. Pass the returned next_since_id to get the following page; 'dropped' counts messages "
        "evicted from the bounded buffer before you read them."
    ))


def _register_publish_tools(server: MCPServer, service: MqttService) -> None:
    async def publish_message(
        topic: Annotated[str, Field(description="A topic (no wildcards) under one of the device's publish_prefixes")],
        payload: Annotated[str, Field(description="The message text, e.g. '21.5' or '{\"sp\": 21.5}'")],
        ctx: Context,
        qos: Annotated[QoS, Field(description="0 at most once, 1 at least once, 2 exactly once")] = 0,
        retain: Annotated[bool, Field(description="Ask the broker to keep it for later subscribers")] = False,
        device_id: Annotated[str | None, Field(description="The broker (device id); default: the only one")] = None,
        reason: Annotated[str | None, Field(description="Why, for the audit log (max 500 chars)")] = None,
    ) -> Annotated[CallToolResult, PublishResult]:
        return await run_tool(
            service, ToolName.PUBLISH_MESSAGE,
            lambda: service.publish_message(
                topic, payload, qos=qos, retain=retain, device_id=device_id, reason=reason, actor=actor_of(ctx)
            ),
            topic=topic, qos=qos, retain=retain, device_id=device_id,
        )

    async def broker_info() -> Annotated[CallToolResult, BrokerList]:
        return await run_tool(service, ToolName.BROKER_INFO, service.broker_info)

    server.add_tool(publish_message, name=ToolName.PUBLISH_MESSAGE.value, annotations=PUBLISH, description=(
        "Publish one MQTT message. Only to topics that start with one of the device's publish_prefixes (others "
        "fail with not_allowed), no wildcards, payload at most max_payload_bytes. To change a setpoint prefer "
        "write_point, which checks bounds. Every attempt is audited."
    ))
    server.add_tool(broker_info, name=ToolName.BROKER_INFO.value, annotations=LOCAL_ONLY, description=(
        "Report each MQTT broker connection: host:port, client id, connected, session_present, subscriptions, "
        "and counts of messages received, readings, dead letters (unparseable or unmapped) and reconnects."
    ))
