"""``certus-sidecar serve``."""

from __future__ import annotations

import argparse
import asyncio
import sys

from certus.sidecar import config as config_mod


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("serve", help="run the sidecar (defaults: 127.0.0.1:50051, embedded manifest, local log)")
    p.add_argument("--address", help="host:port to listen on (else CERTUS_ADDRESS, default 127.0.0.1:50051)")
    p.add_argument(
        "--metrics-address", help="host:port for Prometheus metrics (else CERTUS_METRICS_ADDRESS; default off)"
    )
    p.set_defaults(func=_serve)


def _serve(args: argparse.Namespace) -> int:
    from certus.sidecar.metrics import parse_address
    from certus.sidecar.server.app import serve
    from certus.sidecar.telemetry import configure_logging, configure_tracing, shutdown_tracing

    server: dict[str, str] = {}
    if args.address:
        server["address"] = args.address
    if args.metrics_address:
        server["metrics_address"] = args.metrics_address
    cfg = config_mod.load(args.config, overrides={"server": server} if server else {})
    try:
        configure_logging(cfg.telemetry)
        configure_tracing(cfg.telemetry)  # exports only when the OTEL_* settings ask
        if cfg.server.metrics_address:
            parse_address(cfg.server.metrics_address)
    except ValueError as exc:  # a bad LOG_* / OTEL_* setting: say which, no traceback
        print(f"certus-sidecar: {exc}", file=sys.stderr)
        return 2
    if cfg.server.use_uvloop:
        import uvloop

        uvloop.install()
    try:
        asyncio.run(serve(cfg))
    finally:
        shutdown_tracing()  # flush spans still batched
    return 0
