"""Guardrail quality and latency benchmark (not a test).

    python tests/benchmarks/bench_guardrails.py [--data-dir ../shared/data] [--latency-requests 100]

Prints markdown tables:

* prompt injection / jailbreak on the held-out 30% of deepset/prompt-injections (rows listed in
  sidecar/guardrails/data/injection_split.json; never used for training or thresholds), for rules
  only, the learned head only, and both; deepset labels are "injection" (1) vs benign (0): there is
  no separate jailbreak label, so the jailbreak guardrail is reported against the injection label
  only as part of "any prompt attack";
* indirect injection: held-out deepset injections inserted into SQuAD paragraphs of the article
  not used in training (Computational_complexity_theory) vs the same paragraphs clean, and the
  false-positive rate on HaluEval knowledge passages;
* PII on the presidio-research synth set (shared/data/pii/presidio_synth_dev.jsonl): span-level
  precision / recall / F2 per entity type (a prediction matches a gold span of the same type when
  their character IoU >= 0.5; also micro over word tokens, as presidio-research evaluates), with the MiniLM token-state NER head (the default) and with the
  spaCy NER it was taught by, in the same run;
* exfiltration, code safety, vulnerability hallucination and jailbreak on the hand-written cases in
  sidecar/guardrails/data/bench_cases.jsonl (set A: rules were revised on it) and bench_cases_b.jsonl
  (set B: written afterwards, not tuned on), positives and benign look-alikes;
* p50 / p99 latency of each guardrail per request on a RAG-shaped request mix.

Quality figures use the policy of a default ``GuardrailConfig()`` (severity >= medium, confidence
>= 0.7) unless the table says otherwise.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from certus.sidecar.domain import (  # noqa: E402
    PII_ENTITY_TYPES,
    EvaluateInput,
    GuardrailConfig,
    GuardrailType,
    GuardrailViolation,
    Severity,
)
from certus.sidecar.guardrails import GuardrailSuite, apply_policy  # noqa: E402
from certus.sidecar.guardrails.learned import DATA_DIR  # noqa: E402
from certus.sidecar.guardrails.pii import DEFAULT_ENTITIES  # noqa: E402
from certus.sidecar.guardrails.prompt_attacks import PromptAttackGuardrail  # noqa: E402
from certus.sidecar.scoring import sentence_spans  # noqa: E402
from certus.sidecar.guardrails.train_injection import (  # noqa: E402
    JAILBREAK_FILE,
    JAILBREAK_SPLIT_FILE,
    SPLIT_FILE,
    load_jailbreak_csv,
    sha256_file,
)

GT = GuardrailType
DEFAULT = GuardrailConfig()
SEED_HIGH = GuardrailConfig(severity_threshold=Severity.HIGH)
ALL = GuardrailConfig(severity_threshold=Severity.LOW, confidence_threshold=0.0)


def prf(tp: int, fp: int, fn: int, beta: float = 1.0) -> tuple[float, float, float]:
    p = tp / (tp + fp) if tp + fp else 0.0
    r = tp / (tp + fn) if tp + fn else 0.0
    b2 = beta * beta
    f = (1 + b2) * p * r / (b2 * p + r) if p + r else 0.0
    return p, r, f


def confusion(pred: Sequence[bool], gold: Sequence[int]) -> tuple[int, int, int, int]:
    tp = sum(1 for p, g in zip(pred, gold) if p and g)
    fp = sum(1 for p, g in zip(pred, gold) if p and not g)
    fn = sum(1 for p, g in zip(pred, gold) if not p and g)
    tn = sum(1 for p, g in zip(pred, gold) if not p and not g)
    return tp, fp, fn, tn


def row(name: str, pred: Sequence[bool], gold: Sequence[int]) -> str:
    tp, fp, fn, tn = confusion(pred, gold)
    p, r, f = prf(tp, fp, fn)
    return f"| {name} | {len(gold)} | {tp} | {fp} | {fn} | {tn} | {p:.3f} | {r:.3f} | {f:.3f} |"


HEADER = "| detector | n | TP | FP | FN | TN | precision | recall | F1 |\n|---|---|---|---|---|---|---|---|---|"
FP_HEADER = HEADER.replace("F1 |", "F1 | FP rate |") + "---|"


def load_jsonl(path: Path) -> list[dict]:
    with path.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def inp(query: str = "q", response: str = "ok", context: Iterable[str] = ()) -> EvaluateInput:
    return EvaluateInput("bench", query, response, tuple(context))


def flagged(suite: GuardrailSuite, x: EvaluateInput, types: Sequence[GuardrailType], cfg: GuardrailConfig,
            detectors: Callable[[GuardrailViolation], bool] = lambda v: True) -> bool:
    """Any violation of these types (passing ``cfg``) for which ``detectors(v)`` holds."""
    for t in types:
        found = apply_policy(suite.guardrails[t].detect(x, cfg), cfg)
        if any(detectors(v) for v in found):
            return True
    return False


LEARNED = {"injection_classifier", "jailbreak_classifier"}


def bench_injection(full: GuardrailSuite, rules: GuardrailSuite, data_dir: Path) -> list[str]:
    path = data_dir / "prompt_injection" / "deepset_train.jsonl"
    split = json.loads(SPLIT_FILE.read_text())
    if split["sha256"] != sha256_file(path):
        raise SystemExit(f"{path} differs from the file the split was made from")
    rows = load_jsonl(path)
    held = split["held_out"]
    gold = [int(rows[i]["label"]) for i in held]
    xs = [inp(query=rows[i]["text"]) for i in held]
    pi, both = [GT.PROMPT_INJECTION], [GT.PROMPT_INJECTION, GT.JAILBREAK]
    out = [f"Held-out deepset rows: {len(held)} ({sum(gold)} injection, {len(gold) - sum(gold)} benign), "
           f"seed {split['seed']}, stratified by label; indices in `{SPLIT_FILE.relative_to(ROOT)}`.", "", HEADER]
    out.append(row("prompt_injection: rules only", [flagged(rules, x, pi, DEFAULT) for x in xs], gold))
    out.append(row("prompt_injection: learned head only", [flagged(full, x, pi, DEFAULT, lambda v: v.detector in LEARNED) for x in xs], gold))
    out.append(row("prompt_injection: rules + head", [flagged(full, x, pi, DEFAULT) for x in xs], gold))
    out.append(row("prompt_injection + jailbreak: rules only", [flagged(rules, x, both, DEFAULT) for x in xs], gold))
    out.append(row("prompt_injection + jailbreak: rules + learned", [flagged(full, x, both, DEFAULT) for x in xs], gold))
    out.append(row("prompt_injection + jailbreak, seed manifest (severity >= high)", [flagged(full, x, both, SEED_HIGH) for x in xs], gold))
    out.append(row("prompt_injection + jailbreak, any finding (confidence >= 0.5)", [flagged(full, x, both, GuardrailConfig(severity_threshold=Severity.LOW, confidence_threshold=0.5)) for x in xs], gold))
    # threshold sweep of the combined confidence (what a manifest's confidence_threshold does)
    sweep = []
    for thr in (0.5, 0.6, 0.7, 0.8, 0.9):
        cfg = GuardrailConfig(severity_threshold=Severity.LOW, confidence_threshold=thr)
        tp, fp, fn, _ = confusion([flagged(full, x, both, cfg) for x in xs], gold)
        p, r, f = prf(tp, fp, fn)
        sweep.append(f"{thr:.1f}: P {p:.3f} R {r:.3f} F1 {f:.3f}")
    out += ["", "Confidence-threshold sweep (rules + learned, both types): " + "; ".join(sweep) + "."]

    # indirect injection: held-out injections inside retrieved paragraphs
    squad = json.loads((data_dir / "squad_v2" / "dev_subset.json").read_text())
    paras = [p["context"] for a in squad["data"] if a["title"] == "Computational_complexity_theory" for p in a["paragraphs"]]
    rng = np.random.default_rng(11)
    pos_texts = [rows[i]["text"] for i in held if rows[i]["label"] == 1]
    chunks, cgold = [], []
    for k, para in enumerate(paras):
        chunks.append(para)
        cgold.append(0)
        sents = para.split(". ")
        at = int(rng.integers(0, len(sents) + 1))
        injected = ". ".join(sents[:at] + [pos_texts[k % len(pos_texts)].strip()] + sents[at:])
        chunks.append(injected)
        cgold.append(1)
    xs_c = [inp(query="What does the passage say?", context=[c]) for c in chunks]
    out += ["", f"Indirect injection: {len(paras)} SQuAD paragraphs (Computational_complexity_theory, not used in training), "
            "each once clean and once with a held-out deepset injection inserted at a random sentence boundary "
            "(the injection checked as `context[0]`).", "", HEADER]
    in_ctx = lambda v: v.source == "context[0]"  # noqa: E731
    out.append(row("context: rules only", [flagged(rules, x, both, DEFAULT, in_ctx) for x in xs_c], cgold))
    out.append(row("context: rules + learned", [flagged(full, x, both, DEFAULT, in_ctx) for x in xs_c], cgold))
    halu = load_jsonl(data_dir / "halueval" / "qa_dev.jsonl")
    fp_rules = sum(flagged(rules, inp(query=h["question"], context=[h["knowledge"]]), both, DEFAULT, in_ctx) for h in halu)
    fp_full = sum(flagged(full, inp(query=h["question"], context=[h["knowledge"]]), both, DEFAULT, in_ctx) for h in halu)
    fq_full = sum(flagged(full, inp(query=h["question"]), both, DEFAULT) for h in halu)
    out += ["", f"False positives on {len(halu)} HaluEval knowledge passages as context (all benign): "
            f"rules only {fp_rules} ({fp_rules / len(halu):.1%}), rules + learned {fp_full} ({fp_full / len(halu):.1%}). "
            f"False positives on their {len(halu)} questions as queries (benign): rules + learned {fq_full} ({fq_full / len(halu):.1%})."]
    return out


def bench_jailbreak(full: GuardrailSuite, rules: GuardrailSuite, data_dir: Path) -> list[str]:
    path = data_dir / JAILBREAK_FILE
    split = json.loads(JAILBREAK_SPLIT_FILE.read_text())
    if split["sha256"] != sha256_file(path):
        raise SystemExit(f"{path} differs from the file the split was made from")
    rows = load_jailbreak_csv(path)
    held = split["held_out"]
    gold = [int(rows[i]["label"]) for i in held]
    xs = [inp(query=str(rows[i]["text"])) for i in held]
    jb, both = [GT.JAILBREAK], [GT.PROMPT_INJECTION, GT.JAILBREAK]
    out = [f"Held-out jackhhao rows: {len(held)} ({sum(gold)} jailbreak, {len(gold) - sum(gold)} benign persona / role-play "
           f"prompts), seed {split['seed']}, stratified; indices in `{JAILBREAK_SPLIT_FILE.relative_to(ROOT)}`. "
           "False-positive rate = benign prompts flagged / benign prompts.", "", FP_HEADER]
    for name, suite, types, det in (
        ("jailbreak: rules only", rules, jb, None),
        ("jailbreak: learned head only", full, jb, lambda v: v.detector in LEARNED),
        ("jailbreak: rules + head", full, jb, None),
        ("any prompt attack (injection or jailbreak), rules + heads", full, both, None),
    ):
        pred = [flagged(suite, x, types, DEFAULT, det) if det else flagged(suite, x, types, DEFAULT) for x in xs]
        _, fp, _, tn = confusion(pred, gold)
        out.append(row(name, pred, gold) + f" {fp / max(fp + tn, 1):.1%} |")
    return out


PII_TYPES = (*DEFAULT_ENTITIES, "ORGANIZATION")  # reported per type; micro over the default set
GOLD_ALIAS = {"GPE": "LOCATION"}  # the synth set's labels -> the guardrail's
PRED_ALIAS = {"DATE_OF_BIRTH": "DATE_TIME"}  # a birth date is a DATE_TIME of the synth set
PII_ALL = GuardrailConfig(severity_threshold=Severity.LOW, confidence_threshold=0.0, entities=PII_ENTITY_TYPES)


def iou(a: tuple[int, int], b: tuple[int, int]) -> float:
    inter = max(0, min(a[1], b[1]) - max(a[0], b[0]))
    union = max(a[1], b[1]) - min(a[0], b[0])
    return inter / union if union else 0.0


_TOKEN = re.compile(r"\w+")


def token_labels(text: str, spans: Sequence[tuple[str, tuple[int, int]]]) -> list[str]:
    """The entity type of each word token (``\w+``) of ``text`` that a span overlaps, else "O"."""
    out = []
    for m in _TOKEN.finditer(text):
        out.append(next((t for t, (a, b) in spans if a < m.end() and m.start() < b), "O"))
    return out


def pii_counts(suite: GuardrailSuite, rows: list[dict], cfg: GuardrailConfig) -> tuple[dict[str, list[int]], int, dict[str, list[int]]]:
    """Per entity type [TP, FP, FN] of the suite's PII findings on the synth rows (spans: same type,
    IoU >= 0.5), the number of gold spans of types the guardrail never reports, and per type
    [TP, FP, FN] over word tokens (presidio-research's evaluation is token-level: a token is
    labelled with the type of the span over it)."""
    counts: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])
    tokens: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])
    out_of_scope = 0
    for r in rows:
        x = inp(response=r["full_text"])
        pred = [(PRED_ALIAS.get(v.detector, v.detector), (v.start, v.end)) for v in apply_policy(suite.pii.detect(x, cfg), cfg)]
        gold = [(GOLD_ALIAS.get(s["entity_type"], s["entity_type"]), (s["start_position"], s["end_position"]))
                for s in r["spans"]]
        out_of_scope += sum(1 for t, _ in gold if t not in PII_TYPES)
        gold = [(t, sp) for t, sp in gold if t in PII_TYPES]
        for g, p in zip(token_labels(r["full_text"], gold), token_labels(r["full_text"], pred)):
            if g == p != "O":
                tokens[g][0] += 1
            else:
                if p != "O":
                    tokens[p][1] += 1
                if g != "O":
                    tokens[g][2] += 1
        used = set()
        for t, sp in pred:
            match = next((j for j, (gt, gs) in enumerate(gold) if j not in used and gt == t and iou(sp, gs) >= 0.5), None)
            if match is None:
                counts[t][1] += 1
            else:
                used.add(match)
                counts[t][0] += 1
        for j, (gt, _) in enumerate(gold):
            if j not in used:
                counts[gt][2] += 1
    return counts, out_of_scope, tokens


def micro(counts: dict[str, list[int]]) -> list[int]:
    """[TP, FP, FN] summed over the default entity set."""
    return [sum(counts[t][k] for t in DEFAULT_ENTITIES) for k in range(3)]


def bench_pii(suite: GuardrailSuite, teacher: GuardrailSuite, data_dir: Path) -> list[str]:
    rows = load_jsonl(data_dir / "pii" / "presidio_synth_dev.jsonl")
    out = [f"presidio-research synth set, {len(rows)} sentences (the shared half of `synth_dataset_v2.json`; never "
           f"trained or tuned on). NER: `{suite.pii.ner_model}` (spaCy `{teacher.pii.ner_model}` beside it, measured "
           "in the same run). Span match: same entity type and character "
           "IoU >= 0.5; the set's GPE is our LOCATION, our DATE_OF_BIRTH counts as its DATE_TIME. Micro = over the "
           f"default entity set ({', '.join(DEFAULT_ENTITIES)}); ORGANIZATION is reported only when a manifest lists it.", ""]
    for label, cfg in (("all findings (every type, any severity and confidence)", PII_ALL),
                       ("default policy (default entities, confidence >= 0.7, severity >= medium)", DEFAULT)):
        counts, out_of_scope, tokens = pii_counts(suite, rows, cfg)
        before, _, tokens_before = pii_counts(teacher, rows, cfg)
        out += [f"**{label}**", "", "| entity | gold | TP | FP | FN | precision | recall | F2 | F2 with spaCy NER |",
                "|---|---|---|---|---|---|---|---|---|"]
        for t in PII_TYPES:
            tp, fp, fn = counts[t]
            p, rr, f2 = prf(tp, fp, fn, beta=2)
            out.append(f"| {t} | {tp + fn} | {tp} | {fp} | {fn} | {p:.3f} | {rr:.3f} | {f2:.3f} | {prf(*before[t], beta=2)[2]:.3f} |")
        for name, (tp, fp, fn), base in (("micro, default entity set", micro(counts), micro(before)),
                                         ("token level, micro, default entity set (tokens)", micro(tokens), micro(tokens_before))):
            p, rr, f2 = prf(tp, fp, fn, beta=2)
            out.append(f"| **{name}** | {tp + fn} | {tp} | {fp} | {fn} | {p:.3f} | {rr:.3f} | {f2:.3f} | {prf(*base, beta=2)[2]:.3f} |")
        out.append(f"| (gold of types never reported: {out_of_scope} spans of TITLE, AGE, NRP, ZIP_CODE, DOMAIN_NAME, ...) | | | | | | | | |")
        out.append("")
    # noise on benign answers: HaluEval right answers (public facts about public people and places)
    halu = load_jsonl(data_dir / "halueval" / "qa_dev.jsonl")
    for name, s in ((suite.pii.ner_model, suite), (teacher.pii.ner_model, teacher)):
        kinds: dict[str, int] = defaultdict(int)
        flagged_n = 0
        for h in halu:
            found = apply_policy(s.pii.detect(inp(response=h["right_answer"]), DEFAULT), DEFAULT)
            flagged_n += bool(found)
            for d in {v.detector for v in found}:
                kinds[d] += 1
        out.append(f"Benign answers ({name}): {flagged_n} of {len(halu)} HaluEval right answers ({flagged_n / len(halu):.1%}) get a "
                   "PII finding under the default policy (" + ", ".join(f"{k} {n}" for k, n in sorted(kinds.items(), key=lambda kv: -kv[1])) +
                   "): public people and places named in answers, which `allow_from_context` (off by default) waives when the "
                   "context names them too.")
        out.append("")
    return out


def bench_cases(full: GuardrailSuite, name: str, blurb: str) -> list[str]:
    cases = load_jsonl(DATA_DIR / name)
    out = [f"`sidecar/guardrails/data/{name}` ({len(cases)} cases, positives and benign look-alikes): {blurb}", "", HEADER]
    misses = []
    for g in ("data_exfiltration", "code_safety", "vuln_hallucination", "jailbreak"):
        sel = [c for c in cases if c["guardrail"] == g]
        pred = []
        for c in sel:
            x = inp(query=c["query"] or "q", response=c["response"] or "ok", context=c["context"])
            p = flagged(full, x, [GuardrailType(g)], DEFAULT)
            pred.append(p)
            if p != bool(c["label"]):
                misses.append(f"{g}: {'FN' if c['label'] else 'FP'} — {c['note']}")
        out.append(row(g, pred, [c["label"] for c in sel]))
    out += ["", "Errors: " + ("; ".join(misses) if misses else "none") + "."]
    return out


class StatesCache:
    """Token states by text, as the sidecar's batcher keeps them: the PII head reads the states of
    the response's sentences, which the scoring stage has the encoder compute anyway."""

    def __init__(self, encoder: Any) -> None:
        self.encoder = encoder
        self.states: dict[str, Any] = {}

    def __call__(self, texts: Sequence[str]) -> list[Any]:
        missing = [t for t in dict.fromkeys(texts) if t not in self.states]
        if missing:
            self.states.update(zip(missing, self.encoder.encode_tokens(missing)[1]))
        return [self.states[t] for t in texts]


def bench_latency(full: GuardrailSuite, teacher: GuardrailSuite, states: StatesCache,
                  encode: Callable[[Sequence[str]], np.ndarray], data_dir: Path, n: int) -> list[str]:
    halu = load_jsonl(data_dir / "halueval" / "qa_dev.jsonl")
    squad = json.loads((data_dir / "squad_v2" / "dev_subset.json").read_text())
    paras = [p["context"] for a in squad["data"] for p in a["paragraphs"]]
    reqs = []
    for k in range(n + 5):
        h = halu[k % len(halu)]
        response = (f"{h['right_answer']}. According to the sources, {h['knowledge']} "
                    "Contact support@example.com for details.\n\n```bash\npip install requests\n```")
        reqs.append(inp(query=h["question"], response=response, context=[h["knowledge"], paras[k % len(paras)], paras[(k + 7) % len(paras)]]))
    times: dict[str, list[float]] = defaultdict(list)
    cfg = DEFAULT
    warm, reqs = reqs[n:], reqs[:n]
    for x in warm:  # warm-up (spaCy, ONNX) on other requests
        full.scan(x, {t: cfg for t in GT})
    for x in reqs:
        if full.learned is not None:
            full.learned._cache.clear()  # cold: every segment of every request is embedded
        for g in full.guardrails.values():
            if isinstance(g, PromptAttackGuardrail):
                g._findings.clear()  # and every text scanned (the per-text findings cache)
        # the response's sentences as scoring encodes them (claims): the head's input, not its cost
        states([x.response[a:b] for a, b in sentence_spans(x.response)])
        t_all = time.perf_counter()
        for t, g in full.guardrails.items():
            t0 = time.perf_counter()
            g.detect(x, cfg)
            times[t.value].append((time.perf_counter() - t0) * 1000)
        times["all six (sequential)"].append((time.perf_counter() - t_all) * 1000)
        t0 = time.perf_counter()
        teacher.pii.detect(x, cfg)
        times["pii with spaCy NER (before; in-process)"].append((time.perf_counter() - t0) * 1000)
        if full.pii.head_ner is not None:  # pii's two parts: the server's (head) and the worker's (patterns)
            t0 = time.perf_counter()
            full.pii.head_ner.spans(x.response)
            times["  pii part: NER head (in the server)"].append((time.perf_counter() - t0) * 1000)
            t0 = time.perf_counter()
            full.pii.analyzer.analyze(x.response)
            times["  pii part: Presidio patterns (in the worker process)"].append((time.perf_counter() - t0) * 1000)
        # baseline, same request: one encoder call on the query and whole chunks (what scoring embeds anyway)
        t0 = time.perf_counter()
        encode([x.query, *x.context])
        times["baseline: encode query + 3 whole chunks"].append((time.perf_counter() - t0) * 1000)
    mean_chars = np.mean([len(x.response) + len(x.query) + sum(len(c) for c in x.context) for x in reqs])
    out = [f"{n} requests: HaluEval question as query, a ~{int(np.mean([len(x.response) for x in reqs]))}-char response "
           f"(answer + knowledge + an email + a code block), 3 context chunks (HaluEval knowledge + 2 SQuAD paragraphs); "
           f"{mean_chars:.0f} chars per request on average. CPU (2 cores shared with other work), one "
           "calling thread, embeddings by the ONNX encoder called directly (no batcher), segment-score and findings caches cleared "
           "before each request (cold). prompt_injection includes embedding the query and context segments; "
           "jailbreak then reuses those scores. pii reads the token states of the response's sentences, which the "
           "scoring stage has the encoder compute for its claims anyway: they are computed before the clock starts.", "",
           "| guardrail | p50 ms | p99 ms | mean ms | p50 / baseline p50 |", "|---|---|---|---|---|"]
    base = np.percentile(np.asarray(times["baseline: encode query + 3 whole chunks"]), 50)
    for name, ts in times.items():
        a = np.asarray(ts)
        p50 = np.percentile(a, 50)
        out.append(f"| {name} | {p50:.2f} | {np.percentile(a, 99):.2f} | {a.mean():.2f} | {p50 / base:.2f} |")
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-dir", type=Path, default=ROOT.parent / "shared" / "data")
    ap.add_argument("--latency-requests", type=int, default=100)
    ap.add_argument("--provider", default="cpu")
    ap.add_argument("--variant", default="fp32", help="encoder variant for the learned signal (fp32 | int8)")
    args = ap.parse_args()
    if not args.data_dir.is_dir():
        print(f"shared data not found at {args.data_dir}", file=sys.stderr)
        return 2
    from certus.models.artifacts import ensure_model
    from certus.models.encoder import OnnxEncoder

    encoder = OnnxEncoder(ensure_model(variant=args.variant).parent, variant=args.variant, provider=args.provider)
    t0 = time.perf_counter()
    states = StatesCache(encoder)
    full = GuardrailSuite(encoder.encode, token_states=states)
    build_s = time.perf_counter() - t0
    rules = GuardrailSuite(None)
    teacher = GuardrailSuite(encoder.encode, pii_ner_model="spacy")
    sections = [
        ("Prompt injection / jailbreak (deepset held-out)", bench_injection(full, rules, args.data_dir)),
        ("Jailbreak vs benign persona prompts (jackhhao held-out)", bench_jailbreak(full, rules, args.data_dir)),
        ("PII (presidio-research synth)", bench_pii(full, teacher, args.data_dir)),
        ("Exfiltration, code safety, vulnerability hallucination, jailbreak: hand-written set A", bench_cases(
            full, "bench_cases.jsonl", "written with the detectors; rules were revised after the first run on it, so it is a regression set, not an unseen test.")),
        ("Exfiltration, code safety, vulnerability hallucination, jailbreak: hand-written set B", bench_cases(
            full, "bench_cases_b.jsonl", "written after set A and run once; no detector was changed after seeing its results.")),
        ("Latency per guardrail per request", bench_latency(full, teacher, states, encoder.encode, args.data_dir, args.latency_requests)),
    ]
    print(f"<!-- python tests/benchmarks/bench_guardrails.py; suite build {build_s:.2f} s -->")
    for title, lines in sections:
        print(f"\n### {title}\n")
        print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
