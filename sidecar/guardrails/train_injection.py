"""Train the prompt-attack head shipped in ``sidecar/guardrails/data/attack_head.npz``.

    python -m certus.sidecar.guardrails.train_injection [--data-dir ../shared/data] [--model-dir DIR]

Reproducible (fixed seed, deterministic full-batch Adam fits, CPU embeddings):

1. Split deepset/prompt-injections (train split, 546 rows) 70/30, stratified by label, seed
   ``SPLIT_SEED``; the held-out 30% row indices go to ``data/injection_split.json`` and are never
   used for training, model selection or thresholds (the benchmark reports on them).
2. Training pool: the deepset 70% rows; the hand-written exemplars in ``data/attack_exemplars.jsonl``
   (injection, jailbreak and benign look-alikes); and, as benign document-style and question-style
   text, the SQuAD v2 "Normans" article's paragraphs (whole and in segments) and questions (the
   other article, "Computational_complexity_theory", is kept for the false-positive check on
   retrieved context), and ``data/benign_docs.jsonl``: paragraphs of CPython 3.11 standard-library
   docstrings (PSF licence; technical prose full of imperatives such as "Return ...", "Ignore ...",
   which deepset's benign questions lack), sampled by ``--rebuild-benign-docs``.
3. Embed with the sidecar's ONNX MiniLM (:class:`models.encoder.OnnxEncoder`).
4. L2-regularised logistic regression (square-root class-balancing weights, full-batch Adam from
   zero); lambda, the operating point and whether the head reads the char 3-5-grams
   (:func:`~certus.sidecar.guardrails.learned.char_features`; kept only when they gain
   ``CHAR_MIN_GAIN`` validation F1, else their weights are zero) chosen on validation rows of the
   fit part (``VAL_FRACTION``).
5. Jailbreak head, the same way: jackhhao/jailbreak-classification (1,044 prompts) split 70/30,
   stratified, seed ``SPLIT_SEED``, held-out rows in ``data/jailbreak_split.json`` (never used
   here). Positives: the fit part's jailbreaks and the jailbreak exemplars, each as the whole text
   the heads score; negatives: the fit part's benign persona prompts (whole and in segments) and
   every benign text of the injection pool. The fit part's benign persona prompts are also
   negatives of the injection head ("Act as ..." is an instruction, not an injection).

Every text enters as the spans :func:`certus.sidecar.guardrails.learned.scored_spans` gives, the
ones the sidecar scores.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import numpy.typing as npt
import structlog

from certus.models.adam import Adam
from certus.sidecar.guardrails.learned import (
    CHAR_DIM,
    DATA_DIR,
    DIM,
    FEATURES,
    HASH_DIM,
    HEAD_FILE,
    features,
    scored_spans,
    whole_span,
)

log = structlog.get_logger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_DATA_DIR = REPO_ROOT.parent / "shared" / "data"
DEEPSET_FILE = Path("prompt_injection") / "deepset_train.jsonl"
SQUAD_FILE = Path("squad_v2") / "dev_subset.json"
SPLIT_FILE = DATA_DIR / "injection_split.json"
JAILBREAK_FILE = Path("prompt_injection") / "jackhhao_jailbreak_train.csv"
JAILBREAK_SPLIT_FILE = DATA_DIR / "jailbreak_split.json"
EXEMPLARS_FILE = DATA_DIR / "attack_exemplars.jsonl"
BENIGN_DOCS_FILE = DATA_DIR / "benign_docs.jsonl"
BENIGN_DOCS_SAMPLE = 800
SPLIT_SEED = 20240605
HOLDOUT_FRACTION = 0.3
TRAIN_ARTICLE = "Normans"
# the hand-written exemplars are deliberate boundary cases (benign look-alikes such as "Skip the
# introduction and show me the results"), few against ~1,000 persona prompts: each counts three times
EXEMPLAR_WEIGHT = 3.0
L2_GRID = (1e-5, 3e-5, 1e-4)
EPOCHS = 1200
LEARNING_RATE = 0.01
VAL_FRACTION = 0.2  # of the deepset and jackhhao fit parts: picks l2 and the operating point
OPERATING_P = 0.75  # the validation-chosen threshold becomes this probability
WORDS_WIDTH = FEATURES - CHAR_DIM  # the embedding and word columns (the char grams come last)
# A head uses the char grams only when they raise its best validation F1 by at least this much: about
# one validation item (35 deepset injections, ~60 jailbreaks), so a tie or a one-row wobble keeps the
# smaller feature set
CHAR_MIN_GAIN = 0.01


def sha256_file(path: Path) -> str:
    return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()


def load_jsonl(path: Path) -> list[dict[str, object]]:
    with path.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def stratified_split(labels: Sequence[int], fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """(train, held_out) row indices: per label, a seeded permutation; the first round(fraction*n)
    rows of each label are held out."""
    y = np.asarray(labels)
    rng = np.random.default_rng(seed)
    held: list[int] = []
    for lab in sorted(set(y.tolist())):
        idx = np.flatnonzero(y == lab)
        perm = rng.permutation(idx)
        held.extend(int(i) for i in perm[: int(round(fraction * len(idx)))])
    held_set = set(held)
    return [i for i in range(len(y)) if i not in held_set], sorted(held)


def load_jailbreak_csv(path: Path) -> list[dict[str, object]]:
    """jackhhao rows as ``{"text", "label"}`` (1 = jailbreak)."""
    import csv

    with path.open(encoding="utf-8", newline="") as f:
        return [{"text": r["prompt"], "label": int(r["type"] == "jailbreak")} for r in csv.DictReader(f)]


def write_split(path: Path, rows: list[dict[str, object]], out: Path, dataset: str) -> dict[str, object]:
    train, held = stratified_split([int(r["label"]) for r in rows], HOLDOUT_FRACTION, SPLIT_SEED)  # type: ignore[call-overload]
    split = {
        "dataset": dataset,
        "sha256": sha256_file(path),
        "rows": len(rows),
        "seed": SPLIT_SEED,
        "holdout_fraction": HOLDOUT_FRACTION,
        "stratified_by": "label",
        "held_out": held,
        "train": train,
    }
    out.write_text(json.dumps(split, indent=1) + "\n")
    return split


def build_benign_docs() -> list[str]:
    """Paragraphs of the standard library's docstrings (read with ``ast``, nothing imported),
    80-1000 chars of mostly prose; a seeded sample of ``BENIGN_DOCS_SAMPLE``."""
    import ast
    import random
    import sys
    import sysconfig

    stdlib = Path(sysconfig.get_paths()["stdlib"])
    paras: list[str] = []
    for name in sorted(sys.stdlib_module_names):
        for cand in (stdlib / f"{name}.py", stdlib / name / "__init__.py"):
            if not cand.exists():
                continue
            try:
                tree = ast.parse(cand.read_text(encoding="utf-8"))
            except (SyntaxError, UnicodeDecodeError, ValueError):
                continue
            for node in ast.walk(tree):
                if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                    doc = ast.get_docstring(node)
                    for p in re.split(r"\n\s*\n", doc or ""):
                        p = " ".join(p.split())
                        if 80 <= len(p) <= 1000 and sum(c.isalpha() or c == " " for c in p) / len(p) > 0.85 and not p.startswith((">>>", "-", "*")):
                            paras.append(p)
    paras = sorted(set(paras))
    return random.Random(SPLIT_SEED).sample(paras, min(BENIGN_DOCS_SAMPLE, len(paras)))


def squad_texts(squad_path: Path, article: str) -> tuple[list[str], list[str]]:
    """(paragraphs whole and in segments, questions) of one SQuAD article."""
    data = json.loads(squad_path.read_text())
    segs: list[str] = []
    questions: list[str] = []
    for art in data["data"]:
        if art["title"] != article:
            continue
        for para in art["paragraphs"]:
            ctx = para["context"]
            segs.extend(ctx[s:e] for s, e in scored_spans(ctx))
            questions.extend(qa["question"] for qa in para["qas"])
    return segs, questions


# --- logistic regression ----------------------------------------------------------------------


@dataclass(frozen=True)
class Fit:
    w: npt.NDArray[np.float64]
    b: float


def fit_logreg(
    x: npt.NDArray[np.float64], y: npt.NDArray[np.float64], sw: npt.NDArray[np.float64], l2: float, epochs: int = EPOCHS
) -> Fit:
    """Weighted L2 logistic regression (bias not penalised), full-batch Adam from zero: 4,480
    features are too many for Newton's Hessian, and Adam from a fixed start is deterministic."""
    w = np.zeros(x.shape[1])
    b = np.zeros(1)
    sw = sw / sw.sum()
    opt = Adam([w, b], LEARNING_RATE)
    for _ in range(epochs):
        p = 1.0 / (1.0 + np.exp(-np.clip(x @ w + b[0], -40, 40)))
        gz = sw * (p - y)
        opt.step([w, b], [x.T @ gz + l2 * w, np.array([gz.sum()])])
    return Fit(w, float(b[0]))


def predict(fit: Fit, x: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    p: npt.NDArray[np.float64] = 1.0 / (1.0 + np.exp(-np.clip(x @ fit.w + fit.b, -40, 40)))
    return p


def balanced_weights(y: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """Square root of the class-balancing weights: halfway (in log space) between the pool's
    prior (about 1 attack in 8 texts) and a 50/50 prior, so that p = 0.5-0.7 is a usable operating
    point without inflating every attack-like sentence."""
    pos = y.sum()
    neg = len(y) - pos
    w: npt.NDArray[np.float64] = np.sqrt(np.where(y == 1, len(y) / (2 * pos), len(y) / (2 * neg)))
    return w


def best_threshold(z: npt.NDArray[np.float64], y: npt.NDArray[np.float64]) -> tuple[float, dict[str, float]]:
    """The logit threshold (on a 0.1 grid in [-3, 3]) with the best F1 of ``z >= threshold``."""
    best: tuple[float, float, dict[str, float]] | None = None
    for z0 in np.round(np.arange(-3.0, 3.01, 0.1), 2):
        pred = z >= z0
        tp, fp, fn = int((pred & (y == 1)).sum()), int((pred & (y == 0)).sum()), int((~pred & (y == 1)).sum())
        prec, rec = tp / max(tp + fp, 1), tp / max(tp + fn, 1)
        f1 = 2 * prec * rec / max(prec + rec, 1e-12)
        if best is None or f1 > best[0]:
            best = (f1, float(z0), {"f1": f1, "precision": prec, "recall": rec, "false_positives": fp})
    assert best is not None
    return best[1], best[2]


# --- main -------------------------------------------------------------------------------------


def write_benign_docs() -> None:
    with BENIGN_DOCS_FILE.open("w", encoding="utf-8") as f:
        for t in build_benign_docs():
            f.write(json.dumps({"text": t, "source": "CPython 3.11 stdlib docstring (PSF licence)"}) + "\n")


def train(data_dir: Path, model_dir: Path | None) -> dict[str, object]:
    from certus.models.artifacts import ensure_model
    from certus.models.encoder import OnnxEncoder

    deepset_path, jb_path = data_dir / DEEPSET_FILE, data_dir / JAILBREAK_FILE
    rows = load_jsonl(deepset_path)
    split = write_split(deepset_path, rows, SPLIT_FILE,
                        "deepset/prompt-injections, train split (shared/data/prompt_injection/deepset_train.jsonl)")
    jb_rows = load_jailbreak_csv(jb_path)
    jb_split = write_split(jb_path, jb_rows, JAILBREAK_SPLIT_FILE,
                           "jackhhao/jailbreak-classification, balanced train split "
                           "(shared/data/prompt_injection/jackhhao_jailbreak_train.csv)")
    exemplars = load_jsonl(EXEMPLARS_FILE)
    squad_segs, squad_questions = squad_texts(data_dir / SQUAD_FILE, TRAIN_ARTICLE)
    # validation rows (they pick l2 and the operating point, then join the fit for the final heads)
    rng = np.random.default_rng(SPLIT_SEED + 1)
    deep_val = set(rng.permutation(split["train"])[: int(VAL_FRACTION * len(split["train"]))].tolist())  # type: ignore[arg-type]
    jb_val = set(rng.permutation(jb_split["train"])[: int(VAL_FRACTION * len(jb_split["train"]))].tolist())  # type: ignore[arg-type]

    # (text, injection label or None, jailbreak label or None, group, validation row?); None = not in that head's pool
    pool: list[tuple[str, int | None, int | None, str, bool]] = []
    for i in split["train"]:  # type: ignore[attr-defined]
        lab = int(rows[i]["label"])  # type: ignore[call-overload]
        pool.append((str(rows[i]["text"]), lab, None if lab else 0, "deepset_train", i in deep_val))
    for ex in exemplars:
        lab, kind = int(ex["label"]), str(ex["kind"])  # type: ignore[call-overload]
        text = str(ex["text"])
        pool.append((text, lab, 1 if kind == "jailbreak" else (0 if lab == 0 else None), f"exemplar_{kind}", False))
    for i in jb_split["train"]:  # type: ignore[attr-defined]
        text = str(jb_rows[i]["text"])
        if jb_rows[i]["label"] == 1:
            s, e = whole_span(text)
            pool.append((text[s:e], None, 1, "jackhhao_jailbreak", i in jb_val))
        else:
            for s, e in scored_spans(text) or [(0, len(text))]:
                pool.append((text[s:e], 0, 0, "jackhhao_benign", i in jb_val))
    for t in squad_segs:
        pool.append((t, 0, 0, "squad_segment", False))
    for t in squad_questions:
        pool.append((t, 0, 0, "squad_question", False))
    for d in load_jsonl(BENIGN_DOCS_FILE):
        pool.append((str(d["text"]), 0, 0, "stdlib_docstring", False))

    path = ensure_model(model_dir) if model_dir is not None else ensure_model()
    encoder = OnnxEncoder(path.parent, provider="cpu")

    def featurize(texts: list[str]) -> npt.NDArray[np.float64]:
        return features(encoder.encode(texts), texts).astype(np.float64)

    x_all = featurize([t for t, *_ in pool])
    groups = np.asarray([r[3] for r in pool])
    is_val = np.asarray([r[4] for r in pool])

    # validation items, scored as the sidecar scores a text: the best of its scored spans
    def val_items(items: list[tuple[str, int]]) -> tuple[list[npt.NDArray[np.float64]], npt.NDArray[np.float64]]:
        return [featurize([t[s:e] for s, e in scored_spans(t) or [(0, len(t))]]) for t, _ in items], np.asarray(
            [lab for _, lab in items], dtype=np.float64
        )

    inj_val = [(str(rows[i]["text"]), int(rows[i]["label"])) for i in sorted(deep_val)]  # type: ignore[call-overload]
    inj_val += [(str(jb_rows[i]["text"]), 0) for i in sorted(jb_val) if jb_rows[i]["label"] == 0]
    jbk_val = [(str(jb_rows[i]["text"]), int(jb_rows[i]["label"])) for i in sorted(jb_val)]  # type: ignore[call-overload]

    def fit_head(column: int, val: list[tuple[str, int]]) -> tuple[Fit, dict[str, object]]:
        keep = np.asarray([r[column] is not None for r in pool])
        y = np.asarray([r[column] if r[column] is not None else 0 for r in pool], dtype=np.float64)
        sw = np.zeros(len(pool))
        sw[keep] = balanced_weights(y[keep])
        sw *= np.where(np.char.startswith(groups, "exemplar_"), EXEMPLAR_WEIGHT, 1.0)
        vx, vy = val_items(val)
        fit_rows = keep & ~is_val
        trials: dict[tuple[int, float], tuple[float, dict[str, float]]] = {}
        for width in (WORDS_WIDTH, FEATURES):  # without, then with the char-gram block (the last columns)
            for l2 in L2_GRID:
                fit = fit_logreg(x_all[fit_rows, :width], y[fit_rows], sw[fit_rows], l2)
                z = np.array([float((vxi[:, :width] @ fit.w + fit.b).max()) for vxi in vx])
                trials[(width, l2)] = best_threshold(z, vy)

        def best(width: int) -> tuple[int, float]:
            return max(((width, l2) for l2 in L2_GRID), key=lambda k: trials[k][1]["f1"])

        # the char grams are kept only when they gain at least CHAR_MIN_GAIN validation F1
        with_chars, without = best(FEATURES), best(WORDS_WIDTH)
        gain = trials[with_chars][1]["f1"] - trials[without][1]["f1"]
        width, l2 = with_chars if gain >= CHAR_MIN_GAIN else without
        z0, val_scores = trials[(width, l2)]
        final = fit_logreg(x_all[keep, :width], y[keep], sw[keep], l2)
        # the validation operating point (logit z0) becomes probability OPERATING_P; a head without
        # the char grams has zero weights on them
        w_full = np.zeros(FEATURES)
        w_full[:width] = final.w
        final = Fit(w_full, final.b - z0 + float(np.log(OPERATING_P / (1 - OPERATING_P))))
        g = groups[keep]
        info = {
            "exemplar_weight": EXEMPLAR_WEIGHT,
            "pool": {grp: int((g == grp).sum()) for grp in sorted(set(g.tolist()))},
            "positives": int(y[keep].sum()),
            "negatives": int(keep.sum() - y[keep].sum()),
            "char_grams": width == FEATURES,
            "char_gram_validation_gain": gain,
            "l2": l2,
            "epochs": EPOCHS,
            "validation_items": len(val),
            "validation": {
                f"{'words+chars' if w == FEATURES else 'words'} l2={k}": {"threshold_logit": v[0], **v[1]}
                for (w, k), v in trials.items()
            },
            "operating_logit": z0,
            "operating_probability": OPERATING_P,
        }
        return final, info

    fit, inj_info = fit_head(1, inj_val)
    jb_fit, jb_info = fit_head(2, jbk_val)
    meta = {
        "trained_by": "python -m certus.sidecar.guardrails.train_injection",
        "encoder": "all-MiniLM-L6-v2 ONNX (models.encoder.OnnxEncoder, fp32, CPU)",
        "features": f"MiniLM embedding ({DIM}) + hashed word uni/bigrams ({HASH_DIM}) + hashed char 3-5-grams ({CHAR_DIM})",
        "split_file": SPLIT_FILE.name,
        "jailbreak_split_file": JAILBREAK_SPLIT_FILE.name,
        "split_seed": SPLIT_SEED,
        "deepset_sha256": split["sha256"],
        "jackhhao_sha256": jb_split["sha256"],
        **inj_info,
        "jailbreak": jb_info,
    }
    np.savez(
        HEAD_FILE,
        w=fit.w.astype(np.float32),
        b=np.float64(fit.b),
        jailbreak_w=jb_fit.w.astype(np.float32),
        jailbreak_b=np.float64(jb_fit.b),
        meta=np.array(json.dumps(meta, sort_keys=True)),
    )
    assert fit.w.shape == (FEATURES,) and jb_fit.w.shape == (FEATURES,)
    return meta


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m certus.sidecar.guardrails.train_injection", description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR, help="shared data folder (default: %(default)s)")
    ap.add_argument("--model-dir", type=Path, default=None, help="ONNX model dir (default: ModelConfig().model_dir)")
    ap.add_argument("--rebuild-benign-docs", action="store_true", help="re-sample data/benign_docs.jsonl from this Python's stdlib")
    args = ap.parse_args(argv)
    if args.rebuild_benign_docs or not BENIGN_DOCS_FILE.exists():
        write_benign_docs()
    meta = train(args.data_dir, args.model_dir)
    print(json.dumps(meta, indent=1, sort_keys=True))
    print(f"wrote {HEAD_FILE}, {SPLIT_FILE} and {JAILBREAK_SPLIT_FILE}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
