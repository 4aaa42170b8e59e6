"""Security of the sim's OPC-UA servers: endpoints (None, and Basic256Sha256 with a certificate)
and logins (anonymous, or one username and password).

A test device: any client certificate is accepted, and no client is ever an administrator
(asyncua would make a user called 'admin' one, able to change the address space).
"""

from __future__ import annotations

import hmac
from collections.abc import Callable
from pathlib import Path
from typing import Any

from asyncua import Server, ua
from asyncua.crypto.permission_rules import User, UserRole
from asyncua.server.user_managers import UserManager
from cryptography import x509

from ...config import SimOpcua

__all__ = ["secure", "user_manager"]


class _Login(UserManager):
    """One username and password; anything else is refused (BadUserAccessDenied)."""

    def __init__(self, username: str, password: str) -> None:
        self.username = username
        self.password = password

    def get_user(self, iserver: Any, username: str | None = None, password: str | None = None,
                 certificate: Any = None) -> User | None:
        if username == self.username and hmac.compare_digest((password or "").encode(), self.password.encode()):
            return User(role=UserRole.User, name=username)
        return None


class _Anyone(UserManager):
    """Every client is a plain user: reads, writes what is writable, never edits the address space."""

    def get_user(self, iserver: Any, username: str | None = None, password: str | None = None,
                 certificate: Any = None) -> User | None:
        return User(role=UserRole.User, name=username)


def user_manager(settings: SimOpcua) -> UserManager:
    if settings.username is not None and settings.password is not None:
        return _Login(settings.username, settings.password)
    return _Anyone()


async def secure(server: Server, settings: SimOpcua, resolve: Callable[[str], Path], default_uri: str) -> None:
    """Endpoints, identity tokens and the application URI, before the server starts. With a
    certificate the URI is the one in its subjectAltName: clients check the two agree."""
    server.allow_remote_admin(False)
    uri = default_uri
    policies = [ua.SecurityPolicyType.NoSecurity]
    if settings.certificate is not None and settings.private_key is not None:
        await server.load_certificate(str(resolve(settings.certificate)))
        await server.load_private_key(str(resolve(settings.private_key)))
        uri = _certificate_uri(server.iserver.certificate) or uri
        policies += [ua.SecurityPolicyType.Basic256Sha256_Sign, ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt]
    await server.set_application_uri(uri)
    server.set_security_policy(policies)
    login = settings.username is not None and settings.password is not None
    server.set_identity_tokens([ua.UserNameIdentityToken] if login else [ua.AnonymousIdentityToken])


def _certificate_uri(cert: Any) -> str | None:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (AttributeError, x509.ExtensionNotFound):
        return None
    uris = san.get_values_for_type(x509.UniformResourceIdentifier)
    return uris[0] if uris else None
