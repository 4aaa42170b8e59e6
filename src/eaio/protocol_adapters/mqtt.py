"""The MQTT adapter: one paho-mqtt 2.x client per device (broker connection).

Each client runs paho's network thread (``loop_start``), which also reconnects with backoff
(``reconnect_min_s`` doubling to ``reconnect_max_s``) for as long as the adapter is open.
Messages are decoded in that thread (``mqtt_payload``, pure) straight into a pending columnar
``ReadingBatch`` (and the last-value table and bounded message buffer, except for the ingest
role, which reads neither); one asyncio task hands each batch to the subscribers, so the event
loop is woken once per batch, not once per message. No paho type leaves this module.

The ingest role with a persistent session acknowledges QoS 1 messages itself (paho's manual
acks): a subscriber that takes acks (``subscribe(..., acks=True)``) gets with each batch one
callable that acknowledges all the messages behind it, and calls it once their readings are
durable. Until then the broker keeps them in our session and sends them again after a crash.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import logging
import math
import ssl
import struct
import sys
import threading
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Self

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode

from ..errors import DeviceError
from ..models import (
    DeadLetter,
    MqttConnection,
    MqttDevice,
    MqttPoint,
    Point,
    Quality,
    Reading,
    ReadingBatch,
    Reason,
    Value,
    from_us,
)
from ..models.mqtt import check_filter
from .base import ConfiguredPoints, ReadingCallback
from .mqtt_payload import PayloadDecoder

__all__ = ["AckCallback", "AckedReadingCallback", "DeadLetterCallback", "MqttAdapter"]

_MAX_PENDING = 100_000  # readings waiting for subscribers before a network thread waits
# After the first message of a batch wakes the event loop, it waits this long for more before
# taking the batch. Waking the loop costs the network thread a syscall and a GIL hand-off; at
# 20k messages/s, waking per message (or per handful) halves what paho itself can receive.
_LINGER_S = 0.02
_READ_CHUNK = 256 * 1024  # bytes one socket read may take (see _BufferedSocket)
_BURST = 256  # packets read from memory per turn of paho's loop (see _Client.loop_read)
log = logging.getLogger(__name__)

DeadLetterCallback = Callable[[DeadLetter], Awaitable[None]]
AckCallback = Callable[[], None]
# What a subscriber with ``acks=True`` is called with: the batch, and the callable that
# acknowledges its messages (None when none of them needs it: QoS 0, or automatic acks).
AckedReadingCallback = Callable[[ReadingBatch, AckCallback | None], Awaitable[None]]
_Ack = tuple["_Link", int, int]  # (link, its connection number when the message came, message id)


class _BufferedSocket:
    """A socket whose small reads come from memory.

    paho reads a packet as recv(1) for its type, recv(1) per length byte, then recv(rest):
    three system calls per message, and with other threads busy each is also a GIL hand-off,
    which capped ingest at about half of what paho can receive alone. This takes whatever the
    kernel holds in one call and serves paho's reads from it; ``pending()`` tells paho's loop
    that bytes are waiting, exactly as an SSL socket does (paho checks for that method).
    """

    __slots__ = ("_buf", "_pos", "_sock")

    def __init__(self, sock: Any) -> None:
        self._sock, self._buf, self._pos = sock, b"", 0

    def recv(self, size: int) -> bytes:
        if self._pos >= len(self._buf):
            data = self._sock.recv(max(size, _READ_CHUNK))  # BlockingIOError/SSL errors reach paho as before
            if len(data) <= size:
                return data
            self._buf, self._pos = data, size
            return data[:size]
        start = self._pos
        self._pos = min(start + size, len(self._buf))
        return self._buf[start:self._pos]

    def buffered(self) -> int:
        return len(self._buf) - self._pos

    def pending(self) -> int:
        inner = getattr(self._sock, "pending", None)
        return len(self._buf) - self._pos + (inner() if inner is not None else 0)

    def __getattr__(self, name: str) -> Any:  # send, fileno, setblocking, close, ...
        return getattr(self._sock, name)


class _Client(paho.Client):
    # _create_socket is paho 2.x's one place that makes the connection's socket (TCP + TLS).
    def _create_socket(self) -> Any:
        return _BufferedSocket(super()._create_socket())

    _filtered = False  # whether message_callback_add() was ever called

    def message_callback_add(self, sub: str, callback: Any) -> None:
        self._filtered = True
        super().message_callback_add(sub, callback)

    def _handle_on_message(self, message: paho.MQTTMessage) -> None:
        # paho matches every message against message_callback_add() filters (a generator walk
        # and two topic decodes) before calling on_message; EAIO adds no such filters.
        if self._filtered:
            super()._handle_on_message(message)
            return
        on_message = self.on_message
        if on_message is not None:
            with self._in_callback_mutex:
                try:
                    on_message(self, self._userdata, message)
                except Exception as err:
                    self._easy_log(paho.MQTT_LOG_ERR, "Caught exception in on_message: %s", err)
                    if not self.suppress_exceptions:
                        raise

    def loop_read(self, max_packets: int = 1) -> MQTTErrorCode:
        # paho's loop reads one packet per select(); while whole packets sit in our buffer that
        # select() is a system call and a GIL hand-off per message for nothing. Read on from
        # memory (bounded, so that writes and keepalives still get their turn every few ms).
        rc = super().loop_read(max_packets)
        sock = self._sock
        for _ in range(_BURST):
            if rc != MQTTErrorCode.MQTT_ERR_SUCCESS or self._sock is not sock or not isinstance(
                    sock, _BufferedSocket) or not sock.buffered():
                break
            rc = super().loop_read(max_packets)
        return rc

    def ack_all(self, mids: Sequence[int]) -> None:
        """PUBACK each QoS 1 message id, in order, waking the network thread once for all of them.

        paho's ``ack(mid, 1)`` queues the same packet but writes a wake-up byte per message; this
        runs on the event loop for a whole batch at a time. Queueing from another thread is what
        paho's own publish() does (a deque append, then the socket pair)."""
        out = self._out_packet
        for mid in mids:
            out.append({"command": paho.PUBACK, "mid": mid, "qos": 1, "pos": 0, "to_process": 4,
                        "packet": struct.pack("!BBH", paho.PUBACK, 2, mid), "info": None})
        if self._sockpairW is not None:
            with contextlib.suppress(BlockingIOError):  # full: the thread is awake already
                self._sockpairW.send(b"0")
        self._call_socket_register_write()

    def _handle_pubrel(self) -> MQTTErrorCode:
        # With manual acks paho leaves QoS 2's PUBCOMP to ack(), even for a PUBREL it knows
        # nothing of (one the broker resends after our restart), which would hold that message
        # id at the broker for good. A QoS 2 message is past recall once we sent PUBREC (the
        # broker keeps only its id), so delaying PUBCOMP would save nothing: send it now.
        rc = super()._handle_pubrel()
        if self._manual_ack and rc == MQTTErrorCode.MQTT_ERR_SUCCESS:
            (mid,) = struct.unpack_from("!H", self._in_packet["packet"])
            return self._send_pubcomp(mid)
        return rc


def paho_client(conn: MqttConnection, client_id: str) -> paho.Client:
    """A paho client for a broker connection: session, credentials, TLS and reconnect backoff as
    the site file says. Raises OSError/ValueError/ssl.SSLError when certificates cannot be loaded."""
    client = _Client(
        CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=conn.clean_session, protocol=paho.MQTTv311,
    )
    # paho doubles the delay from min to max while the broker stays away, and never gives up.
    client.reconnect_delay_set(conn.reconnect_min_s, max(conn.reconnect_min_s, conn.reconnect_max_s))
    if conn.username is not None:
        client.username_pw_set(conn.username, conn.password)
    if conn.tls is not None:
        client.tls_set(
            ca_certs=conn.tls.ca, certfile=conn.tls.cert, keyfile=conn.tls.key,
            cert_reqs=ssl.CERT_REQUIRED, tls_version=ssl.PROTOCOL_TLS_CLIENT,
        )
        client.tls_insecure_set(conn.tls.insecure)
    return client


@dataclass
class _Subscriber:
    point_ids: frozenset[str]
    device_ids: frozenset[str]
    callback: ReadingCallback | AckedReadingCallback
    on_dead_letter: DeadLetterCallback | None
    every_point: bool  # takes every point the adapter serves: batches need no filtering
    acks: bool  # called as callback(batch, ack): acknowledges the batch's messages itself


@dataclass
class _Stats:
    connected: bool = False
    subscribed: bool = False  # the device's subscriptions are acknowledged on this connection
    session_present: bool | None = None
    last_error: str | None = None
    reconnects: int = 0
    connects: int = 0
    received: int = 0
    readings: int = 0
    dead_letters: int = 0
    unacked: int = 0  # QoS 1 messages handed on and not acknowledged yet (manual acks)
    extra: dict[str, int] = field(default_factory=dict)  # raw filters (subscribe_topics) -> qos


class _PahoErrors(logging.Handler):
    """Hands paho's ERROR log records to their link."""

    def __init__(self, link: _Link) -> None:
        super().__init__(logging.ERROR)
        self.link = link

    def emit(self, record: logging.LogRecord) -> None:
        self.link._paho_error(record.getMessage())


class _Link:
    """One device's paho client and state. Callbacks run in paho's network thread."""

    def __init__(self, adapter: MqttAdapter, device: MqttDevice, role: str) -> None:
        self.adapter, self.device = adapter, device
        conn = device.connection
        self.where = f"{conn.host}:{conn.port}"
        self.client_id = f"{conn.client_id or 'eaio'}-{device.id}-{role}"
        self.decoder = PayloadDecoder(device)
        self.stats = _Stats()
        self.client: paho.Client | None = None
        self.first_answer = asyncio.Event()  # set (from the network thread) on the first CONNACK or failure
        self._waiters: dict[int, tuple[asyncio.Future[Any], asyncio.AbstractEventLoop]] = {}
        self._waiters_lock = threading.RLock()
        self._cause: str | None = None  # the last socket error paho logged
        self._subscribe_mid: int | None = None  # the SUBSCRIBE made on connect
        # Ingest with a persistent session acknowledges QoS 1 messages once their readings are
        # stored (see MqttAdapter._acknowledge); everyone else lets paho acknowledge on receipt.
        self.manual_ack = role == "ingest" and not conn.clean_session
        # Bumped on every connect and disconnect: an acknowledgement is sent only on the
        # connection its message came in on. Message ids belong to a connection's session, and
        # what was not acknowledged before a reconnect the broker sends again anyway.
        self.session = 0

    # -- lifetime -------------------------------------------------------------------------

    def start(self) -> None:
        conn = self.device.connection
        try:
            client = paho_client(conn, self.client_id)
        except (OSError, ValueError, ssl.SSLError) as err:
            # Retrying cannot fix unreadable certificates: report it and leave this device off.
            self.stats.last_error = f"tls_error: cannot load CA/certificate/key: {err}"
            log.error("mqtt %s: %s", self.device.id, self.stats.last_error)
            self._answered()
            return
        client.suppress_exceptions = True  # an exception in a callback must not end the network thread
        client.max_queued_messages_set(0)
        client.manual_ack_set(self.manual_ack)
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_publish = self._on_ack
        client.on_subscribe = self._on_suback
        # Errors through a logger, not on_log: with on_log set paho formats a debug line for
        # every packet it handles (a third of our per-message cost); a logger at ERROR makes
        # those a level check.
        client.enable_logger(self._paho_logger())
        client.connect_async(conn.host, conn.port, keepalive=conn.keepalive_s)
        self.client = client  # before the thread starts: its callbacks look at it
        client.loop_start()

    def stop(self) -> None:
        """Blocking (joins the network thread): run it off the event loop."""
        client, self.client = self.client, None
        if client is not None:
            client.disconnect()
            client.loop_stop()
        self.stats.connected = False
        with self._waiters_lock:
            waiters, self._waiters = self._waiters, {}
        for fut, loop in waiters.values():
            loop.call_soon_threadsafe(_fail, fut, DeviceError(
                f"{self.device.id}: adapter closed", code="device_offline", device=self.device.id))

    def _answered(self) -> None:
        loop = self.adapter.loop
        if loop is not None and not self.first_answer.is_set():
            loop.call_soon_threadsafe(self.first_answer.set)

    # -- paho callbacks (network thread) --------------------------------------------------

    def _on_connect(self, client: paho.Client, _u: Any, flags: Any, reason: Any, _p: Any) -> None:
        if reason.is_failure:
            self.stats.last_error = f"refused: broker {self.where} answered CONNACK '{reason}'"
            log.warning("mqtt %s: %s; retrying", self.device.id, self.stats.last_error)
            self._answered()
            return
        first = self.stats.connects == 0
        self.session += 1
        self.stats.connects += 1
        if not first:
            self.stats.reconnects += 1
        self.stats.connected, self.stats.session_present = True, bool(flags.session_present)
        level = logging.INFO if first else logging.WARNING
        log.log(level, "mqtt %s: %s %s as %s (session present: %s)", self.device.id,
                "connected to" if first else "reconnected to", self.where, self.client_id, flags.session_present)
        # The first connect always subscribes (a stored session may hold another config's
        # filters); later ones only when the broker kept no session for us.
        filters = self.filters()
        if filters and (first or not flags.session_present):
            self.stats.subscribed = False
            _rc, self._subscribe_mid = client.subscribe(list(filters.items()))
        else:
            self._subscribed()

    def _subscribed(self, ok: bool = True) -> None:
        # "Ready" means subscribed: a message published right after __aenter__ returns must
        # not race our SUBSCRIBE to the broker.
        self.stats.subscribed = ok
        self._answered()

    def _on_connect_fail(self, _client: paho.Client, _u: Any) -> None:
        # paho calls this inside its `except OSError:` block, so the cause is the exception
        # being handled; paho itself logs only "Connection failed, retrying" at DEBUG.
        err = sys.exception()
        self.stats.connected = False
        self.stats.last_error = f"device_offline: cannot connect to {self.where}: {err or 'connection failed'}"
        log.warning("mqtt %s: %s; retrying with backoff", self.device.id, self.stats.last_error)
        self._answered()

    def _on_disconnect(self, _client: paho.Client, _u: Any, _flags: Any, reason: Any, _p: Any) -> None:
        was = self.stats.connected
        self.session += 1
        self.stats.connected = self.stats.subscribed = False
        if self.client is None:  # our own disconnect() at close
            return
        # A socket/TLS error logged just before says more than paho's "unspecified error".
        cause, self._cause = self._cause, None
        self.stats.last_error = f"device_offline: disconnected from {self.where}: {cause or reason}"
        if was:
            log.warning("mqtt %s: %s; reconnecting with backoff", self.device.id, self.stats.last_error)

    def _paho_logger(self) -> logging.Logger:
        logger = logging.getLogger(f"{__name__}.paho.{self.client_id}")
        logger.setLevel(logging.ERROR)
        logger.propagate = False
        logger.handlers = [_PahoErrors(self)]
        return logger

    def _paho_error(self, message: str) -> None:
        # Socket and TLS errors (e.g. a broker refusing our certificate) reach us only here.
        if self.client is None:
            return  # our own disconnect at close: paho's loop then logs "Client is not connected"
        self._cause = message
        self.stats.last_error = f"device_offline: {message}"
        log.warning("mqtt %s: %s", self.device.id, message)

    def _on_message(self, client: paho.Client, _u: Any, msg: paho.MQTTMessage) -> None:
        received_us = time.time_ns() // 1000
        adapter = self.adapter
        ack: _Ack | None = None
        if self.manual_ack and msg.qos == 1:
            if adapter.draining:
                return  # closing: left unacknowledged, so the broker sends it again next session
            ack = (self, self.session, msg.mid)
        topic, payload = msg.topic, msg.payload
        stats = self.stats
        stats.received += 1
        if adapter.keeps_messages:
            adapter.remember(self.device.id, received_us, topic, payload, msg.qos, msg.retain)
        if stats.extra and not self.decoder.matches(topic) and self._raw_only(topic):
            if ack is not None:
                client.ack(msg.mid, 1)  # kept in the raw buffer: nothing more to wait for
            return  # asked for by subscribe_topics only: buffered, not a dead letter
        readings, dead = adapter.arrived(self.decoder, topic, payload, received_us, ack)
        stats.readings += readings
        stats.dead_letters += dead

    def send_acks(self, mids: list[int]) -> None:
        """PUBACK messages of the current connection (event loop; see _Client.ack_all)."""
        client = self.client
        if client is not None and self.stats.connected and isinstance(client, _Client):
            # A reconnect in between would bump the session first (its backoff takes a second),
            # so these never reach a broker before a new CONNECT.
            client.ack_all(mids)

    def _raw_only(self, topic: str) -> bool:
        # tuple(dict) copies in one C call: the event loop may add filters meanwhile.
        return any(paho.topic_matches_sub(f, topic) for f in tuple(self.stats.extra))

    def _on_ack(self, _client: paho.Client, _u: Any, mid: int, reason: Any, _p: Any) -> None:
        self._resolve(mid, None if not reason.is_failure else f"broker refused: {reason}")

    def _on_suback(self, _client: paho.Client, _u: Any, mid: int, reasons: list[Any], _p: Any) -> None:
        refused = [str(r) for r in reasons if r.is_failure]
        if refused:
            self.stats.last_error = f"protocol_error: broker refused a subscription: {', '.join(refused)}"
            log.warning("mqtt %s: %s", self.device.id, self.stats.last_error)
        if mid == self._subscribe_mid:
            self._subscribe_mid = None
            self._subscribed(ok=not refused)
        self._resolve(mid, self.stats.last_error if refused else None)

    def _resolve(self, mid: int, error: str | None) -> None:
        with self._waiters_lock:
            waiter = self._waiters.pop(mid, None)
        if waiter is not None:
            fut, loop = waiter
            if error is None:
                loop.call_soon_threadsafe(_succeed, fut)
            else:
                loop.call_soon_threadsafe(_fail, fut, DeviceError(
                    f"{self.device.id}: {error}", code="protocol_error", device=self.device.id))

    # -- requests (event loop) ------------------------------------------------------------

    def filters(self) -> dict[str, int]:
        filters = {s.topic: s.qos for s in self.device.subscriptions}
        for topic, qos in dict(self.stats.extra).items():  # a copy: the loop may add filters meanwhile
            filters[topic] = max(qos, filters.get(topic, 0))
        return filters

    async def request(self, send: Callable[[paho.Client], tuple[MQTTErrorCode, int | None]],
                      what: str, wait: bool, point: str | None = None) -> None:
        """Send a PUBLISH/SUBSCRIBE and (when ``wait``) await its acknowledgement."""
        client = self.client
        if client is None or not self.stats.connected:
            raise DeviceError(
                f"{self.device.id}: not connected to {self.where} ({self.stats.last_error or 'connecting'}); "
                f"{what} not sent", code="device_offline", device=self.device.id, point=point,
            )
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Any] = loop.create_future()
        # Held while sending: the acknowledgement may arrive in the network thread before
        # paho returns the message id, and must find the future registered.
        with self._waiters_lock:
            rc, mid = send(client)
            if rc != MQTTErrorCode.MQTT_ERR_SUCCESS or mid is None:
                raise DeviceError(f"{self.device.id}: {what} failed: {paho.error_string(rc)}",
                                  code="device_offline", device=self.device.id, point=point)
            if not wait:
                return
            self._waiters[mid] = (fut, loop)
        timeout = self.device.connection.timeout_s
        try:
            async with asyncio.timeout(timeout):
                await fut
        except TimeoutError:
            raise DeviceError(f"{self.device.id}: no acknowledgement for {what} within {timeout}s",
                              code="timeout", device=self.device.id, point=point) from None
        finally:
            with self._waiters_lock:
                self._waiters.pop(mid, None)

    def health(self) -> dict[str, object]:
        s = self.stats
        return {
            "device_id": self.device.id, "broker": self.where, "client_id": self.client_id,
            "connected": s.connected, "online": s.connected, "subscribed": s.subscribed,
            "session_present": s.session_present,
            "last_error": s.last_error, "reconnects": s.reconnects, "received": s.received,
            "readings": s.readings, "dead_letters": s.dead_letters, "unacked": s.unacked,
            "subscriptions": list(self.filters()),
        }


def _succeed(fut: asyncio.Future[Any]) -> None:
    if not fut.done():
        fut.set_result(None)


def _fail(fut: asyncio.Future[Any], err: BaseException) -> None:
    if not fut.done():
        fut.set_exception(err)


def _encode_command(point: MqttPoint, value: Value) -> bytes:
    """The command payload: a plain number / true / false, or JSON {field: value}."""
    if point.value_type == "bool":
        if isinstance(value, float) or value not in (True, False):  # 0 and 1 compare equal to the bools
            raise ValueError("a bool point takes true/false or 1/0")
        value = bool(value)
    elif isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError("a number point takes a finite number")
    command = point.command
    assert command is not None
    if command.format == "json":
        return json.dumps({command.field: value}).encode()
    return (("true" if value else "false") if isinstance(value, bool) else repr(value)).encode()


class MqttAdapter(ConfiguredPoints[MqttDevice, MqttPoint]):
    """Readings, commands and raw messages of MQTT devices. Never connects in the constructor."""

    protocol = "mqtt"
    _label = "MQTT"
    _point_type = MqttPoint

    def __init__(self, devices: Sequence[MqttDevice], *, role: str = "eaio", buffer_size: int = 10_000) -> None:
        super().__init__(devices)
        self._links = {d.id: _Link(self, d, role) for d in self._devices}
        # The ingest role never answers read() or read_messages(): at tens of thousands of
        # messages a second, keeping the last values and raw messages would cost a third of the
        # decoding work for nobody.
        self.keeps_messages = role != "ingest"
        self._last: dict[str, tuple[Value, int]] = {}  # point id -> (value, ts in us since the epoch)
        self._subscribers: list[_Subscriber] = []
        # Shared with the network threads; every section under it is a few list/deque operations.
        self._lock = threading.Lock()
        # Signalled when the delivery task takes the pending batch; see arrived().
        self._drained = threading.Condition(self._lock)
        self._stopping = False
        self._buffer: deque[tuple[int, int, str, str, bytes, int, bool]] = deque(maxlen=max(1, buffer_size))
        self._ids = itertools.count(1)
        # The batch being filled, its dead letters, and the QoS 1 messages behind them that wait
        # for a manual acknowledgement.
        self._pending: tuple[ReadingBatch, list[DeadLetter], list[_Ack]] = (ReadingBatch(), [], [])
        self.draining = False  # closing: the network threads refuse new QoS 1 messages (manual acks)
        self._rounds = 0  # delivered batches whose messages are not acknowledged yet
        self._progress = asyncio.Event()
        self._wake_scheduled = False
        self._wake = asyncio.Event()
        self._closing = False
        self._pump: asyncio.Task[None] | None = None
        self.loop: asyncio.AbstractEventLoop | None = None

    async def __aenter__(self) -> Self:
        self.loop = asyncio.get_running_loop()
        self._wake, self._closing, self._wake_scheduled = asyncio.Event(), False, False
        self._progress = asyncio.Event()
        self._stopping = self.draining = False
        self._pump = asyncio.create_task(self._deliver(), name="mqtt-deliver")
        for link in self._links.values():
            link.first_answer = asyncio.Event()
            link.start()
        await asyncio.gather(*(self._first_answer(link) for link in self._links.values()))
        return self

    async def _settle(self) -> None:
        """With manual acks: take no new QoS 1 messages, and give what was delivered a while to be
        stored and acknowledged (on the open connection) before we disconnect. What is still not
        acknowledged then, the broker sends again next session."""
        links = [link for link in self._links.values() if link.manual_ack]
        if not links:
            return
        self.draining = True
        self._wake.set()  # hand on what is pending now, without the linger
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(link.device.connection.timeout_s for link in links)
        while self._rounds or self._pending[2]:
            self._progress.clear()  # set by each delivery and each acknowledgement
            try:
                async with asyncio.timeout_at(deadline):
                    await self._progress.wait()
            except TimeoutError:
                break
        left = sum(link.stats.unacked for link in links)
        if left:
            log.warning("mqtt: %d messages not acknowledged at close (not stored yet); the broker keeps them "
                        "for the next session", left)

    async def _first_answer(self, link: _Link) -> None:
        timeout = link.device.connection.timeout_s
        try:
            async with asyncio.timeout(timeout):
                await link.first_answer.wait()
        except TimeoutError:
            log.warning("mqtt %s: no answer from %s within %ss; still trying in the background",
                        link.device.id, link.where, timeout)

    async def __aexit__(self, *exc: object) -> None:
        await self._settle()
        # Stop the clients, then deliver what they received: messages acknowledged on receipt
        # (QoS 0 and 2, or automatic acks) are the broker's no more, so dropping them would lose them.
        with self._lock:  # release a network thread waiting in arrived(), or stopping it would hang
            self._stopping = True
            self._drained.notify_all()
        await asyncio.gather(*(asyncio.to_thread(link.stop) for link in self._links.values()))
        self._closing = True
        self._wake.set()
        if self._pump is not None:
            try:
                async with asyncio.timeout(10):
                    await self._pump
            except TimeoutError:
                log.warning("mqtt: subscribers still busy at close; last batch dropped")
                self._pump.cancel()
            self._pump = None
        self.loop = None

    # -- what the network threads call -----------------------------------------------------

    def remember(self, device_id: str, received_us: int, topic: str, payload: bytes, qos: int,
                 retain: bool) -> None:
        with self._lock:
            self._buffer.append((next(self._ids), received_us, device_id, topic, payload, qos, retain))

    def arrived(self, decoder: PayloadDecoder, topic: str, payload: bytes, received_us: int,
                ack: _Ack | None = None) -> tuple[int, int]:
        """Decode one message into the pending batch; returns (readings, dead letters). ``ack``: the
        message waits for a manual acknowledgement, sent once its batch is handled."""
        if not self._subscribers:  # nobody to hand a batch to: only the last values matter
            scratch, letters = ReadingBatch(), []
            n = decoder.decode_into(topic, payload, received_us, scratch, letters)
            if self.keeps_messages:
                self._keep_last(scratch, 0)
            if ack is not None and ack[0].client is not None:
                ack[0].client.ack(ack[2], 1)
            return n, len(letters)
        with self._lock:
            batch, dead, acks = self._pending
            start, had_dead = len(batch), len(dead)
            n = decoder.decode_into(topic, payload, received_us, batch, dead)
            if self.keeps_messages:
                self._keep_last(batch, start)
            got_dead = len(dead) - had_dead
            if ack is not None:
                acks.append(ack)
                ack[0].stats.unacked += 1
            wake = not self._wake_scheduled and self.loop is not None and bool(n or got_dead or ack)
            self._wake_scheduled = self._wake_scheduled or wake
            behind = len(batch) > _MAX_PENDING
        if wake:
            self.loop.call_soon_threadsafe(self._wake.set)  # type: ignore[union-attr]
        if behind:
            # Back-pressure: while subscribers are this far behind, the network thread waits
            # instead of reading more. The socket then fills and the broker holds the messages
            # (for QoS 1 in the persistent session), rather than this process growing or dropping.
            with self._lock:
                while len(self._pending[0]) > _MAX_PENDING and not self._stopping:
                    self._drained.wait(timeout=0.5)
        return n, got_dead

    def _keep_last(self, batch: ReadingBatch, start: int) -> None:
        last, ids, values, ts = self._last, batch.point_id, batch.value, batch.ts_us
        for i in range(start, len(ids)):
            last[ids[i]] = (values[i], ts[i])  # type: ignore[assignment]  # decoded values are never None

    async def _deliver(self) -> None:
        while True:
            await self._wake.wait()
            if not self._closing:
                await asyncio.sleep(_LINGER_S)
            self._wake.clear()
            with self._lock:
                self._wake_scheduled = False
                (batch, dead, acks), self._pending = self._pending, (ReadingBatch(), [], [])
                self._drained.notify_all()
            # The messages are acknowledged once every subscriber is done with them: each one
            # that takes acks calls its share, and returning from the callbacks is the last share
            # (dead letters are stored by then).
            rnd = _Round(self, acks) if acks else None
            for i, sub in enumerate(list(self._subscribers)):
                await self._hand(sub, batch, dead, i > 0, rnd)
            if rnd is not None:
                rnd.done()
            self._progress.set()
            if self._closing:
                return

    async def _hand(self, sub: _Subscriber, batch: ReadingBatch, dead: list[DeadLetter], copy: bool,
                    rnd: _Round | None) -> None:
        if sub.every_point:
            # Each subscriber may mark its readings (validation) without touching another's.
            mine = batch.copy() if copy else batch
        else:
            wanted = sub.point_ids
            mine = batch.select([i for i, pid in enumerate(batch.point_id) if pid in wanted])
        ack = rnd.share() if rnd is not None and sub.acks and len(mine) else None
        try:
            if len(mine):
                await (sub.callback(mine, ack) if sub.acks else sub.callback(mine))  # type: ignore[call-arg]
            if sub.on_dead_letter is not None:
                for letter in dead:
                    if letter.source.removeprefix("mqtt:") in sub.device_ids:
                        await sub.on_dead_letter(letter)
        except Exception:  # one failing subscriber must not stop delivery
            log.exception("mqtt: a subscriber callback failed; its batch of %d readings is dropped", len(mine))
            if ack is not None:
                ack()  # dropped counts as handled: else the broker would hold these messages for good

    def _acknowledge(self, acks: list[_Ack]) -> None:
        """PUBACK a handled round's messages, per connection, in the order they came (event loop)."""
        self._rounds -= 1
        self._progress.set()
        mids: dict[_Link, list[int]] = {}
        for link, session, mid in acks:
            if session == link.session:  # else that connection is gone: the broker sends it again
                mids.setdefault(link, []).append(mid)
        for link, ids in mids.items():
            link.send_acks(ids)
        counts = Counter(link for link, _s, _m in acks)
        with self._lock:  # the network threads count up under it
            for link, n in counts.items():
                link.stats.unacked -= n

    # -- the adapter interface -------------------------------------------------------------

    async def read(self, points: Sequence[Point]) -> list[Reading]:
        """The last value received per point (ts = its sample time). Never raises."""
        out: list[Reading] = []
        for point in points:
            known = self._points.get(point.id)
            last = self._last.get(point.id)
            if known is None:
                out.append(Reading(point_id=point.id, value=None, unit=point.unit, quality=Quality.BAD,
                                   reasons=["unknown_point"], detail=f"unknown_point: {point.id} is not an MQTT point"))
            elif last is None:
                out.append(Reading(point_id=known.id, value=None, unit=known.unit, device_id=known.device_id,
                                   quality=Quality.UNCERTAIN, reasons=[Reason.STALE.value],
                                   detail=f"no_data: nothing received for {known.id} yet"))
            else:
                value, ts_us = last
                out.append(Reading(point_id=known.id, value=value, unit=known.unit, ts=from_us(ts_us),
                                   device_id=known.device_id))
        return out

    async def subscribe(self, points: Sequence[Point], callback: ReadingCallback | AckedReadingCallback,
                        on_dead_letter: DeadLetterCallback | None = None, *, acks: bool = False) -> None:
        """Register ``callback`` for batches of readings of ``points`` (and ``on_dead_letter`` for
        the dead letters of their devices) until the adapter closes. Returns at once.

        With ``acks=True`` the callback is called as ``callback(batch, ack)``: ``ack`` (or None
        when nothing waits for it) must be called once the batch is durable, and acknowledges to
        the broker the QoS 1 messages behind it (manual acks: the ingest role, persistent session).
        Dead letters count as handled when ``on_dead_letter`` returns."""
        ids = frozenset(p.id for p in points if p.id in self._points)
        unknown = [p.id for p in points if p.id not in self._points]
        if unknown:
            log.warning("mqtt: subscribe ignores points it does not serve: %s", ", ".join(unknown[:10]))
        devices = frozenset(self._points[i].device_id for i in ids)
        self._subscribers.append(_Subscriber(ids, devices, callback, on_dead_letter, ids >= frozenset(self._points),
                                             acks))

    async def write(self, point: Point, value: Value) -> None:
        """Publish ``value`` to the point's command topic; for QoS >= 1 wait for the PUBACK."""
        mp = self._points.get(point.id)
        if mp is None:
            raise DeviceError(f"no MQTT point '{point.id}'", code="unknown_point", point=point.id)
        if mp.command is None:
            raise DeviceError(f"{mp.id} has no command topic", code="not_writable", device=mp.device_id, point=mp.id)
        try:
            payload = _encode_command(mp, value)
        except ValueError as err:
            raise DeviceError(f"{value!r} cannot be written to {mp.id}: {err}", code="invalid_argument",
                              device=mp.device_id, point=mp.id) from err
        cmd = mp.command
        await self._links[mp.device_id].request(
            lambda c: _publish(c, cmd.topic, payload, cmd.qos, cmd.retain),
            f"command to '{cmd.topic}'", wait=cmd.qos >= 1, point=mp.id,
        )

    async def publish(self, device_id: str, topic: str, payload: bytes, qos: int = 0, retain: bool = False) -> None:
        """Publish raw bytes through ``device_id``'s connection (allow-lists live above this)."""
        link = self._link(device_id)
        if not topic or "+" in topic or "#" in topic or len(topic.encode()) > 65535:
            raise DeviceError(f"'{topic}' is not a topic one can publish to", code="invalid_argument",
                              device=device_id)
        if qos not in (0, 1, 2):
            raise DeviceError(f"qos must be 0, 1 or 2, not {qos!r}", code="invalid_argument", device=device_id)
        data = payload.encode() if isinstance(payload, str) else bytes(payload)
        await link.request(lambda c: _publish(c, topic, data, qos, retain), f"publish to '{topic}'", wait=qos >= 1)

    async def subscribe_topics(self, device_id: str, filters: list[str], qos: int = 0) -> None:
        """Subscribe to raw topic filters; what arrives goes to ``messages()``. Waits for the SUBACK."""
        link = self._link(device_id)
        if qos not in (0, 1, 2):
            raise DeviceError(f"qos must be 0, 1 or 2, not {qos!r}", code="invalid_argument", device=device_id)
        try:
            for f in filters:
                check_filter(f)
        except ValueError as err:
            raise DeviceError(str(err), code="invalid_argument", device=device_id) from err
        if not filters:
            return
        new = [f for f in filters if f not in link.stats.extra]
        for f in filters:  # remembered first: a reconnect while we wait re-makes them too
            link.stats.extra[f] = max(qos, link.stats.extra.get(f, 0))
        try:
            await link.request(lambda c: c.subscribe([(f, qos) for f in filters]),
                               f"subscribe to {', '.join(filters)}", wait=True)
        except DeviceError:
            for f in new:
                link.stats.extra.pop(f, None)
            raise

    def messages(self, since_id: int = 0, limit: int = 100) -> list[dict[str, Any]]:
        """Received messages with id > ``since_id``, oldest first, at most ``limit``."""
        if limit <= 0:
            return []
        with self._lock:
            if not self._buffer:
                return []
            start = max(0, since_id - self._buffer[0][0] + 1)  # ids are consecutive in the buffer
            rows = list(itertools.islice(self._buffer, start, start + limit))
        return [_message(*row) for row in rows]

    def dead_letters(self) -> int:
        return sum(link.stats.dead_letters for link in self._links.values())

    def health(self) -> list[dict[str, object]]:
        """Per device: device_id, broker, client_id, connected (= online), subscribed, session_present,
        last_error, reconnects, received, readings, dead_letters, subscriptions."""
        return [link.health() for link in self._links.values()]

    def request_count(self) -> int:
        """Messages received since start (kept for symmetry with the Modbus adapter)."""
        return sum(link.stats.received for link in self._links.values())

    def _link(self, device_id: str) -> _Link:
        link = self._links.get(device_id)
        if link is None:
            raise DeviceError(f"no MQTT device '{device_id}'", code="invalid_argument", device=device_id)
        return link


class _Round:
    """One delivered batch's manual acknowledgements: sent when every share of it is done."""

    __slots__ = ("acks", "adapter", "waiting")

    def __init__(self, adapter: MqttAdapter, acks: list[_Ack]) -> None:
        self.adapter, self.acks, self.waiting = adapter, acks, 1  # 1: the delivery itself
        adapter._rounds += 1

    def share(self) -> AckCallback:
        """One subscriber's part; calling it again does nothing."""
        self.waiting += 1
        called = False

        def ack() -> None:
            nonlocal called
            if not called:
                called = True
                self.done()

        return ack

    def done(self) -> None:
        self.waiting -= 1
        if self.waiting == 0:
            self.adapter._acknowledge(self.acks)


def _publish(client: paho.Client, topic: str, payload: bytes, qos: int, retain: bool) -> tuple[MQTTErrorCode, int]:
    info = client.publish(topic, payload, qos=qos, retain=retain)
    return info.rc, info.mid


def _message(mid: int, ts_us: int, device_id: str, topic: str, payload: bytes, qos: int,
             retain: bool) -> dict[str, Any]:
    try:
        text, encoding = payload.decode(), "utf-8"
    except UnicodeDecodeError:
        text, encoding = base64.b64encode(payload).decode(), "base64"
    return {"id": mid, "ts": from_us(ts_us).isoformat(), "device_id": device_id, "topic": topic, "payload": text,
            "encoding": encoding, "qos": qos, "retain": retain}
