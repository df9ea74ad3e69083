"""Loopback is open by default; any other address needs auth, mTLS or the explicit flag."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import pytest

from certus.sidecar import config as config_mod
from certus.sidecar.security.binding import BindingRefused, check_binding, is_loopback, split_host


@pytest.mark.parametrize(
    "address,loopback",
    [
        ("127.0.0.1:50051", True),
        ("127.10.0.3:1", True),
        ("[::1]:50051", True),
        ("::1", True),
        ("localhost:50051", True),
        ("unix:/tmp/certus.sock", True),
        ("[::ffff:127.0.0.1]:50051", True),
        ("0.0.0.0:50051", False),
        ("[::]:50051", False),
        ("10.1.2.3:50051", False),
        ("192.168.0.7:50051", False),
        ("[fe80::1]:50051", False),
        ("sidecar.internal:50051", False),
        (":50051", False),
    ],
)
def test_is_loopback(address: str, loopback: bool) -> None:
    assert is_loopback(address) is loopback


def test_split_host() -> None:
    assert split_host("[::1]:5") == "::1"
    assert split_host("host:5") == "host"
    assert split_host("::1") == "::1"


def cfg(address: str, **auth: object) -> config_mod.Config:
    server: dict[str, object] = {"address": address}
    if "allow_insecure_remote" in auth:
        server["allow_insecure_remote"] = auth.pop("allow_insecure_remote")
    return config_mod.load(env={}, overrides={"server": server, "auth": auth})


@pytest.mark.parametrize("address", ["0.0.0.0:50051", "[::]:50051", "10.1.2.3:50051", "example.org:443"])
def test_remote_without_auth_is_refused_naming_the_settings(address: str) -> None:
    with pytest.raises(BindingRefused) as exc:
        check_binding(cfg(address))
    msg = str(exc.value)
    assert address in msg
    for setting in ("auth.tokens_file", "CERTUS_AUTH_TOKENS_FILE", "server.allow_insecure_remote",
                    "CERTUS_ALLOW_INSECURE_REMOTE"):
        assert setting in msg


def test_tls_alone_does_not_authenticate_callers() -> None:
    with pytest.raises(BindingRefused):
        check_binding(cfg("0.0.0.0:50051", tls_cert="/c.pem", tls_key="/k.pem"))


@pytest.mark.parametrize(
    "auth",
    [
        {"tokens_file": "/etc/certus/tokens.toml"},
        {"tokens_file": "/t.toml", "tls_cert": "/c.pem", "tls_key": "/k.pem"},
        {"tls_cert": "/c.pem", "tls_key": "/k.pem", "tls_client_ca": "/ca.pem"},
        {"allow_insecure_remote": True},
    ],
)
def test_remote_with_auth_or_the_flag_is_allowed(auth: dict[str, object]) -> None:
    check_binding(cfg("0.0.0.0:50051", **auth))


def test_loopback_needs_nothing() -> None:
    check_binding(cfg("127.0.0.1:50051"))
    check_binding(cfg("[::1]:0"))


def test_env_flag_is_read() -> None:
    c = config_mod.load(env={"CERTUS_ADDRESS": "0.0.0.0:1", "CERTUS_ALLOW_INSECURE_REMOTE": "1"})
    check_binding(c)


def test_build_server_refuses_before_building_or_binding(tmp_path: Path) -> None:
    from certus.sidecar.server.app import build_server

    with socket.socket() as s:  # a port that is free now
        s.bind(("0.0.0.0", 0))
        port = s.getsockname()[1]
    c = config_mod.load(
        env={},
        overrides={
            "server": {"address": f"0.0.0.0:{port}"},
            # paths under tmp: if build_server went on to create the app, files would appear here
            "evidence": {"log_dir": tmp_path / "evidence", "key_path": tmp_path / "keys" / "k"},
            "manifests": {"manifest_dir": tmp_path / "manifests"},
            "forwarder": {"outbox_dir": tmp_path / "outbox", "file_path": tmp_path / "i.jsonl"},
        },
    )
    with pytest.raises(BindingRefused):
        asyncio.run(build_server(c))
    assert list(tmp_path.iterdir()) == []  # nothing was created ...
    with socket.socket() as s:  # ... and nothing holds the port
        s.bind(("0.0.0.0", port))
