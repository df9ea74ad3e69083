"""Generate Python code from ``proto/`` with grpcio-tools (never edited by hand).

Output goes to ``sidecar/_gen`` (git-ignored). ``sidecar.protos`` calls :func:`ensure` at import,
so a checkout whose protos changed regenerates before use; ``python -m sidecar.protogen`` and the
setuptools build hook run it explicitly.
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "proto"
GEN_DIR = Path(__file__).resolve().parent / "_gen"
_STAMP = GEN_DIR / ".proto-sha256"


def proto_files() -> list[Path]:
    return sorted(PROTO_DIR.rglob("*.proto"))


def _digest() -> str:
    h = hashlib.sha256()
    for p in proto_files():
        h.update(str(p.relative_to(PROTO_DIR)).encode())
        h.update(p.read_bytes())
    return h.hexdigest()


def generate() -> None:
    from grpc_tools import protoc

    GEN_DIR.mkdir(parents=True, exist_ok=True)
    files = [str(p.relative_to(PROTO_DIR)) for p in proto_files()]
    if not files:
        raise RuntimeError(f"no .proto files under {PROTO_DIR}")
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_DIR}",
        f"--python_out={GEN_DIR}",
        f"--pyi_out={GEN_DIR}",
        f"--grpc_python_out={GEN_DIR}",
        *files,
    ]
    if protoc.main(args) != 0:
        raise RuntimeError("protoc failed: " + " ".join(args))
    # empty package markers so a wheel carries the generated modules as regular packages
    for d in [GEN_DIR, *(p for p in GEN_DIR.rglob("*") if p.is_dir() and p.name != "__pycache__")]:
        (d / "__init__.py").touch()
    _STAMP.write_text(_digest())


def ensure() -> None:
    """Regenerate when the protos changed since the last generation (or never were generated)."""
    if not PROTO_DIR.is_dir():  # installed wheel: code was generated at build time
        return
    if not _STAMP.exists() or _STAMP.read_text() != _digest():
        generate()


if __name__ == "__main__":
    generate()
    print(f"generated {len(proto_files())} proto files into {GEN_DIR}", file=sys.stderr)
