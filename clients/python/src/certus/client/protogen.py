"""Generate the Python protobuf/gRPC modules from the repository's ``proto/`` with grpcio-tools.

The generated code is never edited by hand. It is written beside this package, as the regular
package ``certus.evaluate.v1`` (the proto files' own path, so the generated imports resolve with no
``sys.path`` tricks), and shipped inside the ``certus-client`` wheel. Generation runs at build time
(``setup.py``) and, in a development checkout, again at import when a ``.proto`` changed
(:func:`ensure`). grpcio-tools is needed only then: an installed wheel never regenerates.
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

SRC_DIR = Path(__file__).resolve().parents[2]  # .../src (holds the ``certus`` namespace)
GEN_DIR = SRC_DIR / "certus" / "evaluate"  # the generated package, git-ignored


def _proto_dir() -> Path | None:
    """``proto/`` of the repository when running from a checkout (``clients/python/src/...``)."""
    candidate = SRC_DIR.parents[2] / "proto" if len(SRC_DIR.parents) > 2 else None
    return candidate if candidate is not None and (candidate / "certus").is_dir() else None


PROTO_DIR = _proto_dir()
_STAMP = GEN_DIR / ".proto-sha256"


def proto_files() -> list[Path]:
    return sorted(PROTO_DIR.rglob("*.proto")) if PROTO_DIR is not None else []


def _digest() -> str:
    h = hashlib.sha256()
    assert PROTO_DIR is not None
    for p in proto_files():
        h.update(str(p.relative_to(PROTO_DIR)).encode())
        h.update(p.read_bytes())
    return h.hexdigest()


def generate() -> None:
    from grpc_tools import protoc

    if PROTO_DIR is None:
        raise RuntimeError("proto/ not found: generation runs from a checkout of the repository")
    files = [str(p.relative_to(PROTO_DIR)) for p in proto_files()]
    if not files:
        raise RuntimeError(f"no .proto files under {PROTO_DIR}")
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_DIR}",
        f"--python_out={SRC_DIR}",
        f"--pyi_out={SRC_DIR}",
        f"--grpc_python_out={SRC_DIR}",
        *files,
    ]
    if protoc.main(args) != 0:
        raise RuntimeError("protoc failed: " + " ".join(args))
    # package markers below the namespace (``certus`` itself stays a PEP 420 namespace)
    for d in [GEN_DIR, *(p for p in GEN_DIR.rglob("*") if p.is_dir() and p.name != "__pycache__")]:
        (d / "__init__.py").touch()
    _STAMP.write_text(_digest())


def ensure() -> None:
    """Regenerate when the protos changed since the last generation (or never were generated)."""
    if PROTO_DIR is None:  # installed wheel: generated at build time
        return
    if not _STAMP.exists() or _STAMP.read_text() != _digest():
        generate()


if __name__ == "__main__":
    generate()
    print(f"generated {len(proto_files())} proto files into {GEN_DIR}", file=sys.stderr)
