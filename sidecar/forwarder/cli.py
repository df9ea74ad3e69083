"""``certus-sidecar integrity-serve``: run the reference integrity receiver."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "integrity-serve",
        help="reference integrity service: verifies and stores forwarded decisions (gRPC and/or HTTP)",
    )
    p.add_argument("--grpc", metavar="ADDR", help="gRPC listen address, e.g. 127.0.0.1:8082")
    p.add_argument("--http", metavar="ADDR", help="HTTP listen address for POST /v1/decisions, e.g. 127.0.0.1:8081")
    p.add_argument("--key", action="append", required=True, metavar="PUB", help="trusted public key file (repeatable)")
    p.add_argument("--store", metavar="FILE", help="JSONL store of accepted decisions (re-read at start)")
    p.add_argument("--api-key", default="", help="require 'Authorization: Bearer <key>' (default: none)")
    p.set_defaults(func=_serve)


def _serve(args: argparse.Namespace) -> int:
    from certus.sidecar.forwarder.receiver import IntegrityReceiver
    from certus.sidecar.signing import VerifyKey

    if not args.grpc and not args.http:
        print("error: give --grpc ADDR and/or --http ADDR", file=sys.stderr)
        return 2
    try:
        keys = [VerifyKey.from_file(p) for p in args.key]
    except (OSError, ValueError) as exc:
        print(f"error: --key: {exc}", file=sys.stderr)
        return 2
    receiver = IntegrityReceiver(keys, store_path=Path(args.store) if args.store else None, api_key=args.api_key)
    try:
        if args.grpc:
            print(f"grpc listening on port {receiver.start_grpc(args.grpc)}", flush=True)
        if args.http:
            print(f"http listening on port {receiver.start_http(args.http)}", flush=True)
    except OSError as exc:
        receiver.stop()
        print(f"error: {exc}", file=sys.stderr)
        return 1
    done = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: done.set())
    done.wait()
    receiver.stop()
    print(f"stopped: {receiver.stats()}", flush=True)
    return 0
