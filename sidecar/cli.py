"""``certus-sidecar``: one entry point; each command lives in the module that owns its stage.

A command module exposes ``register(subparsers)``, which adds its sub-command(s) and sets
``func`` (taking the parsed args, returning an exit code).
"""

from __future__ import annotations

import argparse
import importlib
import sys

COMMAND_MODULES = [
    "certus.sidecar.commands",  # serve
    "certus.sidecar.loadgen",  # bench
    "certus.models.cli",  # models export
    "certus.sidecar.manifest_cli",  # manifest validate|sign|verify|keygen
    "certus.sidecar.evidence.cli",  # keygen, verify
    "certus.sidecar.forwarder.cli",  # integrity-serve
    "certus.sidecar.toolkit.cli",  # evaluate, calibrate, validate, report
    "certus.sidecar.security.cli",  # token new|hash
    "certus.sidecar.dashboard.cli",  # dashboard
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="certus-sidecar", description="Certus Evaluate sidecar")
    parser.add_argument("--config", help="TOML config file (else CERTUS_CONFIG)")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    from certus.sidecar.config import ConfigError

    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except ConfigError as exc:  # a setting to fix (named in the message): no traceback
        print(f"certus-sidecar: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
