"""``certus-sidecar token new|hash``: make tokens and the digests the tokens file stores."""

from __future__ import annotations

import argparse
import json
import sys

from certus.sidecar.security.tokens import SCOPES, hash_token, new_token


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("token", help="bearer tokens: new (generate) | hash (digest for the tokens file)")
    tsub = p.add_subparsers(dest="token_command", required=True)

    n = tsub.add_parser("new", help="generate a token; prints it once (stderr) and its tokens-file entry (stdout)")
    n.add_argument("--name", required=True, help="the token's name (shown in logs and errors)")
    n.add_argument("--workspace", action="append", required=True, help="workspace id or '*' (repeatable)")
    n.add_argument("--scope", action="append", choices=sorted(SCOPES), help="default workspace:read (repeatable)")
    n.set_defaults(func=_new)

    h = tsub.add_parser("hash", help="read a token from stdin, print its SHA-256 hex digest")
    h.set_defaults(func=_hash)


def _new(args: argparse.Namespace) -> int:
    token = new_token()
    entry = {
        "name": args.name,
        "token_sha256": hash_token(token),
        "workspaces": args.workspace,
        "scopes": args.scope or ["workspace:read"],
    }
    print(f"token (shown once, give it to the client; it is not stored): {token}", file=sys.stderr)
    print(json.dumps(entry, indent=2))
    return 0


def _hash(args: argparse.Namespace) -> int:
    token = sys.stdin.readline().rstrip("\r\n")
    if not token:
        print("token hash: no token on stdin", file=sys.stderr)
        return 2
    print(hash_token(token))
    return 0
