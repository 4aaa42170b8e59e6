"""One OPC-UA server as the adapter sees it: its session, breaker, counters, and the one place
where requests go out and asyncua's answers and errors become EAIO's outcomes.

A background task keeps a session open: it connects (security, login), serves the session until
it is lost, then tries again with backoff from ``reconnect_min_s`` doubling to
``reconnect_max_s``, always with a NEW asyncua Client and so a new session. asyncua's own
reconnect is off: it would re-activate the old session, and EAIO wants a fresh one, its
subscriptions made again by the adapter. A session is lost when the socket closes (asyncua's
supervisor reports it at once), when asyncua's periodic status probe or subscription keep-alives
go unanswered, or when requests time out often enough to open the circuit breaker.

Every service request passes ``Link.call``: the breaker, then one attempt bounded by
``timeout_s``. No session or an open breaker fail at once (``CommFailure``), so a dead server
costs no waiting at all, and a hung one one timeout per poll.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any, TypeVar

from asyncua import Client, ua
from asyncua.crypto import security_policies, uacrypto
from asyncua.ua.uaerrors import UaError, UaStatusCodeError
from cryptography import x509

from ..models import OpcuaDevice, utcnow
from .breaker import CircuitBreaker
from .opcua_read import parse_node_id, status_name

__all__ = ["CommFailure", "Invalid", "Link", "Refused", "Timeout", "quiet_asyncua"]

log = logging.getLogger(__name__)
T = TypeVar("T")
_CLOSE_S = 1.0  # longest a lost or closing session gets to say goodbye
_LOGIN_REFUSED = frozenset({"BadUserAccessDenied", "BadIdentityTokenInvalid", "BadIdentityTokenRejected",
                            "BadUserSignatureInvalid"})
# Service results that mean the session (not the request) is gone: a new one is needed.
_SESSION_GONE = frozenset({"BadSessionIdInvalid", "BadSessionClosed", "BadSessionNotActivated",
                           "BadSecureChannelIdInvalid", "BadSecureChannelClosed", "BadConnectionClosed",
                           "BadServerHalted", "BadShutdown"})


def quiet_asyncua() -> None:
    """asyncua logs every connect, request failure and reconnect at INFO/WARNING; the adapter
    reports what matters itself (health, last_error, one warning per lost session)."""
    logger = logging.getLogger("asyncua")
    if logger.level == logging.NOTSET:
        logger.setLevel(logging.ERROR)
    # On a lost socket the session's publish loop logs the ConnectionError with a traceback
    # before anyone can stop it; the adapter reports the same loss in one line.
    publish = logging.getLogger("asyncua.client.ua_session")
    if publish.level == logging.NOTSET:
        publish.setLevel(logging.CRITICAL)


class CommFailure(Exception):
    """The server could not be reached: no session, a lost connection, an open breaker."""

    code = "device_offline"


class Timeout(CommFailure):
    """No answer on a connection that is still open: the server is there but hung or overloaded.
    A server that is gone (refused, connection lost, silent while connecting) is a CommFailure."""

    code = "timeout"


class Invalid(Exception):
    """asyncua could not encode the request (a value or id it cannot send): nothing was sent."""


class Refused(Exception):
    """The server answered the whole request with a Bad service result: it is alive."""

    def __init__(self, status: int) -> None:
        self.status = status
        self.name = status_name(status)
        super().__init__(self.name)


class _Client(Client):
    """asyncua's Client, remembering the id of the session it created (for server_status)."""

    session_id: str | None = None

    async def create_session(self) -> ua.CreateSessionResult:
        result = await super().create_session()
        self.session_id = result.SessionId.to_string()
        return result


class Link:
    """One server's session (kept open in the background), breaker and counters."""

    def __init__(self, device: OpcuaDevice, role: str) -> None:
        self.device = device
        self.role = role
        conn = device.connection
        self.where = f"{device.id} at {conn.endpoint}"
        self.breaker = CircuitBreaker(conn.breaker_failures, conn.breaker_reset_s)
        self.requests = 0
        self.failures = 0
        self.sessions = 0  # sessions opened so far
        self.online: bool | None = None  # unknown until the first connect attempt ends
        self.last_error: str | None = None
        self.last_ok: datetime | None = None
        self.client: _Client | None = None  # while a session is open
        self.namespaces: list[str] = []  # the server's namespace array, read per session
        self.types: dict[str, ua.VariantType] = {}  # node id -> the built-in type writes take
        self.on_open: Callable[[Link], Awaitable[None]] | None = None  # after each new session
        self.on_close: Callable[[Link], None] | None = None  # when a session ends
        self._nodes: dict[str, ua.NodeId] = {}
        self._lost = asyncio.Event()
        self._tried = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._next_try: float | None = None

    # -- lifetime -----------------------------------------------------------------------------
    async def start(self) -> None:
        """Start keeping a session; returns after the first attempt (it may have failed), or after
        ``timeout_s`` if that attempt is still waiting for an answer."""
        self._lost, self._tried = asyncio.Event(), asyncio.Event()
        self._task = asyncio.create_task(self._run(), name=f"opcua session {self.device.id}")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._tried.wait(), self.device.connection.timeout_s)

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        conn = self.device.connection
        delay = conn.reconnect_min_s
        loop = asyncio.get_running_loop()
        while True:
            try:
                client = await self._connect()
            except Exception as err:
                failure = _connect_failure(err, self.device)
                said = self.last_error
                self._failed(failure)
                if self.last_error != said:  # once per kind of failure, not once per attempt
                    log.warning("opcua %s: %s; trying again in the background", self.where, failure)
            else:
                delay = conn.reconnect_min_s
                try:
                    await self._serve(client)
                except Exception:  # a bug must not end the reconnecting
                    log.exception("opcua %s: serving the session failed", self.where)
            self._tried.set()
            self._next_try = loop.time() + delay
            await asyncio.sleep(delay)
            self._next_try = None
            delay = min(delay * 2, conn.reconnect_max_s)

    async def _connect(self) -> _Client:
        conn = self.device.connection
        # asyncua's supervisor probes the server's state this often; the probe also keeps an
        # idle session (one only polled rarely) from timing out on the server.
        probe_s = max(1.0, min(10.0, conn.session_timeout_s / 3))
        client = _Client(conn.endpoint, timeout=conn.timeout_s, watchdog_intervall=probe_s)
        client.name = client.description = f"EAIO {self.role}"
        client.application_uri = f"urn:eaio:{self.role}"
        client.session_timeout = conn.session_timeout_s * 1000
        if conn.username is not None and conn.password is not None:
            client.set_user(conn.username)
            client.set_password(conn.password)
        try:
            # Security may list endpoints first (a connection of its own): all of it within budget.
            async with asyncio.timeout(conn.timeout_s * 3):
                await _secure(client, self.device)
                await client.connect()
                self.namespaces = await client.get_namespace_array()
        except BaseException:
            await _drop(client)
            raise
        client.connection_lost_callback = lambda exc: self._connection_lost(client, exc)
        return client

    async def _serve(self, client: _Client) -> None:
        self._lost = asyncio.Event()
        self._nodes.clear()
        self.types.clear()  # the server may have been reconfigured while away
        self.client = client
        self.sessions += 1
        self.breaker.success()
        self.online, self.last_ok = True, utcnow()
        log.info("opcua %s: session %d open", self.where, self.sessions)
        self._tried.set()
        try:
            if self.on_open is not None:
                try:
                    await self.on_open(self)
                except Exception:
                    log.exception("opcua %s: setting up the new session failed", self.where)
            await self._lost.wait()
        finally:
            self.client = None
            if self.on_close is not None:
                self.on_close(self)
            await _drop(client)

    async def _connection_lost(self, client: _Client, exc: Exception) -> None:
        self.lose(f"connection lost ({_describe(exc)})", client)

    def lose(self, why: str, client: Any = None) -> None:
        """The session (of ``client``, default the current one) is gone: open a new one."""
        if self.client is None or (client is not None and client is not self.client):
            return
        if not self._lost.is_set():
            log.warning("opcua %s: %s; reconnecting with a new session", self.where, why)
            self._failed(CommFailure(why))
            self._lost.set()

    # -- requests -----------------------------------------------------------------------------
    def node(self, text: str) -> ua.NodeId:
        """The node id for ``text`` in this session (nsu= resolved). NodeIdError."""
        nid = self._nodes.get(text)
        if nid is None:
            nid = self._nodes[text] = parse_node_id(text, self.namespaces)
        return nid

    def unavailable(self) -> CommFailure | None:
        """Why a request cannot go out now (open breaker, no session), or None if it can."""
        if not self.breaker.allow():
            return CommFailure(f"circuit open after {self.breaker.count} failed requests; next try in "
                               f"{self.breaker.retry_in():.1f}s")
        if self.client is None:
            return CommFailure(self._no_session())
        return None

    def _no_session(self) -> str:
        why = f" ({self.last_error})" if self.last_error else ""
        if self._next_try is None:
            return f"no session, connecting{why}"
        wait = max(0.0, self._next_try - asyncio.get_running_loop().time())
        return f"no session{why}; next try in {wait:.1f}s"

    async def call(self, fn: Callable[[_Client], Awaitable[T]]) -> T:
        """Send one request (``fn`` sends it with the session's client and awaits the answer).

        Raises CommFailure/Timeout (no answer, no session), Refused (a Bad service result),
        Invalid (a request that cannot be encoded)."""
        failure = self.unavailable()
        if failure is not None:
            raise failure
        client = self.client
        assert client is not None
        timeout = self.device.connection.timeout_s
        self.requests += 1
        try:
            # asyncua times each request itself; this only bounds a wedged transport.
            async with asyncio.timeout(timeout * 2 + 1):
                result = await fn(client)
        except UaStatusCodeError as err:
            name = status_name(err.code)
            if name in _SESSION_GONE:
                self.lose(f"the server ended the session ({name})", client)
                raise CommFailure(f"session ended by the server ({name})") from None
            self._answered()
            raise Refused(err.code) from None
        except TimeoutError:
            failure = Timeout(f"no answer within {timeout}s")
            if self._gone(client):
                # The connection went away while the request waited: the server is gone, not slow.
                failure = CommFailure(f"no answer within {timeout}s (timeout): the connection is gone")
                self.lose(failure.args[0], client)
        except (ConnectionError, OSError) as err:
            failure = CommFailure(f"connection lost ({_describe(err)})")
            self.lose(failure.args[0], client)
        except (UaError, ValueError, TypeError, OverflowError) as err:
            self.requests -= 1  # asyncua could not encode it: nothing was sent
            raise Invalid(f"cannot send the request: {err}") from err
        else:
            self._answered()
            return result
        self._failed(failure)
        if not self.breaker.allow():
            # Requests keep timing out on an open socket: the session is as good as dead.
            self.lose(f"{self.breaker.count} requests in a row failed ({failure})", client)
        raise failure

    def _gone(self, client: _Client) -> bool:
        """Whether ``client``'s session or socket is gone (lost, replaced, closed by the server)."""
        if self.client is not client or self._lost.is_set():
            return True
        protocol = getattr(client.uaclient, "protocol", None)
        return protocol is None or bool(getattr(protocol, "is_closed", False))

    def _answered(self) -> None:
        self.breaker.success()
        self.online, self.last_ok = True, utcnow()

    def _failed(self, err: CommFailure) -> None:
        self.breaker.failure()
        self.failures += 1
        self.online = False
        self.last_error = f"{err.code}: {err}"

    # -- reporting ----------------------------------------------------------------------------
    def security(self) -> tuple[str, str]:
        sec = self.device.connection.security
        return sec.policy, sec.mode

    def health(self, subscriptions: int) -> dict[str, object]:
        return {
            "device_id": self.device.id,
            "endpoint": self.device.connection.endpoint,
            "online": self.online,
            "last_error": self.last_error,
            "requests": self.requests,
            "failures": self.failures,
            "session": self.client is not None,
            "subscriptions": subscriptions,
            "sessions": self.sessions,
            "security": "/".join(dict.fromkeys(self.security())),
            "breaker": self.breaker.state,
            "last_ok": self.last_ok.isoformat() if self.last_ok else None,
        }


async def _secure(client: Client, device: OpcuaDevice) -> None:
    sec = device.connection.security
    if sec.policy == "None":
        return
    assert sec.certificate is not None  # the model checks both are given
    assert sec.private_key is not None
    cert = await uacrypto.load_certificate(sec.certificate)
    # Servers check that the application URI the client states is the one in its certificate.
    client.application_uri = _application_uri(cert) or client.application_uri
    policy = getattr(security_policies, f"SecurityPolicy{sec.policy}")
    await client.set_security(policy, sec.certificate, sec.private_key, server_certificate=sec.server_certificate,
                              mode=getattr(ua.MessageSecurityMode, sec.mode))


def _application_uri(cert: x509.Certificate) -> str | None:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return None
    uris = san.value.get_values_for_type(x509.UniformResourceIdentifier)
    return uris[0] if uris else None


async def _drop(client: Client) -> None:
    """Close a session politely if that is quick, then the socket in any case.

    Client.disconnect() would do the same but log a traceback at ERROR whenever the server
    cannot be told (it is gone or hung: the usual reason to drop a session)."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(_CLOSE_S):
            with contextlib.suppress(Exception):
                await client.close_session()  # also stops asyncua's supervisor and renewal tasks
            with contextlib.suppress(Exception):
                await client.close_secure_channel()
    with contextlib.suppress(Exception):
        client.disconnect_socket()


def _describe(err: BaseException) -> str:
    if isinstance(err, UaStatusCodeError):
        return status_name(err.code)
    text = str(err)
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def _connect_failure(err: Exception, device: OpcuaDevice) -> CommFailure:
    """A failed connect attempt, said so that the person reading health knows what to fix."""
    conn = device.connection
    if isinstance(err, TimeoutError):
        # No session yet, so nothing can be hung: a server that does not answer a connect is offline.
        return CommFailure(f"no answer within {conn.timeout_s}s while connecting (timeout)")
    if isinstance(err, ConnectionRefusedError):
        return CommFailure("cannot connect (connection refused)")
    if isinstance(err, FileNotFoundError | PermissionError | IsADirectoryError):
        return CommFailure(f"cannot load the client certificate or key: {err}")
    if isinstance(err, OSError):
        return CommFailure(f"cannot connect ({err.strerror or err})")
    if isinstance(err, UaStatusCodeError):
        name = status_name(err.code)
        if name in _LOGIN_REFUSED:
            if conn.username is None:
                return CommFailure(f"anonymous login refused ({name}): the server wants a username and password")
            return CommFailure(f"login refused for user '{conn.username}' ({name}): check username and password")
        if name.startswith(("BadSecurity", "BadCertificate", "BadNonce")):
            return CommFailure(f"security refused ({name}): the server does not accept this client's "
                               f"certificate or {conn.security.policy}/{conn.security.mode}")
        return CommFailure(f"session refused ({name})")
    if isinstance(err, UaError) and "No matching endpoints" in str(err):
        sec = conn.security
        return CommFailure(f"the server offers no {sec.policy}/{sec.mode} endpoint")
    if isinstance(err, ValueError):  # a certificate or key that does not parse
        return CommFailure(f"cannot load the client certificate or key: {err}")
    return CommFailure(f"cannot connect ({_describe(err)})")
