"""GuardrailSuite: runs every enabled guardrail of a manifest and applies its policy.

Built once per process (the Presidio analyzer and the learned head load here); ``scan`` is called
from a worker thread, concurrently with scoring, and is thread-safe.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Callable, Mapping, Sequence

import numpy as np
import structlog

from certus.sidecar.config import PII_NER_MODELS
from certus.sidecar.domain import EvaluateInput, GuardrailConfig, GuardrailType, GuardrailViolation
from certus.sidecar.guardrails.base import Guardrail
from certus.sidecar.guardrails.code_safety import CodeSafetyGuardrail
from certus.sidecar.guardrails.exfiltration import ExfiltrationGuardrail
from certus.sidecar.guardrails.learned import AttackHead, LearnedSignal
from certus.sidecar.guardrails.pii import HeadNer, PiiGuardrail, ProcessPiiAnalyzer, TokenStatesFn
from certus.sidecar.guardrails.pii_ner import default_head
from certus.sidecar.guardrails.prompt_attacks import PromptAttackGuardrail
from certus.sidecar.guardrails.vuln_hallucination import VulnHallucinationGuardrail

log = structlog.get_logger(__name__)

Embed = Callable[[Sequence[str]], np.ndarray]


def first_occurrences(violations: Sequence[GuardrailViolation]) -> list[GuardrailViolation]:
    """One violation per (source, detector, content): the first occurrence. A response repeating
    one CVE or email a thousand times yields one finding, not a thousand."""
    seen: set[tuple[str, str, str]] = set()
    out = []
    for v in sorted(violations, key=lambda v: (v.source, v.start, v.end)):
        key = (v.source, v.detector, v.content_hash)
        if key not in seen:
            seen.add(key)
            out.append(v)
    return out


def apply_policy(violations: Sequence[GuardrailViolation], cfg: GuardrailConfig) -> list[GuardrailViolation]:
    """Drop findings below the config's severity / confidence thresholds; mark the rest blocking
    when the config says so."""
    kept = []
    for v in violations:
        if v.severity.rank < cfg.severity_threshold.rank or v.confidence < cfg.confidence_threshold:
            continue
        kept.append(dataclasses.replace(v, blocking=cfg.block_on_violation))
    return kept


class GuardrailSuite:
    def __init__(
        self,
        embed: Embed | None = None,
        *,
        head: AttackHead | None = None,
        pii_ner: bool = True,
        pii_process: bool = False,
        token_states: TokenStatesFn | None = None,
        pii_ner_model: str = "minilm",
    ) -> None:
        """``embed``: the sidecar's shared batched encoder (thread-safe, blocking, float32[n, 384]
        L2-normalised); None disables the learned prompt-attack signal (rules only).
        ``token_states``: the same encoder's ``TokenStates`` of each text (thread-safe, blocking);
        with it and ``pii_ner_model="minilm"`` PII's named entities come from the token-state head
        (:mod:`certus.sidecar.guardrails.pii_ner`), otherwise from spaCy.
        ``pii_process``: the spaCy/Presidio analyzer runs in a child process
        (:class:`ProcessPiiAnalyzer`; with the head: its pattern recognizers only); call :meth:`close`
        to stop it."""
        if pii_ner_model not in PII_NER_MODELS:
            raise ValueError(f"guardrails.pii_ner_model must be one of {', '.join(PII_NER_MODELS)}, got {pii_ner_model!r}")
        self.learned = LearnedSignal(embed, head) if embed is not None else None
        ner_head = default_head() if pii_ner and pii_ner_model == "minilm" and token_states is not None else None
        if ner_head is not None:
            assert token_states is not None
            # the child (if any) runs Presidio's pattern recognizers only; the head runs here, on
            # token states the batcher already holds
            analyzer = ProcessPiiAnalyzer(False) if pii_process else None
            self.pii = PiiGuardrail(analyzer, ner=True, head_ner=HeadNer(token_states, ner_head))
        else:
            if pii_ner and pii_ner_model == "minilm":
                # no encoder wired (a library caller's choice): spaCy, as documented; missing weights
                # in an installed package are worth a warning
                emit = log.info if token_states is None else log.warning
                emit("pii_ner_head_unavailable", reason="no token states" if token_states is None else "no weights", fallback="spacy")
            self.pii = PiiGuardrail(ProcessPiiAnalyzer(pii_ner) if pii_process else None, ner=pii_ner)
        self.guardrails: dict[GuardrailType, Guardrail] = {
            GuardrailType.PII: self.pii,
            GuardrailType.PROMPT_INJECTION: PromptAttackGuardrail(GuardrailType.PROMPT_INJECTION, self.learned),
            GuardrailType.JAILBREAK: PromptAttackGuardrail(GuardrailType.JAILBREAK, self.learned),
            GuardrailType.DATA_EXFILTRATION: ExfiltrationGuardrail(),
            GuardrailType.CODE_SAFETY: CodeSafetyGuardrail(),
            GuardrailType.VULN_HALLUCINATION: VulnHallucinationGuardrail(),
        }
        log.info(
            "guardrails_ready",
            pii_nlp_model=self.pii.ner_model,
            pii_process=pii_process,
            learned=self.learned is not None,
        )

    def close(self) -> None:
        """Stop the PII child process, if there is one."""
        close = getattr(self.pii.analyzer, "close", None)
        if close is not None:
            close()

    def texts_to_embed(self, inp: EvaluateInput, configs: Mapping[GuardrailType, GuardrailConfig]) -> list[str]:
        """Texts the learned prompt-attack signal will embed during :meth:`scan` (segments of query
        and chunks not seen before), so the caller can batch them with its own encoder call."""
        if self.learned is None:
            return []
        texts: dict[str, None] = {}
        for gtype in (GuardrailType.PROMPT_INJECTION, GuardrailType.JAILBREAK):
            cfg = configs.get(gtype)
            guardrail = self.guardrails[gtype]
            if cfg is not None and cfg.enabled and isinstance(guardrail, PromptAttackGuardrail):
                texts.update(dict.fromkeys(guardrail.unscanned(inp)))
        return self.learned.uncached_pieces(list(texts)) if texts else []

    def scan(self, inp: EvaluateInput, configs: Mapping[GuardrailType, GuardrailConfig]) -> list[GuardrailViolation]:
        """Every violation of the enabled guardrails that passes its config's thresholds, in a
        stable order (guardrail type, source, offset); repeated identical spans are reported once."""
        out: list[GuardrailViolation] = []
        for gtype, guardrail in self.guardrails.items():
            cfg = configs.get(gtype)
            if cfg is None or not cfg.enabled:
                continue
            t0 = time.perf_counter()
            found = first_occurrences(guardrail.detect(inp, cfg))
            kept = apply_policy(found, cfg)
            log.debug(
                "guardrail_scanned",
                guardrail=gtype.value,
                found=len(found),
                kept=len(kept),
                ms=round((time.perf_counter() - t0) * 1000, 3),
            )
            out.extend(kept)
        return out
