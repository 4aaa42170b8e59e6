"""Self-signed OPC-UA application certificates for tests: one for a server, one for a client.

OPC-UA peers name themselves by an application URI that must also be in their certificate's
subjectAltName; these certificates carry it (plus localhost, this host's name and 127.0.0.1, so
asyncua's own checks stay quiet). No CA: each certificate signs itself, as test devices' do.
Certificates are DER (``.der``), keys PEM (``.pem``), RSA 2048 as Basic256Sha256 wants.

    certs = make_certs(tmp_path / "certs")
    sim.opcua: {certificate: certs.server_cert, private_key: certs.server_key}
    client.application_uri = certs.client_uri
    await client.set_security(SecurityPolicyBasic256Sha256, certs.client_cert, certs.client_key, ...)
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import socket
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["Certs", "make_certs"]

SERVER_URI = "urn:eaio:test:server"
CLIENT_URI = "urn:eaio:test:client"


@dataclass(frozen=True)
class Certs:
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    server_uri: str = SERVER_URI
    client_uri: str = CLIENT_URI


def make_certs(directory: Path, *, server_uri: str = SERVER_URI, client_uri: str = CLIENT_URI) -> Certs:
    """Write a server and a client certificate with their keys into ``directory`` (created)."""
    directory.mkdir(parents=True, exist_ok=True)
    server_cert, server_key = _write_pair(directory, "server", server_uri, "EAIO test server")
    client_cert, client_key = _write_pair(directory, "client", client_uri, "EAIO test client")
    return Certs(server_cert, server_key, client_cert, client_key, server_uri, client_uri)


def _write_pair(directory: Path, stem: str, uri: str, common_name: str) -> tuple[Path, Path]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    cert = _self_signed(key, uri, common_name)
    cert_path, key_path = directory / f"{stem}.der", directory / f"{stem}.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.DER))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def _self_signed(key: rsa.RSAPrivateKey, uri: str, common_name: str) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name),
                      x509.NameAttribute(NameOID.ORGANIZATION_NAME, "EAIO tests")])
    hosts = sorted({"localhost", socket.gethostname()})
    now = dt.datetime.now(dt.UTC)
    public = key.public_key()
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))  # a clock a little behind still accepts it
        .not_valid_after(now + dt.timedelta(days=365))
        .add_extension(x509.SubjectAlternativeName([
            x509.UniformResourceIdentifier(uri),
            *(x509.DNSName(h) for h in hosts),
            x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        ]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=True, key_encipherment=True,
                                     data_encipherment=True, key_agreement=False, key_cert_sign=False,
                                     crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                       critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(public), critical=False)
        .sign(key, hashes.SHA256())
    )
