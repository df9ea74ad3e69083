"""Which addresses need authentication: loopback is open by default, anything else is not.

:func:`check_binding` runs before the server binds. Listening on a non-loopback address (``0.0.0.0``,
``::``, a LAN IP, a host name other than ``localhost``) is refused unless the caller must
authenticate (a tokens file, or mTLS client certificates) or ``server.allow_insecure_remote`` says
the operator accepts the risk.
"""

from __future__ import annotations

import ipaddress

import structlog

from certus.sidecar.config import Config

log = structlog.get_logger(__name__)


class BindingRefused(ValueError):
    """The configured address is reachable from other hosts and nothing authenticates callers."""


def split_host(address: str) -> str:
    """The host part of ``host:port``, ``[v6]:port`` or a bare host (``unix:`` paths return as is)."""
    address = address.strip()
    if address.startswith(("unix:", "unix-abstract:")):
        return address
    if address.startswith("["):
        end = address.find("]")
        return address[1:end] if end > 0 else address
    if address.count(":") == 1:
        return address.rsplit(":", 1)[0]
    if address.count(":") > 1:  # a bare IPv6 address, or v6 with a port gRPC would not parse anyway
        try:
            ipaddress.ip_address(address)
            return address
        except ValueError:
            return address.rsplit(":", 1)[0]
    return address


def is_loopback(address: str) -> bool:
    """True for 127.0.0.0/8, ::1, ``localhost`` and unix sockets; False for anything else."""
    host = split_host(address)
    if host.startswith(("unix:", "unix-abstract:")):
        return True
    if host.lower() in ("localhost", "localhost.", "ip6-localhost"):
        return True
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False  # another host name may resolve anywhere: treat as remote
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped.is_loopback
    return ip.is_loopback


def check_binding(cfg: Config) -> None:
    """Raise :class:`BindingRefused` when ``cfg`` would expose an unauthenticated server: the gRPC
    address, and the REST address when set (where mTLS is not offered, so it needs tokens)."""
    _check_address(cfg, cfg.server.address, "server.address", mtls_applies=True)
    if cfg.server.rest_address:
        _check_address(cfg, cfg.server.rest_address, "server.rest_address", mtls_applies=False)
    check_dashboard_binding(cfg)


def check_dashboard_binding(cfg: Config) -> None:
    """The dashboard shows every workspace's decisions: off loopback it needs both bearer auth and
    TLS (a browser sends its token in a cookie), and allow_insecure_remote does not waive that."""
    address = cfg.dashboard.address
    if not address or is_loopback(address):
        return
    tokens = cfg.auth.tokens_file is not None or cfg.auth.jwt_keys_file is not None
    if tokens and cfg.auth.tls_cert is not None and cfg.auth.tls_key is not None:
        return
    raise BindingRefused(
        f"refusing to serve the dashboard on {address} (dashboard.address): it is not a loopback address, and off "
        "loopback the dashboard needs authentication (CERTUS_AUTH_TOKENS_FILE or CERTUS_JWT_KEYS) and TLS "
        "(CERTUS_TLS_CERT and CERTUS_TLS_KEY)."
    )


def _check_address(cfg: Config, address: str, setting: str, *, mtls_applies: bool) -> None:
    if is_loopback(address):
        return
    tokens = cfg.auth.tokens_file is not None or cfg.auth.jwt_keys_file is not None
    mtls = mtls_applies and cfg.auth.tls_client_ca is not None and cfg.auth.tls_cert is not None
    tls = cfg.auth.tls_cert is not None
    if tokens or mtls:
        if not tls:
            log.warning(
                "remote_without_tls",
                address=address,
                hint="bearer tokens cross the network in clear text; set auth.tls_cert/auth.tls_key",
            )
        return
    if cfg.server.allow_insecure_remote:
        log.warning("insecure_remote_binding", address=address, setting="server.allow_insecure_remote")
        return
    raise BindingRefused(
        f"refusing to listen on {address} ({setting}): it is not a loopback address and no authentication is "
        "configured. Set auth.tokens_file (CERTUS_AUTH_TOKENS_FILE) or auth.jwt_keys_file (CERTUS_JWT_KEYS), preferably with TLS "
        "(CERTUS_TLS_CERT, CERTUS_TLS_KEY) or mTLS (CERTUS_TLS_CLIENT_CA); or set "
        "server.allow_insecure_remote (CERTUS_ALLOW_INSECURE_REMOTE=1) to accept an open server."
    )
