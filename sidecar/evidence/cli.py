"""``certus-sidecar keygen``, ``certus-sidecar verify`` and ``certus-sidecar prove``."""

from __future__ import annotations

import argparse
import base64
import json
import sys
from pathlib import Path

from certus.sidecar import config as config_mod
from certus.sidecar.signing import SigningKey, VerifyKey


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    k = sub.add_parser("keygen", help="generate an Ed25519 signing key (mode 0600) and its .pub")
    k.add_argument("--out", help="key file (default: evidence.key_path, CERTUS_SIGNING_KEY)")
    k.add_argument("--force", action="store_true", help="overwrite an existing key")
    k.add_argument(
        "--rotate",
        action="store_true",
        help="write the NEXT key beside the current one (<key>.next, or evidence.next_key_path): the sidecar "
        "rotates to it within a second (or at its next start), with a rotation record signed by the old key",
    )
    k.set_defaults(func=_keygen)

    v = sub.add_parser(
        "verify", help="verify an evidence log: signatures, key epochs, seq continuity, hash chain, signed Merkle checkpoints"
    )
    v.add_argument("log_dir", help="evidence log directory (holds segment-NNNNNN.jsonl)")
    v.add_argument(
        "--key",
        action="append",
        default=[],
        metavar="PUB",
        help="trusted public key file: base64 of the raw 32 bytes, one key per line (a keyring file may hold "
        "several; repeatable). Keys a rotation record signed by a trusted key names are trusted from its seq on. "
        "Without it the log's own keys/ directory is used (consistency only).",
    )
    v.add_argument("--json", action="store_true", help="print the report as JSON")
    v.set_defaults(func=_verify)

    p = sub.add_parser("prove", help="Merkle proofs (RFC 9162) an auditor checks without the log")
    psub = p.add_subparsers(dest="proof", required=True, metavar="{inclusion,consistency}")
    pi = psub.add_parser("inclusion", help="one decision, its inclusion path and the signed checkpoint it leads to")
    which = pi.add_mutually_exclusive_group(required=True)
    which.add_argument("--evidence-id", default="", help="the decision's evidence id (sha256:...)")
    which.add_argument("--seq", type=int, help="the decision's seq")
    pi.add_argument("--tree-size", type=int, help="prove against the checkpoint of this size (default: the newest)")
    pc = psub.add_parser("consistency", help="the path proving checkpoint NEW extends checkpoint OLD")
    pc.add_argument("old", type=int, metavar="OLD", help="tree size of the older checkpoint")
    pc.add_argument("new", type=int, metavar="NEW", help="tree size of the newer checkpoint")
    for sp in (pi, pc):
        sp.add_argument("--log-dir", help="evidence log directory (default: evidence.log_dir)")
        sp.add_argument("--out", help="write the bundle here (default: stdout)")
    p.set_defaults(func=_prove)


def _keygen(args: argparse.Namespace) -> int:
    if args.out:
        out = Path(args.out).expanduser()
    else:
        out = config_mod.load(args.config).evidence.key_path
    key = SigningKey.generate()
    if args.rotate:
        cfg = config_mod.load(args.config).evidence
        if not out.exists():
            print(f"error: --rotate: no current key at {out}", file=sys.stderr)
            return 1
        out = cfg.next_key_path if (cfg.next_key_path and not args.out) else Path(str(out) + ".next")
    try:
        path = key.write(out, overwrite=args.force)
    except FileExistsError as exc:
        print(f"error: {exc} (use --force)", file=sys.stderr)
        return 1
    print(f"key id: {key.key_id}")
    print(f"private key: {path} (mode 0600)")
    print(f"public key: {path}.pub")
    if args.rotate:
        print("the sidecar rotates to it within a second (or at its next start); GetInfo then shows the new key id")
    return 0


def read_keyring(path: str | Path) -> list[VerifyKey]:
    """Public keys from a file: base64 of the raw 32 bytes, one per line."""
    lines = [ln.strip() for ln in Path(path).read_text().splitlines() if ln.strip() and not ln.startswith("#")]
    if not lines:
        raise ValueError(f"{path}: no key")
    return [VerifyKey(base64.b64decode(ln, validate=True)) for ln in lines]


def _verify(args: argparse.Namespace) -> int:
    from certus.sidecar.evidence.verify import NoTrustedKey, verify_log

    try:
        keys = [k for p in args.key for k in read_keyring(p)] or None
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


def _prove(args: argparse.Namespace) -> int:
    from certus.sidecar.evidence.prove import ProveError, consistency_bundle, inclusion_bundle

    log_dir = Path(args.log_dir).expanduser() if args.log_dir else config_mod.load(args.config).evidence.log_dir
    try:
        if args.proof == "inclusion":
            bundle = inclusion_bundle(log_dir, evidence_id=args.evidence_id, seq=args.seq, tree_size=args.tree_size)
        else:
            bundle = consistency_bundle(log_dir, args.old, args.new)
    except (ProveError, OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    text = json.dumps(bundle, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
    if args.out:
        Path(args.out).write_text(text)
    else:
        sys.stdout.write(text)
    return 0
