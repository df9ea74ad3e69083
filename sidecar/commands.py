"""``certus-sidecar serve``."""

from __future__ import annotations

import argparse
import asyncio

from sidecar import config as config_mod


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("serve", help="run the sidecar (defaults: 127.0.0.1:50051, embedded manifest, local log)")
    p.add_argument("--address", help="host:port to listen on (else CERTUS_ADDRESS, default 127.0.0.1:50051)")
    p.set_defaults(func=_serve)


def _serve(args: argparse.Namespace) -> int:
    from sidecar.server.app import serve
    from sidecar.telemetry import configure_logging

    overrides = {"server": {"address": args.address}} if args.address else {}
    cfg = config_mod.load(args.config, overrides=overrides)
    configure_logging(cfg.telemetry)
    if cfg.server.use_uvloop:
        import uvloop

        uvloop.install()
    asyncio.run(serve(cfg))
    return 0
