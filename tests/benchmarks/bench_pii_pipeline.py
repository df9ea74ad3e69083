"""PII: the spaCy pipeline the guardrail loads (NER only, lower-cased lemmas) against the full
pipeline it replaced (tok2vec, tagger, attribute ruler, lemmatizer, NER), in one run.

    python tests/benchmarks/bench_pii_pipeline.py [--data ../shared/data] [--limit N]

Both are built by the guardrail's own code (``pii._Engines._build``), the old one with the old
loader patched in. Every text goes through both Presidio analyzers with every entity type; printed:
CPU per text for each (interleaved, same texts), and how many texts get different findings (entity
type, span, score) and what differs. Texts: the presidio-research synth sentences, HaluEval QA
answers, hallucinated answers, questions and passages, and dialogue turns and histories.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from certus.sidecar.guardrails import pii  # noqa: E402


def texts_from(data: Path, limit: int) -> list[str]:
    out = [json.loads(line)["full_text"] for line in (data / "pii" / "presidio_synth_dev.jsonl").open()]
    for line in (data / "halueval" / "qa_dev.jsonl").open():
        d = json.loads(line)
        out += [d["right_answer"], d["hallucinated_answer"], d["question"], d["knowledge"][:2000]]
    for line in list((data / "halueval" / "dialogue_dev.jsonl").open())[:300]:
        d = json.loads(line)
        out += [d["right_response"], d["dialogue_history"][:2000]]
    return out[:limit] if limit else out


def full_pipeline(ner: bool = True) -> tuple[Any, str, bool]:
    import spacy

    return spacy.load(pii.NER_PACKAGE, exclude=["parser"]), pii.NER_PACKAGE, True


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=str(Path(__file__).resolve().parents[3] / "shared" / "data"))
    ap.add_argument("--limit", type=int, default=0)
    args = ap.parse_args()
    texts = texts_from(Path(args.data), args.limit)
    lean = pii._Engines._build(True)[0]
    loader, pii._load_spacy = pii._load_spacy, full_pipeline
    try:
        full = pii._Engines._build(True)[0]
    finally:
        pii._load_spacy = loader
    print("pipelines: now", lean.nlp_engine.nlp["en"].pipe_names, "| before", full.nlp_engine.nlp["en"].pipe_names)
    entities = list(pii.PATTERN_ENTITIES + pii.NER_ENTITIES)
    for t in texts[:20]:  # warm both
        full.analyze(text=t, language="en", entities=entities)
        lean.analyze(text=t, language="en", entities=entities)
    t_full, t_lean, differ, examples = [], [], 0, []
    for t in texts:
        a0 = time.perf_counter()
        a = full.analyze(text=t, language="en", entities=entities)
        a1 = time.perf_counter()
        b = lean.analyze(text=t, language="en", entities=entities)
        b1 = time.perf_counter()
        t_full.append(a1 - a0)
        t_lean.append(b1 - a1)
        ka = {(r.entity_type, r.start, r.end, round(r.score, 4)) for r in a}
        kb = {(r.entity_type, r.start, r.end, round(r.score, 4)) for r in b}
        if ka != kb:
            differ += 1
            examples.append((t[:80], sorted(ka - kb), sorted(kb - ka)))
    words = statistics.fmean(len(t.split()) for t in texts)
    print(f"{len(texts)} texts (mean {words:.0f} words)")
    print(f"CPU per text: before {statistics.fmean(t_full) * 1e3:.2f} ms (p50 {statistics.median(t_full) * 1e3:.2f}), "
          f"now {statistics.fmean(t_lean) * 1e3:.2f} ms (p50 {statistics.median(t_lean) * 1e3:.2f}): "
          f"{statistics.fmean(t_full) / statistics.fmean(t_lean):.2f}x")
    print(f"texts whose findings differ (type, span or score): {differ}")
    for text, only_before, only_now in examples[:10]:
        print(f"  {text!r}: before only {only_before}, now only {only_now}")


if __name__ == "__main__":
    main()
