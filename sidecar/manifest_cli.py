"""``certus-sidecar manifest validate|sign|verify|keygen``: operate signed workspace manifests.

* ``validate FILE``: check a .json / .toml / .json.dsse manifest against the schema (for an
  envelope the signature is NOT checked; use ``verify``). When the file is named like a store file
  (``<YYYY-MM>.<ext>``), its directory must be the workspace and its name the version.
* ``sign FILE --key KEY [--out OUT]``: validate, then wrap the canonical JSON of the document in a
  DSSE envelope (payloadType application/vnd.certus.manifest+json) signed with the Ed25519 key;
  written to ``<version>.json.dsse`` beside FILE unless ``--out`` says otherwise.
* ``verify FILE --key PUB [--key PUB ...]``: the envelope must carry a valid signature by one of
  the keys and its payload must validate.
* ``keygen OUT``: a new Ed25519 key (OUT, mode 0600) and its public key (OUT.pub).

Exit codes: 0 ok, 1 invalid / bad signature, 2 usage or I/O problem.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from certus.sidecar.errors import InvalidArgument
from certus.sidecar.manifests.model import VERSION_RE
from certus.sidecar.manifests.schema import (
    MAX_FILE_BYTES,
    SIGNED_SUFFIX,
    ManifestError,
    build_manifest,
    decode_document,
    document_json,
    file_format,
    load_trusted_keys,
    open_envelope,
    version_of_filename,
)
from certus.sidecar.signing import MANIFEST_PAYLOAD_TYPE, SigningKey, sign_envelope

EXIT_OK, EXIT_INVALID, EXIT_USAGE = 0, 1, 2


def register(sub: Any) -> None:
    p = sub.add_parser("manifest", help="validate, sign and verify workspace manifests")
    msub = p.add_subparsers(dest="manifest_command", required=True)

    v = msub.add_parser("validate", help="check a manifest file against the schema")
    v.add_argument("file", type=Path)
    v.set_defaults(func=cmd_validate)

    s = msub.add_parser("sign", help="sign a manifest into a DSSE envelope (<version>.json.dsse)")
    s.add_argument("file", type=Path)
    s.add_argument("--key", type=Path, required=True, help="Ed25519 private key file (base64 seed)")
    s.add_argument("--out", type=Path, help="envelope path (default: <version>.json.dsse beside FILE)")
    s.set_defaults(func=cmd_sign)

    r = msub.add_parser("verify", help="verify a signed manifest envelope")
    r.add_argument("file", type=Path)
    r.add_argument("--key", type=Path, action="append", required=True, help="trusted public key file (repeatable)")
    r.set_defaults(func=cmd_verify)

    k = msub.add_parser("keygen", help="create an Ed25519 manifest signing key (and OUT.pub)")
    k.add_argument("out", type=Path)
    k.set_defaults(func=cmd_keygen)


def _location(path: Path) -> tuple[str, str] | None:
    """(workspace, version) when the file is named like a store file."""
    version = version_of_filename(path)
    if VERSION_RE.fullmatch(version):
        return path.resolve().parent.name, version
    return None


def _read(path: Path) -> bytes:
    with path.open("rb") as f:
        return f.read(MAX_FILE_BYTES + 1)


def _err(msg: str) -> None:
    print(msg, file=sys.stderr)


def _load_document(path: Path) -> tuple[dict[str, Any], str]:
    fmt = file_format(path)
    raw = _read(path)
    if fmt == "dsse":
        doc, _ = open_envelope(raw, str(path), None)
        return doc, fmt
    return decode_document(raw, fmt, str(path)), fmt


def cmd_validate(args: argparse.Namespace) -> int:
    path: Path = args.file
    if not file_format(path):
        _err(f"{path}: unknown format; use .json, .toml or .json.dsse")
        return EXIT_USAGE
    try:
        doc, fmt = _load_document(path)
        m = build_manifest(doc, source=str(path), expected_location=_location(path))
    except OSError as exc:
        _err(f"{path}: cannot read: {exc.strerror or exc}")
        return EXIT_USAGE
    except ManifestError as exc:
        for v in exc.violations:
            _err(f"{exc.source}: {v.field}: {v.description}")
        return EXIT_INVALID
    note = " (signature not checked; use 'manifest verify')" if fmt == "dsse" else ""
    print(f"OK {m.manifest_uri} {m.digest}{note}")
    return EXIT_OK


def cmd_sign(args: argparse.Namespace) -> int:
    path: Path = args.file
    fmt = file_format(path)
    if fmt not in ("json", "toml"):
        _err(f"{path}: sign a .json or .toml manifest")
        return EXIT_USAGE
    try:
        key = SigningKey.from_file(args.key)
    except (OSError, ValueError) as exc:
        _err(f"{args.key}: not a usable Ed25519 private key ({exc})")
        return EXIT_USAGE
    try:
        doc = decode_document(_read(path), fmt, str(path))
        m = build_manifest(doc, source=str(path), expected_location=_location(path))
    except OSError as exc:
        _err(f"{path}: cannot read: {exc.strerror or exc}")
        return EXIT_USAGE
    except ManifestError as exc:
        for v in exc.violations:
            _err(f"{exc.source}: {v.field}: {v.description}")
        _err("refusing to sign an invalid manifest")
        return EXIT_INVALID
    env = sign_envelope(key, MANIFEST_PAYLOAD_TYPE, document_json(doc))
    out: Path = args.out or path.with_name(m.version + SIGNED_SUFFIX)
    tmp = out.with_name(f".{out.name}.tmp{os.getpid()}")
    try:
        tmp.write_bytes(env.to_json() + b"\n")
        os.replace(tmp, out)  # atomic: the store never sees half an envelope
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        _err(f"{out}: cannot write: {exc.strerror or exc}")
        return EXIT_USAGE
    print(f"signed {m.manifest_uri} with {key.key_id} -> {out}")
    return EXIT_OK


def cmd_verify(args: argparse.Namespace) -> int:
    path: Path = args.file
    if file_format(path) != "dsse":
        _err(f"{path}: verify a signed envelope (<version>{SIGNED_SUFFIX})")
        return EXIT_USAGE
    try:
        keys = load_trusted_keys(list(args.key))
    except InvalidArgument as exc:
        for v in exc.violations:
            _err(f"--key: {v.description}")
        return EXIT_USAGE
    try:
        doc, signer = open_envelope(_read(path), str(path), keys)
        m = build_manifest(doc, source=str(path), expected_location=_location(path), signer_key_id=signer)
    except OSError as exc:
        _err(f"{path}: cannot read: {exc.strerror or exc}")
        return EXIT_USAGE
    except ManifestError as exc:
        for v in exc.violations:
            _err(f"{exc.source}: {v.field}: {v.description}")
        return EXIT_INVALID
    print(f"OK {m.manifest_uri} signed by {m.signer_key_id} (signed_by: {m.signed_by})")
    return EXIT_OK


def cmd_keygen(args: argparse.Namespace) -> int:
    try:
        key = SigningKey.generate()
        key.write(args.out)
    except (OSError, FileExistsError) as exc:
        _err(str(exc))
        return EXIT_USAGE
    print(f"{key.key_id} -> {args.out} (public key: {args.out}.pub)")
    return EXIT_OK
