"""Prompt injection and jailbreak guardrails: rules + the learned signal, over the query and every
retrieved chunk (indirect injection).

Per source text:

1. invisible characters (zero-width, bidi controls, Unicode tag characters) are reported, then
   removed, and the rules run on the cleaned text too, so "ig<ZWSP>nore previous instructions"
   is caught (offsets are mapped back to the original text);
2. base64 / hex blobs that decode to text with instruction words (or that the rules match) are
   reported as encoded payloads;
3. rules (:mod:`sidecar.guardrails.attack_rules`) give a detector name and a confidence;
4. the learned signal (when an encoder is wired) gives a probability per segment: a rule hit's
   confidence becomes ``noisy_or(rule, p)`` with the overlapping segment's score, and a segment
   with no rule hit whose score is >= ``LEARNED_FLOOR`` is reported on its own
   (``injection_classifier`` / ``jailbreak_classifier``).

The jailbreak head reads the query only (:data:`LEARNED_ON_CONTEXT`): it was taught the user's
prompt (jailbreaks against benign persona prompts), and a retrieved document is not a prompt to
the model; on encyclopedic text about machines and models it fired (3 of 48 paragraphs of an
unseen SQuAD article). Attacks hidden in retrieved documents are indirect prompt injection: the
injection rules and head, and the jailbreak rules, still scan every chunk.
"""

from __future__ import annotations

from dataclasses import dataclass

from certus.sidecar.cache import LruCache, text_key
from certus.sidecar.domain import EvaluateInput, GuardrailConfig, GuardrailType, GuardrailViolation, Severity
from certus.sidecar.guardrails.attack_rules import PAYLOAD_WORDS, RULES, Rule
from certus.sidecar.guardrails.base import QUERY, Source, make_violation, noisy_or, request_sources
from certus.sidecar.guardrails.encoded import InvisibleRun, decode_tag_chars, find_blobs, find_invisible
from certus.sidecar.guardrails.learned import LearnedSignal, SegmentScore

LEARNED_FLOOR = 0.5
# whether a guardrail type's learned head also scores retrieved chunks (see the module docstring)
LEARNED_ON_CONTEXT = {GuardrailType.PROMPT_INJECTION: True, GuardrailType.JAILBREAK: False}
FINDINGS_CACHE_ENTRIES = 20_000  # per guardrail type; context chunks repeat across RAG requests

_SEVERITY = {
    "fake_role_marker": Severity.MEDIUM,
    "context_override": Severity.MEDIUM,
    "zero_width_chars": Severity.MEDIUM,
    "bidi_control": Severity.MEDIUM,
}


@dataclass(frozen=True, slots=True)
class _Hit:
    start: int
    end: int
    detector: str
    confidence: float
    remediation: str
    severity: Severity = Severity.HIGH


def _clean(text: str) -> tuple[str, list[int]]:
    """``text`` without invisible characters, and for each kept char its index in ``text``."""
    runs = find_invisible(text)
    if not runs:
        return text, []
    drop: set[int] = set()
    for r in runs:
        drop.update(range(r.start, r.end))
    index = [i for i in range(len(text)) if i not in drop]
    return "".join(text[i] for i in index), index


def _rule_hits(text: str, gtype: GuardrailType) -> list[_Hit]:
    hits: list[_Hit] = []
    rules: list[Rule] = [r for r in RULES if r.guardrail_type is gtype]
    for rule in rules:
        for m in rule.pattern.finditer(text):
            if m.end() > m.start():
                hits.append(_Hit(m.start(), m.end(), rule.detector, rule.confidence, rule.remediation))
    return hits


def _any_rule(text: str) -> bool:
    return any(r.pattern.search(text) for r in RULES)


class PromptAttackGuardrail:
    """One class for both types; ``guardrail_type`` selects the rules and the learned score."""

    def __init__(self, guardrail_type: GuardrailType, learned: LearnedSignal | None = None) -> None:
        if guardrail_type not in (GuardrailType.PROMPT_INJECTION, GuardrailType.JAILBREAK):
            raise ValueError(f"not a prompt-attack guardrail: {guardrail_type}")
        self.guardrail_type: GuardrailType = guardrail_type
        self.learned = learned
        # findings depend on the text alone (thresholds apply later), so a repeated chunk is
        # scanned once; keyed by content hash, never by content
        self._findings: LruCache[tuple[_Hit, ...]] = LruCache(FINDINGS_CACHE_ENTRIES)

    def _reads_learned(self, src: Source) -> bool:
        return self.learned is not None and (src.name == QUERY or LEARNED_ON_CONTEXT[self.guardrail_type])

    def _key(self, src: Source) -> bytes:
        # the same text is cached apart as a query and as a chunk when only one of them gets the head
        return text_key(src.text) + (b"L" if self._reads_learned(src) else b"R")

    def unscanned(self, inp: EvaluateInput) -> list[str]:
        """The query/context texts the learned signal will score (not cached yet)."""
        return [
            s.text
            for s in request_sources(inp, query=True, context=True, response=False)
            if self._reads_learned(s) and self._findings.peek(self._key(s)) is None
        ]

    def detect(self, inp: EvaluateInput, cfg: GuardrailConfig) -> list[GuardrailViolation]:
        sources = list(request_sources(inp, query=True, context=True, response=False))
        keys = [self._key(s) for s in sources]
        findings = [self._findings.get(k) for k in keys]
        todo = [i for i, f in enumerate(findings) if f is None]
        if todo:
            learned = [i for i in todo if self._reads_learned(sources[i])]
            scores: dict[int, list[SegmentScore]] = {}
            if learned and self.learned is not None:
                scores = dict(zip(learned, self.learned.score_texts([sources[i].text for i in learned])))
            for i in todo:
                findings[i] = tuple(self._hits(sources[i].text, scores.get(i, [])))
                self._findings.put(keys[i], findings[i])
        out: list[GuardrailViolation] = []
        for src, hits in zip(sources, findings):
            for h in hits or ():
                out.append(
                    make_violation(
                        self.guardrail_type,
                        source=src,
                        start=h.start,
                        end=h.end,
                        severity=h.severity,
                        confidence=h.confidence,
                        detector=h.detector,
                        remediation=h.remediation,
                    )
                )
        return out

    def _learned_value(self, seg: SegmentScore) -> float:
        return seg.injection if self.guardrail_type is GuardrailType.PROMPT_INJECTION else seg.jailbreak

    def _hits(self, text: str, segs: list[SegmentScore]) -> list[_Hit]:
        hits = _rule_hits(text, self.guardrail_type)
        cleaned, index = _clean(text)
        if index:
            for h in _rule_hits(cleaned, self.guardrail_type):
                start, end = index[h.start], index[h.end - 1] + 1
                if not any(o.start <= start and end <= o.end and o.detector == h.detector for o in hits):
                    hits.append(_Hit(start, end, "obfuscated_" + h.detector, min(1.0, h.confidence + 0.05), h.remediation))
        if self.guardrail_type is GuardrailType.PROMPT_INJECTION:
            hits.extend(self._encoded_hits(text))
        # combine with the learned signal
        final: list[_Hit] = []
        for h in _dedupe(hits):
            overlapping = [self._learned_value(s) for s in segs if s.start < h.end and h.start < s.end]
            conf = noisy_or(h.confidence, max(overlapping)) if overlapping else h.confidence
            final.append(_Hit(h.start, h.end, h.detector, conf, h.remediation))
        if segs:
            detector = "injection_classifier" if self.guardrail_type is GuardrailType.PROMPT_INJECTION else "jailbreak_classifier"
            # the best-scoring segment per region that no rule already explains
            for seg in sorted(segs, key=lambda s: -self._learned_value(s)):
                value = self._learned_value(seg)
                if value < LEARNED_FLOOR:
                    break
                if any(f.start < seg.end and seg.start < f.end for f in final):
                    continue
                final.append(
                    _Hit(seg.start, seg.end, detector, value, "Treat the text as untrusted data; review or drop it.")
                )
        out = []
        for h in final:
            sev = _SEVERITY.get(h.detector.removeprefix("obfuscated_"), Severity.HIGH)
            if h.detector in ("injection_classifier", "jailbreak_classifier"):
                sev = Severity.HIGH if h.confidence >= 0.8 else Severity.MEDIUM
            out.append(_Hit(h.start, h.end, h.detector, h.confidence, h.remediation, sev))
        return out

    def _encoded_hits(self, text: str) -> list[_Hit]:
        hits: list[_Hit] = []
        for run in _merge_runs(find_invisible(text)):
            if run.kind == "unicode_tag_smuggling":
                hidden = decode_tag_chars(text[run.start : run.end])
                conf = 0.95 if hidden.strip() else 0.7
                hits.append(_Hit(run.start, run.end, run.kind, conf, "Strip Unicode tag characters: they hide text from readers."))
            elif run.kind == "bidi_control":
                hits.append(_Hit(run.start, run.end, run.kind, 0.7, "Strip bidirectional control characters: they reorder what readers see."))
            else:
                conf = 0.75 if run.end - run.start >= 3 else 0.5
                hits.append(_Hit(run.start, run.end, run.kind, conf, "Strip zero-width characters: they can hide or split instructions."))
        for blob in find_blobs(text):
            decoded = blob.text
            if decoded is None:
                continue
            if PAYLOAD_WORDS.search(decoded) or _any_rule(decoded):
                hits.append(
                    _Hit(blob.start, blob.end, f"{blob.encoding}_payload", 0.9, "Reject encoded instructions; decode and review them as data.")
                )
        return hits


def _merge_runs(runs: list[InvisibleRun], gap: int = 16) -> list[InvisibleRun]:
    """Runs of one kind at most ``gap`` visible chars apart become one finding (a text sprinkled
    with thousands of zero-width characters is one violation, not thousands)."""
    merged: list[InvisibleRun] = []
    last: dict[str, int] = {}
    for r in runs:
        i = last.get(r.kind)
        if i is not None and r.start - merged[i].end <= gap:
            merged[i] = InvisibleRun(merged[i].start, r.end, r.kind)
        else:
            last[r.kind] = len(merged)
            merged.append(r)
    return merged


def _dedupe(hits: list[_Hit]) -> list[_Hit]:
    """One hit per detector per overlapping region (the most confident, then the longest)."""
    kept: list[_Hit] = []
    for h in sorted(hits, key=lambda h: (-h.confidence, -(h.end - h.start), h.start)):
        if not any(k.detector == h.detector and k.start < h.end and h.start < k.end for k in kept):
            kept.append(h)
    return sorted(kept, key=lambda h: (h.start, h.end, h.detector))
