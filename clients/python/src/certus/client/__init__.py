"""Certus Evaluate client: the generated stubs (``certus.evaluate.v1``) and the light client.

Depends on grpcio and protobuf only; nothing here loads numpy, ONNX Runtime, spaCy or torch::

    from certus.client import SidecarClient, AsyncSidecarClient, measure, trace

- :class:`SidecarClient` / :class:`AsyncSidecarClient` (:mod:`certus.client.sync`,
  :mod:`certus.client.aio`): deadline, circuit breaker, never raise into the application;
- :func:`measure`: CERT's measure() by the sidecar's ``Measure`` RPC;
- :func:`trace` (:mod:`certus.client.tracing`): log every call of an LLM/RAG function to JSONL
  off the caller's thread, and optionally forward it for live evaluation;
- :mod:`certus.client.transparency`: check one decision's proof bundle without the log.

Names resolve on first use, so ``import certus.client`` alone loads nothing (not even gRPC).
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "SidecarClient": ("certus.client.sync", "SidecarClient"),
    "ClientOptions": ("certus.client.sync", "ClientOptions"),
    "Evaluation": ("certus.client.sync", "Evaluation"),
    "Measurement": ("certus.client.sync", "Measurement"),
    "measure": ("certus.client.sync", "measure"),
    "AsyncSidecarClient": ("certus.client.aio", "AsyncSidecarClient"),
    "trace": ("certus.client.tracing", "trace"),
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    target = _LAZY.get(name)
    if target is None:
        raise AttributeError(f"module 'certus.client' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(target[0]), target[1])
    globals()[name] = value
    return value
