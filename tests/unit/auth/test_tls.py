"""Server TLS credentials: complete settings give credentials, incomplete ones name the setting."""

from __future__ import annotations

import datetime
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from certus.sidecar.config import AuthConfig
from certus.sidecar.security.tls import TlsConfigError, server_credentials


@pytest.fixture(scope="module")
def pem(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("pem")
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(1).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    (d / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (d / "key.pem").write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return d


def test_no_tls_settings_is_plaintext() -> None:
    assert server_credentials(AuthConfig()) is None


def test_tls_and_mtls_give_credentials(pem: Path) -> None:
    tls = server_credentials(AuthConfig(tls_cert=pem / "cert.pem", tls_key=pem / "key.pem"))
    assert isinstance(tls, grpc.ServerCredentials)
    mtls = server_credentials(
        AuthConfig(tls_cert=pem / "cert.pem", tls_key=pem / "key.pem", tls_client_ca=pem / "cert.pem")
    )
    assert isinstance(mtls, grpc.ServerCredentials)


@pytest.mark.parametrize(
    "kw,setting",
    [
        (dict(tls_cert="cert.pem"), "auth.tls_key (CERTUS_TLS_KEY)"),
        (dict(tls_key="key.pem"), "auth.tls_cert (CERTUS_TLS_CERT)"),
        (dict(tls_client_ca="cert.pem"), "auth.tls_client_ca (CERTUS_TLS_CLIENT_CA)"),
        (dict(tls_cert="missing.pem", tls_key="key.pem"), "auth.tls_cert (CERTUS_TLS_CERT): cannot read"),
        (dict(tls_cert="cert.pem", tls_key="cert.pem"), "auth.tls_key (CERTUS_TLS_KEY)"),
        (dict(tls_cert="key.pem", tls_key="key.pem"), "auth.tls_cert (CERTUS_TLS_CERT)"),
        (dict(tls_cert="cert.pem", tls_key="key.pem", tls_client_ca="key.pem"), "auth.tls_client_ca"),
    ],
)
def test_incomplete_or_unreadable_settings_name_the_setting(pem: Path, kw: dict[str, str], setting: str) -> None:
    auth = AuthConfig(**{k: pem / v for k, v in kw.items()})  # type: ignore[arg-type]
    with pytest.raises(TlsConfigError) as exc:
        server_credentials(auth)
    assert setting in str(exc.value)
