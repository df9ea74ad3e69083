"""Train the prompt-attack head shipped in ``sidecar/guardrails/data/attack_head.npz``.

    python -m certus.sidecar.guardrails.train_injection [--data-dir ../shared/data] [--model-dir DIR]

Reproducible (fixed seed, deterministic Newton iterations, CPU embeddings):

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
4. L2-regularised logistic regression (square-root class-balancing weights), lambda chosen by 5-fold
   stratified cross-validation on the pool (mean log-loss); fitted by Newton's method.
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

from certus.sidecar.guardrails.learned import DATA_DIR, DIM, HEAD_FILE, scored_spans, whole_span

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
LAMBDAS = (1e-6, 3e-6, 1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 0.1)


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


def fit_logreg(x: npt.NDArray[np.float64], y: npt.NDArray[np.float64], sw: npt.NDArray[np.float64], lam: float, iters: int = 50) -> Fit:
    """Weighted L2 logistic regression by Newton's method (bias not penalised)."""
    n, d = x.shape
    xa = np.hstack([x, np.ones((n, 1))])
    theta = np.zeros(d + 1)
    reg = np.full(d + 1, lam)
    reg[-1] = 0.0
    wsum = sw.sum()
    for _ in range(iters):
        p = 1.0 / (1.0 + np.exp(-np.clip(xa @ theta, -40, 40)))
        grad = xa.T @ (sw * (p - y)) / wsum + reg * theta
        h = (xa * (sw * p * (1 - p))[:, None]).T @ xa / wsum + np.diag(reg) + 1e-9 * np.eye(d + 1)
        step = np.linalg.solve(h, grad)
        theta -= step
        if np.abs(step).max() < 1e-8:
            break
    return Fit(theta[:-1], float(theta[-1]))


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


def cross_validate(x: npt.NDArray[np.float64], y: npt.NDArray[np.float64], lam: float, folds: int = 5, seed: int = 7) -> dict[str, float]:
    rng = np.random.default_rng(seed)
    fold_of = np.empty(len(y), dtype=int)
    for lab in (0, 1):
        idx = rng.permutation(np.flatnonzero(y == lab))
        fold_of[idx] = np.arange(len(idx)) % folds
    losses, tp, fp, fn = [], 0, 0, 0
    for k in range(folds):
        tr, te = fold_of != k, fold_of == k
        fit = fit_logreg(x[tr], y[tr], balanced_weights(y[tr]), lam)
        p = np.clip(predict(fit, x[te]), 1e-7, 1 - 1e-7)
        w = balanced_weights(y[te])
        losses.append(float(-(w * (y[te] * np.log(p) + (1 - y[te]) * np.log(1 - p))).sum() / w.sum()))
        pred = p >= 0.5
        tp += int((pred & (y[te] == 1)).sum())
        fp += int((pred & (y[te] == 0)).sum())
        fn += int((~pred & (y[te] == 1)).sum())
    prec = tp / max(tp + fp, 1)
    rec = tp / max(tp + fn, 1)
    return {"log_loss": float(np.mean(losses)), "precision": prec, "recall": rec, "f1": 2 * prec * rec / max(prec + rec, 1e-12)}


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

    # (text, injection label or None, jailbreak label or None, group); None = not in that head's pool
    pool: list[tuple[str, int | None, int | None, str]] = []
    for i in split["train"]:  # type: ignore[attr-defined]
        lab = int(rows[i]["label"])  # type: ignore[call-overload]
        pool.append((str(rows[i]["text"]), lab, None if lab else 0, "deepset_train"))
    for ex in exemplars:
        lab, kind = int(ex["label"]), str(ex["kind"])  # type: ignore[call-overload]
        text = str(ex["text"])
        pool.append((text, lab, 1 if kind == "jailbreak" else (0 if lab == 0 else None), f"exemplar_{kind}"))
    for i in jb_split["train"]:  # type: ignore[attr-defined]
        text = str(jb_rows[i]["text"])
        if jb_rows[i]["label"] == 1:
            s, e = whole_span(text)
            pool.append((text[s:e], None, 1, "jackhhao_jailbreak"))
        else:
            for s, e in scored_spans(text) or [(0, len(text))]:
                pool.append((text[s:e], 0, 0, "jackhhao_benign"))
    for t in squad_segs:
        pool.append((t, 0, 0, "squad_segment"))
    for t in squad_questions:
        pool.append((t, 0, 0, "squad_question"))
    for d in load_jsonl(BENIGN_DOCS_FILE):
        pool.append((str(d["text"]), 0, 0, "stdlib_docstring"))

    path = ensure_model(model_dir) if model_dir is not None else ensure_model()
    encoder = OnnxEncoder(path.parent, provider="cpu")
    emb = encoder.encode([t for t, *_ in pool]).astype(np.float64)
    groups = np.asarray([g for *_, g in pool])

    def fit_head(column: int) -> tuple[Fit, dict[str, object]]:
        keep = np.asarray([r[column] is not None for r in pool])
        x, y = emb[keep], np.asarray([r[column] for r in pool if r[column] is not None], dtype=np.float64)
        cv = {lam: cross_validate(x, y, lam) for lam in LAMBDAS}
        best = min(LAMBDAS, key=lambda lam: cv[lam]["log_loss"])
        g = groups[keep]
        info = {
            "exemplar_weight": EXEMPLAR_WEIGHT,
            "pool": {grp: int((g == grp).sum()) for grp in sorted(set(g.tolist()))},
            "positives": int(y.sum()),
            "negatives": int(len(y) - y.sum()),
            "lambda": best,
            "cv": {str(k): v for k, v in cv.items()},
        }
        sw = balanced_weights(y) * np.where(np.char.startswith(g, "exemplar_"), EXEMPLAR_WEIGHT, 1.0)
        return fit_logreg(x, y, sw, best), info

    fit, inj_info = fit_head(1)
    jb_fit, jb_info = fit_head(2)
    meta = {
        "trained_by": "python -m certus.sidecar.guardrails.train_injection",
        "encoder": "all-MiniLM-L6-v2 ONNX (models.encoder.OnnxEncoder, fp32, CPU)",
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
    assert fit.w.shape == (DIM,) and jb_fit.w.shape == (DIM,)
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
