"""``certus-sidecar dashboard``: the web dashboard on an existing evidence log, without a sidecar.

Reads the log (read-only), keeps its index under ``dashboard.state_dir``; the calibration page loads
the model on first use. Same auth and TLS settings as the sidecar; off loopback it needs both.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from certus.sidecar.config import Config
    from certus.sidecar.security.access import Authenticator
    from certus.sidecar.signing import VerifyKey


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("dashboard", help="serve the web dashboard on an existing evidence log (no sidecar needed)")
    p.add_argument("--evidence-dir", help="evidence log directory (default evidence.log_dir, CERTUS_EVIDENCE_DIR)")
    p.add_argument("--key", action="append", default=[], metavar="PUB", help="trusted public key file (repeatable; default: the log's keys/)")
    p.add_argument("--address", help="host:port (default dashboard.address, CERTUS_DASHBOARD_ADDRESS, else 127.0.0.1:8090)")
    p.set_defaults(func=_dashboard)


def _dashboard(args: argparse.Namespace) -> int:
    from certus.sidecar import config as config_mod
    from certus.sidecar.security.access import AccessControl
    from certus.sidecar.security.binding import BindingRefused, check_dashboard_binding
    from certus.sidecar.signing import VerifyKey
    from certus.sidecar.telemetry import configure_logging

    overrides = {"dashboard": {"address": args.address}} if args.address else {}
    try:
        cfg = config_mod.load(args.config, overrides=overrides)
        if not cfg.dashboard.address:
            cfg = cfg.replace(dashboard={"address": "127.0.0.1:8090"})
        configure_logging(cfg.telemetry)
        check_dashboard_binding(cfg)
        keys = [VerifyKey.from_file(k) for k in args.key] or None
        access = AccessControl.from_config(cfg)
    except (config_mod.ConfigError, BindingRefused, OSError, ValueError) as exc:
        print(f"certus-sidecar: {exc}", file=sys.stderr)
        return 2
    log_dir = Path(args.evidence_dir) if args.evidence_dir else cfg.evidence.log_dir
    if not log_dir.is_dir():
        print(f"certus-sidecar: --evidence-dir {log_dir}: not a directory", file=sys.stderr)
        return 2
    return asyncio.run(_run(cfg, log_dir, keys, access.authenticator))


async def _run(cfg: Config, log_dir: Path, keys: list[VerifyKey] | None, authenticator: Authenticator | None) -> int:
    from certus.sidecar.dashboard.index import IndexInUse
    from certus.sidecar.dashboard.web import Dashboard
    from certus.sidecar.errors import Fatal
    from certus.sidecar.toolkit.engine import build_encoder

    encoder: list[Any] = []

    def load_encoder() -> Any:  # the calibration page's model, loaded once on first use
        if not encoder:
            encoder.append(build_encoder(cfg))
        return encoder[0]

    try:
        dash = Dashboard(cfg, log_dir=log_dir, keys=keys, authenticator=authenticator, encoder_factory=load_encoder)
    except IndexInUse as exc:
        print(f"certus-sidecar: {exc}", file=sys.stderr)
        return 2
    try:
        port = await dash.serve(cfg.dashboard.address)
    except Fatal as exc:
        await dash.aclose()
        print(f"certus-sidecar: {exc}", file=sys.stderr)
        return 2
    scheme = "https" if cfg.auth.tls_cert else "http"
    print(f"certus-sidecar dashboard on {scheme}://{cfg.dashboard.address.rsplit(':', 1)[0]}:{port}/ (evidence log {log_dir})", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await dash.aclose()
    return 0
