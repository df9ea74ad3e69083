"""Train the answer locator that ``question_fit`` reads (reproducible, NumPy only).

``certus-sidecar models train-answer-head [--data DIR] [--out FILE]`` (about 5 min on 2 cores) writes
``certus/models/answer_head.npz`` (0.25 MB). Run it before ``train-verifier``, which fits
``question_fit`` on the head's output.

The head (:class:`certus.sidecar.verifier.AnswerHead`) reads the encoder's token states of the
question and of a chunk, encoded apart as the scoring stage has them (no extra encoder pass), and
gives each chunk piece a logit: "the answer to this question is here". It is a small late-interaction
reader: K low-rank bilinear maps between chunk and question pieces, each piece keeping its best
question match (plus the raw cosine's), a 1-D convolution over ±W pieces of those K+1 channels (the
answer sits *next to* the words that match the question, not on them), a linear term on the
piece's own state (what answers look like) and a bilinear term between the piece and the mean
question state (the answer type a question asks for).

Data: HaluEval ``qa_train.jsonl`` (HotpotQA questions over two Wikipedia paragraphs), the rows whose
right answer occurs verbatim in the knowledge (yes/no answers left out), and one cloze question per
row's knowledge (:func:`cloze_examples`: a sentence with a name, number or date taken out, a wh-word
in front, a fifth of its other words dropped; the taken-out span is the answer). HotpotQA's questions
are multi-hop, so their answers often sit far from the question's words; the cloze questions are
there to show the head answers right next to the words a question shares with the context. Measured
on SQuAD's training article, their effect is within noise: the head alone ranks the gold answer
above another question's at AUC 0.823 without them, 0.827 with them (rank 32), 0.833 at rank 16, and
question_fit's cross-validated AUC with the head is 0.903 / 0.895 / 0.889 (95 question folds). The
rank (16, half the cost of 32) was chosen by the head's own val loss (2.69 against 2.75). What the
head reliably reads is the kind of span a question asks for (a date for "when", a name for "who");
its top piece lies inside the answer in 52% of val chunks. The "train" part (``validate.part_of``,
80/20, as the verifier) is fit, the "val" part picks the epoch (lowest mean loss over both kinds).
SQuAD is never read here: ``question_fit`` is fit on its training article and reported on the other
one. Loss: cross-entropy of the softmax over a chunk's pieces against the answer's pieces
(uniform). Minibatch Adam, fixed seed, gradients written out by hand (checked against finite
differences in the tests).
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from certus import kernels
from certus.sidecar.toolkit import validate as D
from certus.models.adam import Adam
from certus.models.train_verifier import sha256_file
from certus.sidecar.verifier import AnswerHead, occurrences, unglued

SEED = 20261207
CHANNELS = 4  # K
RANK = 16  # R
WINDOW = 8  # W
EPOCHS = 8
BATCH = 16
LEARNING_RATE = 2e-3
INIT_SCALE = 0.05
FILE = "halueval/qa_train.jsonl"
CLOZE_DROP = 0.2
_MONTH = r"(?:January|February|March|April|May|June|July|August|September|October|November|December)"
_CLOZE_SPAN = re.compile(
    rf"\b(?:{_MONTH}(?:\s+\d{{1,2}},?)?\s+\d{{4}}"
    r"|\d[\d,.]*(?:\s+(?:million|billion|percent|years?|km|miles|people|kilometres|metres|feet))?"
    r"|[A-Z][\w'\u2019-]*(?:\s+(?:of|the|de|and|von|van)?\s*[A-Z][\w'\u2019-]*)*)"
)
_YEAR = re.compile(r"1\d{3}|20\d{2}")


def default_out() -> Path:
    return Path(__file__).resolve().parent / "answer_head.npz"


def _wh(span: str, word_before: str) -> str:
    if _YEAR.fullmatch(span) or (not span[0].isdigit() and _YEAR.search(span)):
        return "When"
    if span[0].isdigit():
        return "How many"
    if word_before in ("in", "at", "from", "to", "near"):
        return "Where"
    return "Who" if 2 <= len(span.split()) <= 3 else "What"


def cloze_examples(sources: Sequence[D.Example], seed: int) -> list[D.Example]:
    """One cloze question per source (its knowledge, glued words separated, split in sentences): a
    sentence of 6-50 words, a name, number or date in it (not its first word, occurring once in the
    knowledge) taken out as the answer, a wh-word for its kind in front, each other word dropped
    with probability ``CLOZE_DROP``."""
    rng = np.random.default_rng(seed)
    out = []
    for e in sources:
        if e.label != 1:
            continue
        text = unglued(e.passage) or e.passage
        spans = [(a, b) for a, b in kernels.split_sentences(text).tolist() if 6 <= len(text[a:b].split()) <= 50]
        if not spans:
            continue
        a, b = spans[int(rng.integers(len(spans)))]
        sentence = text[a:b]
        found = [m for m in _CLOZE_SPAN.finditer(sentence) if m.start() > 0 and len(m.group(0)) > 1]
        if not found:
            continue
        m = found[int(rng.integers(len(found)))]
        answer = m.group(0).strip()
        if e.passage.lower().count(answer.lower()) != 1:
            continue
        before = sentence[: m.start()].split()
        rest = [w for w in (sentence[: m.start()] + " " + sentence[m.end() :]).split() if rng.random() >= CLOZE_DROP]
        query = (_wh(answer, before[-1].lower() if before else "") + " " + " ".join(rest)).rstrip(" .") + "?"
        out.append(D.Example(e.key, query, answer, e.passage, 1, "cloze"))
    return out


def init_params(seed: int = SEED) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    d, k, r, w = AnswerHead.DIM, CHANNELS, RANK, WINDOW
    return {
        "A": rng.normal(0, INIT_SCALE, (k, d, r)),
        "B": rng.normal(0, INIT_SCALE, (k, d, r)),
        "conv": rng.normal(0, 1.0 / np.sqrt((k + 1) * (2 * w + 1)), (k + 1, 2 * w + 1)),
        "conv_bias": np.zeros(1),
        "u": np.zeros(d),
        "u_bias": np.zeros(1),
        "D": rng.normal(0, INIT_SCALE, (d, r)),
        "E": rng.normal(0, INIT_SCALE, (d, r)),
    }


def loss_and_grads(p: dict[str, np.ndarray], q: np.ndarray, c: np.ndarray, target: np.ndarray) -> tuple[float, dict[str, np.ndarray]]:
    """Cross-entropy of softmax(logits) against the answer pieces ``target`` (bool[n]) and its
    gradients; the forward pass is :meth:`AnswerHead.forward`, so training and serving agree."""
    head = AnswerHead(p)
    z, cache = head.forward(q, c, keep=True)
    lse = np.logaddexp.reduce(z)
    t = target / target.sum()
    loss = float(lse - (z * t).sum())
    dz = np.exp(z - lse) - t
    return loss, head.backward(dz, cache)


Item = tuple[np.ndarray, np.ndarray, np.ndarray]  # question states, chunk states, answer pieces


def items(examples: Sequence[D.Example], encoder: object, batch: int = 512) -> list[Item]:
    """(question states, chunk states, answer pieces) of each chunk holding the right answer."""
    chosen = []
    for e in examples:
        a = e.answer.strip().strip(".").lower()
        if e.label != 1 or not a or a in ("yes", "no"):
            continue
        ctx = D.context_of(e.passage)
        if any(a in c.lower() for c in ctx):
            chosen.append((e.query, ctx, a))
    out: list[Item] = []
    for b in range(0, len(chosen), batch):
        part = chosen[b : b + batch]
        texts = sorted({q for q, _, _ in part} | {c for _, ctx, _ in part for c in ctx})
        index = {t: k for k, t in enumerate(texts)}
        _, tokens = encoder.encode_tokens(texts)  # type: ignore[attr-defined]
        for q, ctx, a in part:
            for c in ctx:
                ts = tokens[index[c]]
                mask = np.zeros(len(ts.pieces), dtype=bool)
                for at in occurrences(c.lower(), a).tolist():
                    mask |= (ts.pieces[:, 0] < at + len(a)) & (ts.pieces[:, 1] > at)
                if mask.any():
                    out.append((tokens[index[q]].states.astype(np.float64), ts.states.astype(np.float64), mask))
    return out


def mean_loss(p: dict[str, np.ndarray], data: list[Item]) -> tuple[float, float]:
    """(mean loss, share of chunks whose top piece is an answer piece)."""
    head = AnswerHead(p)
    loss, top = 0.0, 0
    for q, c, m in data:
        z = head.forward(q, c)
        loss += float(np.logaddexp.reduce(z) - z[m].mean())
        top += bool(m[int(np.argmax(z))])
    return loss / max(1, len(data)), top / max(1, len(data))


def train(data: Path, encoder: object, log: object = print) -> dict[str, np.ndarray]:
    t0 = time.perf_counter()
    fit_rows = D.halueval_train_examples(data / FILE, "train")
    val_rows = D.halueval_train_examples(data / FILE, "val")
    fit = items(fit_rows, encoder) + items(cloze_examples(fit_rows, SEED), encoder)
    val = items(val_rows, encoder) + items(cloze_examples(val_rows, SEED + 1), encoder)
    log(f"answer head: {len(fit)} fit chunks, {len(val)} val chunks ({time.perf_counter() - t0:.0f}s)")  # type: ignore[operator]
    params = init_params()
    opt = Adam(list(params.values()), LEARNING_RATE)
    rng = np.random.default_rng(SEED)
    best = (float("inf"), 0, {k: v.copy() for k, v in params.items()}, 0.0)
    for epoch in range(1, EPOCHS + 1):
        order = rng.permutation(len(fit))
        for b in range(0, len(fit), BATCH):
            grads: dict[str, np.ndarray] = {k: np.zeros_like(v) for k, v in params.items()}
            part = order[b : b + BATCH]
            for i in part:
                _, g = loss_and_grads(params, *fit[i])
                for k in grads:
                    grads[k] += g[k] / len(part)
            opt.step(list(params.values()), [grads[k] for k in params])
        vl, vtop = mean_loss(params, val)
        log(f"answer head: epoch {epoch} val loss {vl:.4f}, top piece in answer {vtop:.3f} ({time.perf_counter() - t0:.0f}s)")  # type: ignore[operator]
        if vl < best[0]:
            best = (vl, epoch, {k: v.copy() for k, v in params.items()}, vtop)
    vl, epoch, params, vtop = best
    sha = sha256_file(data / FILE)
    meta = (
        f"trainer=certus.models.train_answer_head seed={SEED} data={FILE} sha256={sha} "
        f"fit_chunks={len(fit)} val_chunks={len(val)} epoch={epoch} val_loss={vl:.4f} val_top_piece={vtop:.4f}"
    )
    log(f"answer head: best epoch {epoch} ({meta})")  # type: ignore[operator]
    return {**{k: v.astype(np.float32) for k, v in params.items()}, "meta": np.array(meta)}


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "train-answer-head",
        help="train question_fit's answer locator from ../shared/data (reproducible; run before train-verifier)",
    )
    p.add_argument("--data", type=Path, default=Path("../shared/data"), help="the shared data dir (default ../shared/data)")
    p.add_argument("--out", type=Path, default=None, help="weights file (default: the shipped certus/models/answer_head.npz)")
    p.set_defaults(func=_main)


def _main(args: argparse.Namespace) -> int:
    from certus.sidecar.config import load
    from certus.sidecar.toolkit.engine import build_encoder

    if not (args.data / FILE).is_file():
        print(f"train-answer-head: data not found: {args.data / FILE} (see ../shared/data/README.md)", file=sys.stderr)
        return 2
    encoder = build_encoder(load(getattr(args, "config", None)))
    weights = train(args.data, encoder, log=lambda m: print(m, flush=True))
    out = args.out or default_out()
    with out.open("wb") as fh:
        np.savez(fh, **weights)
    print(f"wrote {out} ({out.stat().st_size} bytes)")
    return 0
