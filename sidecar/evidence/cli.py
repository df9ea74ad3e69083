"""``certus-sidecar keygen`` and ``certus-sidecar verify``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from certus.sidecar import config as config_mod
from certus.sidecar.signing import SigningKey, VerifyKey


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    k = sub.add_parser("keygen", help="generate an Ed25519 signing key (mode 0600) and its .pub")
    k.add_argument("--out", help="key file (default: evidence.key_path, CERTUS_SIGNING_KEY)")
    k.add_argument("--force", action="store_true", help="overwrite an existing key")
    k.set_defaults(func=_keygen)

    v = sub.add_parser("verify", help="verify an evidence log: signatures, seq continuity, hash chain")
    v.add_argument("log_dir", help="evidence log directory (holds segment-NNNNNN.jsonl)")
    v.add_argument(
        "--key",
        action="append",
        default=[],
        metavar="PUB",
        help="trusted public key file (base64 of the raw 32 bytes; repeatable). "
        "Without it the log's own keys/ directory is used (consistency only).",
    )
    v.add_argument("--json", action="store_true", help="print the report as JSON")
    v.set_defaults(func=_verify)


def _keygen(args: argparse.Namespace) -> int:
    if args.out:
        out = Path(args.out).expanduser()
    else:
        out = config_mod.load(args.config).evidence.key_path
    key = SigningKey.generate()
    try:
        path = key.write(out, overwrite=args.force)
    except FileExistsError as exc:
        print(f"error: {exc} (use --force)", file=sys.stderr)
        return 1
    print(f"key id: {key.key_id}")
    print(f"private key: {path} (mode 0600)")
    print(f"public key: {path}.pub")
    return 0


def _verify(args: argparse.Namespace) -> int:
    from certus.sidecar.evidence.verify import NoTrustedKey, verify_log

    try:
        keys = [VerifyKey.from_file(p) for p in args.key] or None
    except (OSError, ValueError) as exc:
        print(f"error: --key: {exc}", file=sys.stderr)
        return 2
    try:
        report = verify_log(args.log_dir, keys)
    except (FileNotFoundError, NoTrustedKey) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(report.to_dict(), indent=2, sort_keys=True))
    else:
        print(report.summary())
    if not report.ok:
        assert report.first_bad is not None
        print(f"verify FAILED at {report.first_bad}", file=sys.stderr)
        return 1
    return 0
