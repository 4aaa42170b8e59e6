"""One error hierarchy for every part of EAIO.

Adapters translate library errors into these with ``raise ... from err``; the MCP tools turn
them into readable tool errors whose text starts with the short ``code``.
"""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "ConnectionFailed",
    "DeviceError",
    "EaioError",
    "LLMError",
    "StoreError",
    "ValidationFailed",
]


class EaioError(Exception):
    """Base of every EAIO error. ``code`` is the short machine-readable reason."""

    code: str = "error"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code

    @property
    def message(self) -> str:
        return str(self.args[0]) if self.args else ""

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


class ConfigError(EaioError):
    """The site configuration is invalid. ``problems`` lists ``(field path, message)`` pairs."""

    code = "invalid_config"

    def __init__(self, source: str, problems: list[tuple[str, str]]) -> None:
        self.source = source
        self.problems = problems
        lines = [f"{source}: {path}: {msg}" if path else f"{source}: {msg}" for path, msg in problems]
        super().__init__("\n".join(lines))

    def __str__(self) -> str:
        return self.message


class ConnectionFailed(EaioError):
    """A transport could not be opened or was lost (broker, device socket, MCP child)."""

    code = "connection_failed"


class DeviceError(EaioError):
    """A device refused or failed a request. Codes: ``device_offline``, ``timeout``,
    ``protocol_error``, ``unknown_point``, ``not_writable``, ``out_of_bounds``, ``invalid_argument``."""

    code = "device_error"

    def __init__(
        self, message: str, *, code: str, device: str | None = None, point: str | None = None
    ) -> None:
        super().__init__(message, code=code)
        self.device = device
        self.point = point


class ValidationFailed(EaioError):
    """Input that cannot be turned into a valid reading or request."""

    code = "invalid_argument"


class StoreError(EaioError):
    """A store refused or failed a write or query; ``retryable`` says whether trying again may help."""

    code = "store_error"

    def __init__(self, message: str, *, retryable: bool) -> None:
        super().__init__(message)
        self.retryable = retryable


class LLMError(EaioError):
    """An LLM backend failed (unreachable, no such model, malformed answer)."""

    code = "llm_error"
