"""Reproduce CERT's validation methodology with the sidecar's own scoring.

Two labelled sets, each scored as Evaluate would score ``(query, response, [passage])``:

**SQuAD v2** (``squad_v2/dev_subset.json``): for every answerable question, the *positive* is its
first gold answer; the *negative* is a wrong answer to the same question drawn from the same
passage — the first gold answer of the next answerable question of that paragraph (in file order,
wrapping around) whose text differs from every gold answer of this question (neither contains the
other, case-insensitive); when the paragraph has none, the first ``plausible_answer`` of one of its
unanswerable questions that differs likewise. Questions with no such wrong answer are left out.
So there is one negative per positive, and both are spans of the passage the grader sees.

``squad_v2_other_passage`` (on request, ``--dataset``) is a contrast set: the negative is a gold
answer of a question on the next paragraph that does not occur in this passage — ungrounded, like a
hallucination — to show how much the figure depends on how negatives are built.

**HaluEval QA** (``halueval/qa_dev.jsonl``): per row, ``right_answer`` is the positive and
``hallucinated_answer`` the negative, both against the row's ``knowledge``.

Reported per metric (``confidence`` = CERT's score, ``faithfulness``, and for context the parts
``semantic_similarity``, ``grounding`` and the query-aware ``answer_relevancy``): ROC AUC and the
separation of the two score distributions (Cohen's d: difference of means in pooled standard
deviations) on all pairs; the best-accuracy threshold over all pairs (in-sample, as CERT reports
it); and the honest figure — a threshold tuned for accuracy on the *tune* half and the accuracy it
gets on the *test* half. The halves are fixed: an item (a SQuAD question with its two answers, a
HaluEval row with its two answers) is in the tune half when the first byte of
``sha256("certus-split-v1:" + key)`` is even, key = the SQuAD question id or ``halueval:<row>``.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from certus.sidecar import verifier
from certus.sidecar.config import Config
from certus.sidecar.domain import EvaluateInput
from certus.sidecar.toolkit import roc
from certus.sidecar.toolkit.engine import OfflineScorer
from certus.sidecar.toolkit.progress import Progress

REPORTED_METRICS = (
    "confidence",
    "faithfulness",
    "question_fit",
    "context_precision",
    "semantic_similarity",
    "grounding",
    "answer_relevancy",
)
# Baselines measured in the same run, next to the metrics:
# - faithfulness_v0: the faithfulness formula before the learned verifier (share of claims whose best
#   chunk gives 0.2 * cosine + 0.8 * grounding * numeric >= 0.75), from the same claims;
# - token_overlap: share of the answer's lower-cased content words (stop words out) found in the context;
# - shorter_answer: minus the answer's word count (HaluEval's hallucinated answers run longer);
# - quote_or_overlap: 1 + token_overlap when the whole answer is a verbatim quote of the context
#   (``verifier.quoted``, which faithfulness also credits), else token_overlap: what the quote rule
#   alone would buy.
BASELINES = ("faithfulness_v0", "token_overlap", "shorter_answer", "quote_or_overlap")
CERT_CLAIM = {"dataset": "SQuAD v2", "roc_auc": 0.961, "accuracy": 0.953, "threshold": 0.46, "separation_sigma": 0.247}
VALIDATION_FORMAT = "certus.validation/v1"
DATASETS = (
    "squad_v2",
    "halueval",
    "halueval_dialogue",
    "halueval_summarization",
    "squad_v2_heldout",
    "squad_v2_other_passage",
)
DEFAULT_DATASETS = DATASETS[:5]


@dataclass(frozen=True)
class Example:
    key: str  # split key (question id / row)
    query: str
    answer: str
    passage: str
    label: int  # 1 correct, 0 incorrect
    kind: str  # how the answer was made: gold | other_question | plausible | right | hallucinated


@dataclass(frozen=True)
class MetricReport:
    metric: str
    n: int
    auc: float
    cohens_d: float
    mean_correct: float
    mean_incorrect: float
    best_threshold_all: float
    best_accuracy_all: float  # in-sample (threshold chosen on the same pairs)
    tuned_threshold: float  # on the tune half
    test_accuracy: float  # of that threshold on the test half
    test_auc: float | None


@dataclass(frozen=True)
class DatasetReport:
    name: str
    source: str
    examples: int
    positives: int
    negatives: int
    negatives_by_kind: dict[str, int]
    tune_examples: int
    test_examples: int
    metrics: list[MetricReport] = field(default_factory=list)

    def metric(self, name: str) -> MetricReport:
        for m in self.metrics:
            if m.metric == name:
                return m
        raise KeyError(name)


# -- datasets ---------------------------------------------------------------------------------------


def _norm(s: str) -> str:
    return " ".join(s.lower().split()).strip(" .,;:!?\"'")


def _differs(candidate: str, golds: Iterable[str]) -> bool:
    c = _norm(candidate)
    if not c:
        return False
    for g in golds:
        n = _norm(g)
        if not n or c == n or c in n or n in c:
            return False
    return True


def squad_examples(path: str | Path, limit: int | None = None) -> list[Example]:
    """Pairs (gold answer, wrong answer from the same passage) per answerable question."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    out: list[Example] = []
    questions = 0
    for article in data["data"]:
        for para in article["paragraphs"]:
            passage = para["context"]
            answerable = [q for q in para["qas"] if not q.get("is_impossible") and q.get("answers")]
            plausible = [
                q["plausible_answers"][0]["text"]
                for q in para["qas"]
                if q.get("is_impossible") and q.get("plausible_answers")
            ]
            for i, q in enumerate(answerable):
                if limit is not None and questions >= limit:
                    return out
                golds = [a["text"] for a in q["answers"]]
                wrong, kind = None, ""
                for step in range(1, len(answerable)):
                    other = answerable[(i + step) % len(answerable)]
                    cand = other["answers"][0]["text"]
                    if _differs(cand, golds):
                        wrong, kind = cand, "other_question"
                        break
                if wrong is None:
                    for cand in plausible:
                        if _differs(cand, golds):
                            wrong, kind = cand, "plausible"
                            break
                if wrong is None:
                    continue
                questions += 1
                out.append(Example(q["id"], q["question"], golds[0], passage, 1, "gold"))
                out.append(Example(q["id"], q["question"], wrong, passage, 0, kind))
    return out


def squad_other_passage_examples(path: str | Path, limit: int | None = None) -> list[Example]:
    """A contrast set (not the README's method): the negative is the first gold answer of a question
    on the *next paragraph* (file order, wrapping) that does not occur in this passage at all —
    an answer not grounded in the passage, like a hallucination, instead of a wrong span of it."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    paras = [p for a in data["data"] for p in a["paragraphs"]]
    out: list[Example] = []
    questions = 0
    for pi, para in enumerate(paras):
        passage = para["context"]
        low = passage.lower()
        for q in para["qas"]:
            if q.get("is_impossible") or not q.get("answers"):
                continue
            if limit is not None and questions >= limit:
                return out
            golds = [a["text"] for a in q["answers"]]
            wrong = None
            for step in range(1, len(paras)):
                other = paras[(pi + step) % len(paras)]
                for oq in other["qas"]:
                    if oq.get("is_impossible") or not oq.get("answers"):
                        continue
                    cand = oq["answers"][0]["text"]
                    if _differs(cand, golds) and cand.lower() not in low:
                        wrong = cand
                        break
                if wrong is not None:
                    break
            if wrong is None:
                continue
            questions += 1
            out.append(Example(q["id"], q["question"], golds[0], passage, 1, "gold"))
            out.append(Example(q["id"], q["question"], wrong, passage, 0, "other_passage"))
    return out


# -- the verifier's parts ---------------------------------------------------------------------------
# The learned verifier (certus.sidecar.verifier) is fit on "train", selected on "val", and reported on
# "test" only: HaluEval qa_train.jsonl rows are train/val (80/20), qa_dev.jsonl is all test; dialogue
# and summarization rows are 60/20/20; SQuAD's "Normans" article is train, every other article test.
# A row's part is a function of its own key, so it never depends on file order.
VERIFIER_SALT = "certus-verifier-v1"
SQUAD_TRAIN_ARTICLES = frozenset({"Normans"})
CHUNK_CHARS = 1200


def part_of(key: str, train: float, val: float) -> str:
    x = hashlib.sha256(f"{VERIFIER_SALT}:{key}".encode()).digest()[0] / 256.0
    return "train" if x < train else "val" if x < train + val else "test"


def context_of(passage: str) -> tuple[str, ...]:
    """A passage as a retriever would hand it over: chunks of at most ~CHUNK_CHARS characters cut
    at sentence ends (a passage that fits is one chunk)."""
    if len(passage) <= CHUNK_CHARS:
        return (passage,)
    from certus import kernels

    chunks: list[str] = []
    start = end = 0
    for s, e in kernels.split_sentences(passage):
        if e - start > CHUNK_CHARS and end > start:
            chunks.append(passage[start:end].strip())
            start = s
        end = e
    if end > start:
        chunks.append(passage[start:end].strip())
    return tuple(c for c in chunks if c) or (passage[:CHUNK_CHARS],)


def halueval_dialogue_examples(path: str | Path, part: str | None = "test") -> list[Example]:
    out: list[Example] = []
    with Path(path).open(encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            r = json.loads(line)
            key = "dialogue:" + hashlib.sha256(r["dialogue_history"].encode()).hexdigest()[:16]
            if part is not None and part_of(key, 0.6, 0.2) != part:
                continue
            q, k = r["dialogue_history"], r["knowledge"]
            out.append(Example(key, q, r["right_response"], k, 1, "right"))
            out.append(Example(key, q, r["hallucinated_response"], k, 0, "hallucinated"))
    return out


def halueval_summarization_examples(path: str | Path, part: str | None = "test") -> list[Example]:
    out: list[Example] = []
    with Path(path).open(encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            r = json.loads(line)
            key = "summarization:" + hashlib.sha256(r["document"].encode()).hexdigest()[:16]
            if part is not None and part_of(key, 0.6, 0.2) != part:
                continue
            out.append(Example(key, "", r["right_summary"], r["document"], 1, "right"))
            out.append(Example(key, "", r["hallucinated_summary"], r["document"], 0, "hallucinated"))
    return out


def halueval_train_examples(path: str | Path, part: str) -> list[Example]:
    """qa_train.jsonl rows of one part (train / val)."""
    out = []
    for e in halueval_examples(path, key_prefix="qa_train"):
        if part_of(e.key, 0.8, 0.2) == part:
            out.append(e)
    return out


def squad_article_examples(path: str | Path, train: bool) -> list[Example]:
    """``squad_examples`` of the training article(s) (train=True) or of every other one."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    ids = {
        q["id"]
        for a in data["data"]
        if (a["title"] in SQUAD_TRAIN_ARTICLES) == train
        for p in a["paragraphs"]
        for q in p["qas"]
    }
    return [e for e in squad_examples(path) if e.key in ids]


_NUMBER = re.compile(r"\d+(?:[.,]\d+)?")
_CAPITAL = re.compile(r"(?<=\s)[A-Z][a-z]{2,}")


def _changed_number(m: re.Match[str]) -> str:
    digits = m.group(0).replace(",", "")
    value = float(digits)
    new = value * 3 + 7 if value < 1000 or value > 2100 else value + 13  # years move by 13
    return f"{new:g}" if "." in digits else str(int(new))


def synthetic_examples(sources: list[Example], seed: int, per_kind: int | None = None) -> list[Example]:
    """FactCC-style edits of the sources' own passages, one sentence per answer (label 1 = supported):

    - ``copied``: a sentence of the passage, verbatim (supported, however long);
    - ``other_passage``: a sentence of another source's passage (fluent, on no evidence);
    - ``number_changed``: a sentence of the passage with one figure changed;
    - ``entity_swapped``: a sentence of the passage with one capitalised word replaced by a
      capitalised word of another passage.

    The query is the source's own. Built from whichever part the sources come from, so the
    verifier trains on edits of training passages and is reported on edits of held-out ones."""
    from certus import kernels

    rng = np.random.default_rng(seed)
    passages = sorted({e.passage for e in sources})
    queries = {}
    for e in sources:
        queries.setdefault(e.passage, e.query)
    sentences = []
    for p in passages:
        sents = [p[s:t].strip() for s, t in kernels.split_sentences(p)]
        sentences.append([x for x in sents if 3 <= len(x.split()) <= 60])
    capitals = sorted({w for p in passages for w in _CAPITAL.findall(p)})
    out: list[Example] = []
    order = rng.permutation(len(passages))
    counts = {"copied": 0, "other_passage": 0, "number_changed": 0, "entity_swapped": 0}
    limit = per_kind if per_kind is not None else len(passages)
    for i in order:
        p, sents = passages[i], sentences[i]
        if not sents:
            continue
        key = "synthetic:" + hashlib.sha256(p.encode()).hexdigest()[:16]
        q = queries[p]
        s = sents[int(rng.integers(len(sents)))]
        if counts["copied"] < limit:
            out.append(Example(key, q, s, p, 1, "copied"))
            counts["copied"] += 1
        other = sentences[int(order[(int(np.where(order == i)[0][0]) + 1) % len(order)])]
        if other and counts["other_passage"] < limit:
            cand = other[int(rng.integers(len(other)))]
            if cand.lower() not in p.lower():
                out.append(Example(key, q, cand, p, 0, "other_passage"))
                counts["other_passage"] += 1
        with_number = [x for x in sents if _NUMBER.search(x)]
        if with_number and counts["number_changed"] < limit:
            x = with_number[int(rng.integers(len(with_number)))]
            edited = _NUMBER.sub(_changed_number, x, count=1)
            if edited != x:
                out.append(Example(key, q, edited, p, 0, "number_changed"))
                counts["number_changed"] += 1
        with_cap = [x for x in sents if _CAPITAL.search(x)]
        foreign = [c for c in capitals if c.lower() not in p.lower()]
        if with_cap and foreign and counts["entity_swapped"] < limit:
            x = with_cap[int(rng.integers(len(with_cap)))]
            names = _CAPITAL.findall(x)
            old = names[int(rng.integers(len(names)))]
            new = foreign[int(rng.integers(len(foreign)))]
            out.append(Example(key, q, x.replace(old, new, 1), p, 0, "entity_swapped"))
            counts["entity_swapped"] += 1
    return out


def halueval_examples(path: str | Path, limit: int | None = None, key_prefix: str = "halueval") -> list[Example]:
    out: list[Example] = []
    with Path(path).open(encoding="utf-8") as f:
        for row_no, line in enumerate(f):
            if limit is not None and row_no >= limit:
                break
            if not line.strip():
                continue
            r = json.loads(line)
            key = f"{key_prefix}:{row_no}"
            out.append(Example(key, r["question"], r["right_answer"], r["knowledge"], 1, "right"))
            out.append(Example(key, r["question"], r["hallucinated_answer"], r["knowledge"], 0, "hallucinated"))
    return out


# -- scoring ----------------------------------------------------------------------------------------


def metric_report(name: str, scores: np.ndarray, labels: np.ndarray, tune: np.ndarray) -> MetricReport:
    best = roc.best_threshold(scores, labels, "accuracy")
    tuned = roc.best_threshold(scores[tune], labels[tune], "accuracy")
    test = roc.confusion(scores[~tune], labels[~tune], tuned.threshold)
    ty = labels[~tune]
    return MetricReport(
        metric=name,
        n=int(scores.size),
        auc=round(roc.roc_auc(scores, labels), 4),
        cohens_d=round(roc.cohens_d(scores[labels == 1], scores[labels == 0]), 4),
        mean_correct=round(float(scores[labels == 1].mean()), 4),
        mean_incorrect=round(float(scores[labels == 0].mean()), 4),
        best_threshold_all=round(best.threshold, 4),
        best_accuracy_all=round(best.accuracy, 4),
        tuned_threshold=round(tuned.threshold, 4),
        test_accuracy=round(test.accuracy, 4),
        test_auc=round(roc.roc_auc(scores[~tune], ty), 4) if 0 < ty.sum() < ty.size else None,
    )


def _overlap(answer: str, context: tuple[str, ...]) -> float:
    from certus.kernels import STOP_WORDS

    words = [w for w in re.findall(r"\w+", answer.lower()) if w not in STOP_WORDS]
    if not words:
        return 0.0
    ctx = set(re.findall(r"\w+", " ".join(context).lower()))
    return sum(w in ctx for w in words) / len(words)


def _faithfulness_v0(claims: tuple[Any, ...]) -> float:
    return sum(0.2 * c.semantic + 0.8 * c.grounding * c.numeric >= 0.75 for c in claims) / max(1, len(claims))


async def score_examples(
    engine: OfflineScorer, examples: list[Example], progress: Progress | None = None
) -> dict[str, np.ndarray]:
    """Every reported metric and baseline that all examples have (question_fit needs a query)."""
    inputs = [
        EvaluateInput(workspace_id="validate", query=e.query, response=e.answer, context=context_of(e.passage))
        for e in examples
    ]
    scores = await engine.score_many(inputs, on_done=progress.advance if progress else None)
    out = {
        m: np.array([s.values[m] for s in scores], dtype=np.float64)
        for m in REPORTED_METRICS
        if all(m in s.values for s in scores)
    }
    out["faithfulness_v0"] = np.array([_faithfulness_v0(s.claims) for s in scores])
    out["token_overlap"] = np.array([_overlap(i.response, i.context) for i in inputs])
    out["shorter_answer"] = np.array([-float(len(i.response.split())) for i in inputs])
    quoted = np.array([bool(verifier.quoted([i.response], verifier.quote_texts(i.context))[0]) for i in inputs])
    out["quote_or_overlap"] = out["token_overlap"] + quoted
    return out


def dataset_report(name: str, source: Path, examples: list[Example], values: dict[str, np.ndarray]) -> DatasetReport:
    labels = np.array([e.label for e in examples], dtype=np.int64)
    tune = roc.split_mask([e.key for e in examples])
    kinds: dict[str, int] = {}
    for e in examples:
        if e.label == 0:
            kinds[e.kind] = kinds.get(e.kind, 0) + 1
    return DatasetReport(
        name=name,
        source=str(source),
        examples=len(examples),
        positives=int(labels.sum()),
        negatives=int(labels.size - labels.sum()),
        negatives_by_kind=kinds,
        tune_examples=int(tune.sum()),
        test_examples=int((~tune).sum()),
        metrics=[metric_report(m, values[m], labels, tune) for m in (*REPORTED_METRICS, *BASELINES) if m in values],
    )


# name -> (file under the data dir, loader(path, limit)); the held-out parts of the verifier's data
LOADERS: dict[str, tuple[str, Any]] = {
    "squad_v2": ("squad_v2/dev_subset.json", squad_examples),
    "squad_v2_other_passage": ("squad_v2/dev_subset.json", squad_other_passage_examples),
    "squad_v2_heldout": ("squad_v2/dev_subset.json", lambda p, limit: squad_article_examples(p, False)[: _n(limit)]),
    "halueval": ("halueval/qa_dev.jsonl", halueval_examples),
    "halueval_dialogue": ("halueval/dialogue_dev.jsonl", lambda p, limit: halueval_dialogue_examples(p)[: _n(limit)]),
    "halueval_summarization": (
        "halueval/summarization_dev.jsonl",
        lambda p, limit: halueval_summarization_examples(p)[: _n(limit)],
    ),
}


def _n(limit: int | None) -> int | None:
    return None if limit is None else 2 * limit


@dataclass(frozen=True)
class Validation:
    datasets: list[DatasetReport]
    model: str
    execution_provider: str
    elapsed_s: float
    cert_claim: dict[str, Any] = field(default_factory=lambda: dict(CERT_CLAIM))

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["format"] = VALIDATION_FORMAT
        return d

    def lines(self) -> list[str]:
        out: list[str] = []
        for ds in self.datasets:
            out.append(
                f"{ds.name}: {ds.examples} answers ({ds.positives} correct, {ds.negatives} incorrect: "
                + ", ".join(f"{k}={v}" for k, v in sorted(ds.negatives_by_kind.items()))
                + f"); tune half {ds.tune_examples}, test half {ds.test_examples}"
            )
            out.append(
                f"  {'metric':<20} {'ROC AUC':>7} {'Cohen d':>8} {'best thr':>8} {'acc(all)':>8} "
                f"{'tuned thr':>9} {'test acc':>8} {'test AUC':>8}"
            )
            for m in ds.metrics:
                test_auc = f"{m.test_auc:.3f}" if m.test_auc is not None else "-"
                out.append(
                    f"  {m.metric:<20} {m.auc:>7.3f} {m.cohens_d:>8.2f} {m.best_threshold_all:>8.3f} "
                    f"{m.best_accuracy_all:>8.1%} {m.tuned_threshold:>9.3f} {m.test_accuracy:>8.1%} {test_auc:>8}"
                )
        c = self.cert_claim
        out.append(
            f"CERT's claim ({c['dataset']}, its own scorer): ROC AUC {c['roc_auc']}, accuracy {c['accuracy']:.1%} "
            f"at threshold {c['threshold']}, separation {c['separation_sigma']}σ"
        )
        out.append(f"model: {self.model} on {self.execution_provider}; {self.elapsed_s:.1f}s")
        return out


def run_validation(
    data_dir: str | Path,
    *,
    cfg: Config,
    datasets: tuple[str, ...] = DEFAULT_DATASETS,
    limit: int | None = None,
    encoder: Any = None,
    show_progress: bool = False,
) -> Validation:
    t0 = time.perf_counter()
    root = Path(data_dir)
    wanted: list[tuple[str, Path, list[Example]]] = []
    for name in datasets:
        if name not in LOADERS:
            raise ValueError(f"unknown dataset {name!r} ({', '.join(DATASETS)})")
        rel, loader = LOADERS[name]
        src = root / rel
        if not src.is_file():
            raise FileNotFoundError(f"{src}: validation data not found (see ../shared/data/README.md)")
        wanted.append((name, src, loader(src, limit)))
    total = sum(len(ex) for _, _, ex in wanted)
    progress = Progress(total, "validate", enabled=show_progress)

    async def run() -> tuple[list[DatasetReport], str, str]:
        reports = []
        async with OfflineScorer(cfg, encoder) as engine:
            for name, src, examples in wanted:
                values = await score_examples(engine, examples, progress)
                reports.append(dataset_report(name, src, examples, values))
            enc = engine.encoder
        return reports, f"all-MiniLM-L6-v2/{getattr(enc, 'variant', 'custom')}", str(getattr(enc, "provider", "custom"))

    reports, model, provider = asyncio.run(run())
    progress.close()
    return Validation(reports, model, provider, round(time.perf_counter() - t0, 2))
