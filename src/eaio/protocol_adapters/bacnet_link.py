"""One BACnet device as the adapter sees it: address, breaker, limits, counters, and the one
place where requests go out and bacpypes3's answers become EAIO's outcomes.

Every confirmed request to a device passes ``_Link.call``: the circuit breaker, a semaphore (a
peer has 256 invoke ids, and bacpypes3 spins forever on the 257th outstanding request), then up
to ``retries + 1`` attempts of ``timeout_s`` each. bacpypes3's own APDU timer is set longer than
any device's and its retries off, so this alone decides and a dead device fails within about
``timeout_s * (retries + 1)``. bacpypes3 raises errors as ``ErrorRejectAbortNack``, a
BaseException; they are caught here by name and become ``Refused`` (the device answered) or
``CommFailure`` (it did not).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import TypeVar

from bacpypes3.apdu import AbortPDU, AbortReason, ErrorPDU, ErrorRejectAbortNack, RejectPDU
from bacpypes3.pdu import Address

from ..models import BacnetDevice, utcnow
from .breaker import CircuitBreaker

__all__ = ["MAX_OUTSTANDING", "CommFailure", "Invalid", "Link", "Refused", "Timeout"]

T = TypeVar("T")
# Confirmed requests in flight to one device: well under the 256 invoke ids bacpypes3 has per peer.
MAX_OUTSTANDING = 64


class CommFailure(Exception):
    """The device could not be reached: retried, counted by the breaker."""

    code = "device_offline"


class Timeout(CommFailure):
    # Over UDP there is no connection to be refused: silence is the only sign of a device that
    # is off the network, so it is reported as device_offline ("no answer within ...").
    code = "device_offline"


class Invalid(Exception):
    """The request could not even be built (bad property name, value of the wrong type)."""


class Refused(Exception):
    """The device answered with an Error, Reject or Abort: it is alive, so no retry.

    ``kind`` is error/reject/abort; ``name`` the error code or reason in kebab case;
    ``error_class`` the error class (errors only)."""

    def __init__(self, kind: str, name: str, error_class: str | None = None) -> None:
        super().__init__(f"{error_class}: {name}" if error_class else f"{kind}: {name}")
        self.kind, self.name, self.error_class = kind, name, error_class

    @classmethod
    def of(cls, err: ErrorRejectAbortNack) -> Refused:
        if isinstance(err, ErrorPDU):
            return cls("error", str(getattr(err, "errorCode", "other")), str(getattr(err, "errorClass", "")))
        kind = "reject" if isinstance(err, RejectPDU) else "abort"
        return cls(kind, str(getattr(err, "apduAbortRejectReason", "other")))

    @property
    def too_big(self) -> bool:
        """The request or its answer did not fit what one side accepts."""
        return self.name in ("segmentation-not-supported", "apdu-too-long", "buffer-overflow")


def _no_response(err: ErrorRejectAbortNack) -> bool:
    return isinstance(err, AbortPDU) and getattr(err, "apduAbortRejectReason", None) == AbortReason.noResponse


class Link:
    """One device's address, breaker, learned limits and counters."""

    def __init__(self, device: BacnetDevice) -> None:
        self.device = device
        conn = device.connection
        self.address = f"{conn.host}:{conn.port}"
        self.peer = Address(self.address)
        self.where = f"{device.id} at {self.address}"
        self.breaker = CircuitBreaker(conn.breaker_failures, conn.breaker_reset_s)
        self.requests = 0
        self.failures = 0
        self.online: bool | None = None  # unknown until the first request is answered or fails
        self.last_error: str | None = None
        self.last_ok: datetime | None = None
        self.rpm = conn.rpm  # False once the device refused ReadPropertyMultiple
        self.cov_refused = False  # the device does not do SubscribeCOV at all
        self.cov_refused_points: set[str] = set()  # point ids whose subscription the device refused
        # What the device accepts: the site file's word first, else its I-Am's.
        self.max_apdu: int | None = conn.max_apdu
        self.segmented: bool | None = conn.segmentation
        self.asked_who_is = False  # asked once per time the device is seen online
        self.batch_cap: int | None = None  # objects per RPM after the device said "too big"
        self.cov_active: set[str] = set()  # point ids with a live subscription
        self.sem = asyncio.Semaphore(MAX_OUTSTANDING)
        self.probe = asyncio.Lock()  # while offline, one subscriber at a time tries the device
        self.back_online = asyncio.Event()  # set when it answers again (replaced when it goes offline)
        self.went_offline = asyncio.Event()  # set when it stops answering (replaced when it is back)

    @property
    def attempt_budget_s(self) -> float:
        conn = self.device.connection
        return conn.timeout_s * (conn.retries + 1)

    def reset(self) -> None:
        """Fresh asyncio primitives: the next use may run on another event loop."""
        self.sem = asyncio.Semaphore(MAX_OUTSTANDING)
        self.probe = asyncio.Lock()
        self.back_online = asyncio.Event()
        self.went_offline = asyncio.Event()
        self.cov_active.clear()
        # A new start asks again: the device may have been given COV (or replaced) meanwhile.
        self.cov_refused = False
        self.cov_refused_points.clear()

    def learn(self, max_apdu: int, segmentation: str) -> None:
        """Take the device's limits from its I-Am, unless the site file gave them."""
        conn = self.device.connection
        if conn.max_apdu is None:
            self.max_apdu = int(max_apdu)
        if conn.segmentation is None:
            # The device's answers are what segmentation is about here: it must be able to send them.
            self.segmented = segmentation in ("segmented-both", "segmented-transmit")

    def offline_error(self) -> CommFailure:
        return CommFailure(
            f"circuit open after {self.breaker.count} failed requests; next try in {self.breaker.retry_in():.1f}s"
        )

    async def call(self, fn: Callable[[], Awaitable[T]]) -> T:
        """Run one request (``fn`` sends it and awaits the answer) with breaker, limit and retries.

        Raises CommFailure/Timeout (no answer), Refused (an error answer), Invalid (not sendable).
        """
        if not self.breaker.allow():
            raise self.offline_error()
        conn = self.device.connection
        failure: CommFailure = Timeout(f"no answer within {conn.timeout_s}s")
        async with self.sem:
            for _ in range(conn.retries + 1):
                self.requests += 1
                try:
                    async with asyncio.timeout(conn.timeout_s):
                        result = await fn()
                    if isinstance(result, ErrorRejectAbortNack):  # some bacpypes3 paths return it
                        raise result
                except TimeoutError:
                    failure = Timeout(f"no answer within {conn.timeout_s}s")
                    continue
                except ErrorRejectAbortNack as err:
                    if _no_response(err):
                        failure = Timeout(f"no answer within {conn.timeout_s}s")
                        continue
                    self._answered()
                    raise Refused.of(err) from None
                except OSError as err:
                    failure = CommFailure(f"network error: {err}")
                    continue
                except (ValueError, TypeError) as err:  # bacpypes3 checks names and values before sending
                    self.requests -= 1
                    raise Invalid(str(err) or type(err).__name__) from err
                self._answered()
                return result
        self._failed(failure)
        raise failure

    def _answered(self) -> None:
        self.breaker.success()
        if self.online is False:
            self.asked_who_is = False  # it may have come back as another device (new firmware, new limits)
            self.went_offline = asyncio.Event()
            self.back_online.set()
        self.online, self.last_ok = True, utcnow()

    def _failed(self, err: CommFailure) -> None:
        self.breaker.failure()
        self.failures += 1
        if self.online is not False:
            self.back_online = asyncio.Event()
            self.went_offline.set()
        self.online = False
        self.last_error = f"{err.code}: {err}"

    def health(self) -> dict[str, object]:
        return {
            "device_id": self.device.id,
            "address": self.address,
            "online": self.online,
            "last_error": self.last_error,
            "requests": self.requests,
            "failures": self.failures,
            "rpm": self.rpm,
            "cov_subscriptions": len(self.cov_active),
            "cov_refused": len(self.cov_refused_points),
            "breaker": self.breaker.state,
            "max_apdu": self.max_apdu,
            "segmentation": self.segmented,
            "last_ok": self.last_ok.isoformat() if self.last_ok else None,
        }
