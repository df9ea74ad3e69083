"""``measure(text1, text2)``: CERT's comparison in-process, with the numbers of the Measure RPC.

The first call builds one process-wide encoder (``models.export.ensure_model`` + ``OnnxEncoder``,
from the one config: ``CERTUS_MODEL_DIR``, ``CERTUS_PROVIDER`` ...) and a :class:`Scorer`; later
calls reuse them (thread-safe). The computation is the server's: embed both texts in one encoder
call, then :meth:`Scorer.measure` (semantic similarity, term grounding with numbers checked by value,
``confidence = 0.5 * semantic + 0.5 * grounding``, ``matched = confidence >= threshold``).
"""

from __future__ import annotations

import threading
from typing import Any

from certus.sidecar.errors import FieldViolation, InvalidArgument

_lock = threading.Lock()
_state: dict[str, Any] = {}


def _components() -> tuple[Any, Any]:
    comps = _state.get("components")
    if comps is not None:
        return comps  # type: ignore[no-any-return]
    with _lock:
        comps = _state.get("components")
        if comps is None:
            from certus.sidecar import config as config_mod
            from certus.sidecar.scoring import Scorer
            from certus.sidecar.toolkit.engine import build_encoder

            cfg = config_mod.load()
            comps = (build_encoder(cfg), Scorer(cfg.scoring))
            _state["components"] = comps
    return comps


def use_encoder(encoder: Any, scorer: Any = None) -> None:
    """Install the encoder (and scorer) ``measure`` uses — e.g. one the application already holds."""
    from certus.sidecar import config as config_mod
    from certus.sidecar.scoring import Scorer

    with _lock:
        _state["components"] = (encoder, scorer or Scorer(config_mod.load().scoring))


def reset() -> None:
    """Forget the process-wide encoder (the next call builds a new one)."""
    with _lock:
        _state.pop("components", None)


def measure(text1: str, text2: str, threshold: float | None = 0.7) -> Any:
    """Compare ``text1`` (e.g. the LLM output) with ``text2`` (e.g. the retrieved context).

    Returns :class:`sidecar.scoring.MeasureResult` (``semantic_score``, ``grounding_score``,
    ``confidence``, ``matched``, ``threshold``, ``numeric_consistency``). Inputs follow the Measure
    RPC's limits; a bad one raises :class:`~sidecar.errors.InvalidArgument` naming the field.
    ``threshold=None`` uses the configured ``CERTUS_MATCH_THRESHOLD`` (0.7 by default).
    """
    from certus.sidecar import validation as v

    violations: list[FieldViolation] = []
    for name, value in (("text1", text1), ("text2", text2)):
        if not isinstance(value, str):
            violations.append(FieldViolation(name, f"must be a string, got {type(value).__name__}"))
        else:
            v.check_text(value, name, v.LIMITS.measure_text_max, violations)
    if threshold is not None and (
        isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0.0 <= threshold <= 1.0
    ):
        violations.append(FieldViolation("threshold", "must be a number between 0 and 1"))
    v.raise_if(violations)
    encoder, scorer = _components()
    vecs = encoder.encode([text1, text2])
    return scorer.measure(text1, text2, vecs[0], vecs[1], None if threshold is None else float(threshold))


__all__ = ["measure", "use_encoder", "reset", "InvalidArgument"]
