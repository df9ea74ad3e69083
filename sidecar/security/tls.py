"""Server TLS credentials from ``cfg.auth``: TLS with ``tls_cert`` + ``tls_key``, mTLS (client
certificates required and checked against ``tls_client_ca``) when ``tls_client_ca`` is also set."""

from __future__ import annotations

from pathlib import Path

import grpc

from certus.sidecar.config import AuthConfig


class TlsConfigError(ValueError):
    """TLS settings are incomplete or their files cannot be read; the message names the setting."""


def _read(path: Path, setting: str, marker: bytes) -> bytes:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise TlsConfigError(f"{setting}: cannot read {path}: {exc.strerror}") from exc
    if marker not in data:
        raise TlsConfigError(f"{setting}: {path} is not PEM (no '{marker.decode()}' block)")
    return data


def server_credentials(auth: AuthConfig) -> grpc.ServerCredentials | None:
    """``None`` for plaintext; raises :class:`TlsConfigError` naming a missing or unreadable setting."""
    if auth.tls_cert is None and auth.tls_key is None:
        if auth.tls_client_ca is not None:
            raise TlsConfigError(
                "auth.tls_client_ca (CERTUS_TLS_CLIENT_CA) needs auth.tls_cert and auth.tls_key "
                "(CERTUS_TLS_CERT, CERTUS_TLS_KEY): client certificates only exist inside TLS"
            )
        return None
    if auth.tls_cert is None:
        raise TlsConfigError("auth.tls_cert (CERTUS_TLS_CERT) is required when auth.tls_key is set")
    if auth.tls_key is None:
        raise TlsConfigError("auth.tls_key (CERTUS_TLS_KEY) is required when auth.tls_cert is set")
    cert = _read(auth.tls_cert, "auth.tls_cert (CERTUS_TLS_CERT)", b"-----BEGIN CERTIFICATE-----")
    key = _read(auth.tls_key, "auth.tls_key (CERTUS_TLS_KEY)", b"PRIVATE KEY-----")
    client_ca = None
    if auth.tls_client_ca is not None:
        client_ca = _read(auth.tls_client_ca, "auth.tls_client_ca (CERTUS_TLS_CLIENT_CA)", b"-----BEGIN CERTIFICATE-----")
    return grpc.ssl_server_credentials(
        [(key, cert)], root_certificates=client_ca, require_client_auth=client_ca is not None
    )
