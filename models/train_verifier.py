"""Train the claim verifier and the question-fit model from ``../shared/data`` (reproducible).

``certus-sidecar models train-verifier [--data DIR] [--out FILE]``. Runs in the serving environment
(NumPy only: the features are the scoring stage's own, computed by the same code that serves).

- Claim verifier (``faithfulness``): a 21 -> 16 -> 1 tanh perceptron over
  :data:`certus.sidecar.verifier.CLAIM_FEATURES`. Labels are per answer (HaluEval: right vs
  hallucinated), so it is trained as multiple-instance learning: an answer's logit is its least
  supported claim's logit, and the loss is the binary cross-entropy of that. Full-batch Adam, fixed
  seed; each source (QA, dialogue, summarization) weighs the same. Fit on the "train" parts; the
  epoch count is the one with the best mean AUC on the "val" parts (see
  ``certus.sidecar.toolkit.validate.part_of``). The "test" parts are never read here.
- Quotes: serving gives a claim the context states word for word the token alignment of an exact
  match (``Scorer.evidence``, ``verifier.quoted``). The perceptron is fit on the alignment as
  computed, without that credit. Both ways were compared on the val parts (before the chunks'
  figures were also read with glued words separated, which left the val AUCs within 0.001): with
  the credit applied at serving only, qa 0.935 -> 0.996, dialogue 0.688 and summarization 0.892
  unchanged; also fit with it, qa 0.996 but dialogue 0.665 and summarization 0.876.
- Question fit: L2-regularised logistic regression (Newton's method) over
  :data:`certus.sidecar.verifier.QUESTION_FEATURES` on SQuAD's training article (gold answer vs the
  gold answer of another question on the same passage); the L2 strength is the one of
  :data:`QUESTION_L2_CHOICES` with the best 5-fold cross-validated AUC on that article (folds by
  question id, so a question's two answers share a fold). Other articles are never read here.

The weights file records the seed, the sha256 of every data file read and the fit/val figures.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from certus.models.adam import Adam
from certus.sidecar import verifier as V
from certus.sidecar.domain import EvaluateInput
from certus.sidecar.toolkit import roc
from certus.sidecar.toolkit import validate as D

SEED = 20261205
HIDDEN = 16
MAX_EPOCHS = 3000
EVAL_EVERY = 50
LEARNING_RATE = 0.01
L2 = 1e-4
QUESTION_L2_CHOICES = (1.0, 10.0, 100.0)
QUESTION_FOLDS = 5
FILES = {
    "qa_train": "halueval/qa_train.jsonl",
    "dialogue": "halueval/dialogue_dev.jsonl",
    "summarization": "halueval/summarization_dev.jsonl",
    "squad": "squad_v2/dev_subset.json",
}


def default_out() -> Path:
    return Path(__file__).resolve().parent / "verifier.json"


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class FeatureSource:
    """Claim feature rows of examples, through the serving Scorer and encoder."""

    def __init__(self, encoder: object) -> None:
        from certus.sidecar.config import ScoringConfig
        from certus.sidecar.scoring import Scorer

        self.encoder = encoder
        self.scorer = Scorer(ScoringConfig(), model=V.Verifier.untrained())

    def claim_rows(self, examples: Sequence[D.Example], batch: int = 256) -> tuple[np.ndarray, np.ndarray]:
        """(rows float64[n_claims, F], answer index int64[n_claims])."""
        rows: list[np.ndarray] = []
        owner: list[np.ndarray] = []
        for b in range(0, len(examples), batch):
            part = examples[b : b + batch]
            inputs = [
                EvaluateInput(workspace_id="train", query=e.query, response=e.answer, context=D.context_of(e.passage))
                for e in part
            ]
            layouts = [self.scorer.layout(i) for i in inputs]
            texts = sorted({t for lay in layouts for t in lay.texts})
            index = {t: k for k, t in enumerate(texts)}
            vecs, tokens = self.encoder.encode_tokens(texts)
            for k, (inp, lay) in enumerate(zip(inputs, layouts)):
                at = [index[t] for t in lay.texts]
                v, ts = vecs[at], [tokens[i] for i in at]
                ctx = self.scorer.request_context(inp, lay, v, ts)
                ev = self.scorer.evidence(
                    inp.response,
                    lay.claim_spans,
                    np.ascontiguousarray(v[lay.claims]),
                    ts[lay.claims],
                    ctx,
                    credit_quotes=False,
                )
                rows.append(ev.rows)
                owner.append(np.full(len(ev.rows), b + k, dtype=np.int64))
        return np.concatenate(rows), np.concatenate(owner)

    def question_rows(self, examples: Sequence[D.Example]) -> np.ndarray:
        """float64[n, len(QUESTION_FEATURES)]: each example's question-fit row, from the encoder's
        token states of its query and chunks (as the scoring stage reads them)."""
        contexts = [D.context_of(e.passage) for e in examples]
        texts = sorted({e.query for e in examples} | {c for ctx in contexts for c in ctx})
        index = {t: k for k, t in enumerate(texts)}
        _, tokens = self.encoder.encode_tokens(texts)
        rows = []
        for e, ctx in zip(examples, contexts):
            prepared = V.question_context(e.query, ctx, tokens[index[e.query]], [tokens[index[c]] for c in ctx])
            rows.append(V.question_features(e.answer, prepared))
        return np.array(rows)


class Mil:
    """The perceptron, its MIL-min loss and full-batch Adam."""

    def __init__(self, n_features: int, seed: int, sign: np.ndarray) -> None:
        rng = np.random.default_rng(seed)
        self.sign = sign
        self.w1 = rng.normal(0.0, 1.0 / np.sqrt(n_features), (n_features, HIDDEN))
        self.b1 = np.zeros(HIDDEN)
        self.w2 = rng.normal(0.0, 1.0 / np.sqrt(HIDDEN), HIDDEN)
        self.b2 = np.zeros(1)
        self.project()
        self.params = [self.w1, self.b1, self.w2, self.b2]
        self.opt = Adam(self.params, LEARNING_RATE)

    def claim_logits(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        h = np.tanh(x @ self.w1 + self.b1)
        return h @ self.w2 + self.b2[0], h

    @staticmethod
    def answer_logits(z: np.ndarray, owner: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
        """Each answer's least-supported claim: (logit per answer, index of that claim)."""
        order = np.lexsort((z, owner))  # by answer, then by logit
        first = np.searchsorted(owner[order], np.arange(n))
        arg = order[first]
        return z[arg], arg

    def step(self, x: np.ndarray, owner: np.ndarray, y: np.ndarray, w: np.ndarray) -> float:
        z, h = self.claim_logits(x)
        za, arg = self.answer_logits(z, owner, len(y))
        p = 1.0 / (1.0 + np.exp(-za))
        loss = float(-(w * (y * np.log(p + 1e-12) + (1 - y) * np.log(1 - p + 1e-12))).sum())
        dz = np.zeros_like(z)
        dz[arg] = w * (p - y)
        dh = np.outer(dz, self.w2) * (1.0 - h**2)
        grads = [x.T @ dh + L2 * self.w1, dh.sum(0), h.T @ dz + L2 * self.w2, np.array([dz.sum()])]
        self.opt.step(self.params, grads)
        self.project()
        return loss

    def project(self) -> None:
        """Keep P(supported) monotone in the evidence features: non-decreasing in those with sign +1
        (more support), non-increasing in those with sign -1 (more missing), whatever the others."""
        np.maximum(self.w2, 0.0, out=self.w2)
        for i, s in enumerate(self.sign):
            if s:
                self.w1[i] = s * np.maximum(s * self.w1[i], 0.0)

    def snapshot(self) -> list[np.ndarray]:
        return [p.copy() for p in self.params]


def fit_logistic(x: np.ndarray, y: np.ndarray, l2: float) -> tuple[np.ndarray, float]:
    """L2-regularised logistic regression by Newton's method (intercept not penalised)."""
    a = np.hstack([x, np.ones((len(x), 1))])
    w = np.zeros(a.shape[1])
    reg = np.full(a.shape[1], l2)
    reg[-1] = 0.0
    for _ in range(50):
        p = 1.0 / (1.0 + np.exp(-a @ w))
        g = a.T @ (p - y) + reg * w
        hess = (a * (p * (1 - p))[:, None]).T @ a + np.diag(reg) + 1e-9 * np.eye(len(w))
        delta = np.linalg.solve(hess, g)
        w -= delta
        if np.abs(delta).max() < 1e-8:
            break
    return w[:-1], float(w[-1])


def question_fold(key: str) -> int:
    return hashlib.sha256(f"certus-question-fold:{key}".encode()).digest()[0] % QUESTION_FOLDS


def fit_question(x: np.ndarray, y: np.ndarray, folds: np.ndarray) -> tuple[float, dict[float, float]]:
    """The L2 strength of :data:`QUESTION_L2_CHOICES` with the best cross-validated AUC (on a tie,
    the stronger), and each choice's AUC (out-of-fold scores pooled)."""
    aucs: dict[float, float] = {}
    for l2 in QUESTION_L2_CHOICES:
        scores = np.zeros(len(y))
        for f in range(QUESTION_FOLDS):
            fit, held = folds != f, folds == f
            mean, scale = _standardise(x[fit])
            w, b = fit_logistic((x[fit] - mean) / scale, y[fit], l2)
            scores[held] = ((x[held] - mean) / scale) @ w + b
        aucs[l2] = roc.roc_auc(scores, y)
    return max(QUESTION_L2_CHOICES, key=lambda l2: (aucs[l2], l2)), aucs


def _standardise(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mean = x.mean(0)
    scale = x.std(0)
    scale[scale < 1e-6] = 1.0
    return mean, scale


def train(data: Path, encoder: object, log: object = print) -> dict:
    t0 = time.perf_counter()
    src = FeatureSource(encoder)
    sets = {
        "qa": (D.halueval_train_examples(data / FILES["qa_train"], "train"),
               D.halueval_train_examples(data / FILES["qa_train"], "val")),
        "dialogue": (D.halueval_dialogue_examples(data / FILES["dialogue"], "train"),
                     D.halueval_dialogue_examples(data / FILES["dialogue"], "val")),
        "summarization": (D.halueval_summarization_examples(data / FILES["summarization"], "train"),
                          D.halueval_summarization_examples(data / FILES["summarization"], "val")),
    }
    # edits of the train (val) parts' own passages: supported sentences of any length, and fluent
    # unsupported ones (another passage, a changed figure, a swapped name)
    train_sources = [e for tr, _ in sets.values() for e in tr if e.label == 1]
    val_sources = [e for _, va in sets.values() for e in va if e.label == 1]
    sets["synthetic"] = (D.synthetic_examples(train_sources, SEED), D.synthetic_examples(val_sources, SEED + 1))
    parts: dict[str, dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]] = {"train": {}, "val": {}}
    for name, (tr, va) in sets.items():
        for part, ex in (("train", tr), ("val", va)):
            rows, owner = src.claim_rows(ex)
            parts[part][name] = (rows, owner, np.array([e.label for e in ex], dtype=np.float64))
            log(f"features {name}/{part}: {len(ex)} answers, {len(rows)} claims ({time.perf_counter() - t0:.0f}s)")

    def stack(part: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, list[tuple[str, slice]]]:
        xs, owners, ys, ws, spans = [], [], [], [], []
        offset = 0
        answers = 0
        for name, (rows, owner, y) in parts[part].items():
            xs.append(rows)
            owners.append(owner + offset)
            ys.append(y)
            ws.append(np.full(len(y), 1.0 / len(y)))
            spans.append((name, slice(answers, answers + len(y))))
            offset += len(y)
            answers += len(y)
        return np.concatenate(xs), np.concatenate(owners), np.concatenate(ys), np.concatenate(ws), spans

    xtr, otr, ytr, wtr, _ = stack("train")
    xva, ova, yva, _, va_spans = stack("val")
    mean, scale = _standardise(xtr)
    ztr, zva = (xtr - mean) / scale, (xva - mean) / scale
    model = Mil(xtr.shape[1], SEED, np.array([V.MONOTONE.get(f, 0) for f in V.CLAIM_FEATURES]))
    best: tuple[float, int, list[np.ndarray], dict[str, float]] = (-1.0, 0, model.snapshot(), {})
    for epoch in range(1, MAX_EPOCHS + 1):
        model.step(ztr, otr, ytr, wtr / wtr.sum() * len(sets))
        if epoch % EVAL_EVERY == 0:
            z, _ = model.claim_logits(zva)
            za, _ = Mil.answer_logits(z, ova, len(yva))
            aucs = {name: roc.roc_auc(za[s], yva[s]) for name, s in va_spans}
            mean_auc = float(np.mean(list(aucs.values())))
            if mean_auc > best[0]:
                best = (mean_auc, epoch, model.snapshot(), aucs)
    _, epoch, (w1, b1, w2, b2), val_aucs = best
    log(f"claim verifier: best epoch {epoch}, val AUC " + ", ".join(f"{k} {v:.3f}" for k, v in val_aucs.items()))

    squad = D.squad_article_examples(data / FILES["squad"], train=True)
    qx = src.question_rows(squad)
    qy = np.array([e.label for e in squad], dtype=np.float64)
    q_l2, q_cv = fit_question(qx, qy, np.array([question_fold(e.key) for e in squad]))
    qmean, qscale = _standardise(qx)
    qw, qb = fit_logistic((qx - qmean) / qscale, qy, q_l2)
    q_auc = roc.roc_auc(((qx - qmean) / qscale) @ qw + qb, qy)
    log(
        f"question fit: {len(squad)} answers (SQuAD {', '.join(sorted(D.SQUAD_TRAIN_ARTICLES))}), "
        f"cross-validated AUC by L2 {', '.join(f'{k:g}: {v:.3f}' for k, v in q_cv.items())}; "
        f"chose L2 {q_l2:g}, fit AUC {q_auc:.3f}"
    )

    def r(a: np.ndarray) -> list:
        return np.round(a, 8).tolist()

    return {
        "format": "certus.verifier/v1",
        "claim": {
            "features": list(V.CLAIM_FEATURES),
            "mean": r(mean), "scale": r(scale), "w1": r(w1), "b1": r(b1), "w2": r(w2), "b2": round(float(b2[0]), 8),
        },
        "question": {
            "features": list(V.QUESTION_FEATURES), "mean": r(qmean), "scale": r(qscale), "w": r(qw), "b": round(qb, 8),
        },
        "meta": {
            "seed": SEED,
            "trainer": "certus.models.train_verifier",
            "data_sha256": {k: sha256_file(data / v) for k, v in FILES.items()},
            "claim_train_answers": {k: int(len(v[2])) for k, v in parts["train"].items()},
            "claim_val_answers": {k: int(len(v[2])) for k, v in parts["val"].items()},
            "claim_epochs": epoch,
            "claim_val_auc": {k: round(v, 4) for k, v in val_aucs.items()},
            "question_train_answers": len(squad),
            "question_l2": q_l2,
            "question_cv_auc": {f"{k:g}": round(v, 4) for k, v in q_cv.items()},
            "question_fit_auc": round(q_auc, 4),
            "seconds": round(time.perf_counter() - t0, 1),
        },
    }


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "train-verifier",
        help="train the claim verifier (faithfulness) and question fit from ../shared/data (reproducible)",
    )
    p.add_argument("--data", type=Path, default=Path("../shared/data"),
                   help="the shared data dir (default ../shared/data)")
    p.add_argument("--out", type=Path, default=None,
                   help="weights file (default: the shipped certus/models/verifier.json)")
    p.set_defaults(func=_main)


def _main(args: argparse.Namespace) -> int:
    from certus.sidecar.config import load
    from certus.sidecar.toolkit.engine import build_encoder

    missing = [str(args.data / f) for f in FILES.values() if not (args.data / f).is_file()]
    if missing:
        print(f"train-verifier: data not found: {', '.join(missing)} (see ../shared/data/README.md)", file=sys.stderr)
        return 2
    encoder = build_encoder(load(getattr(args, "config", None)))
    weights = train(args.data, encoder, log=lambda m: print(m, flush=True))
    out = args.out or default_out()
    out.write_text(json.dumps(weights, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {out} ({out.stat().st_size} bytes)")
    return 0
