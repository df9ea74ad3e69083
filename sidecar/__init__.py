"""Certus Evaluate sidecar.

``from sidecar import measure, trace`` is cheap: both are resolved on first use (module
``__getattr__``), so importing :mod:`sidecar` loads neither numpy, ONNX Runtime nor gRPC.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "measure": ("sidecar.toolkit.measure", "measure"),
    "MeasureResult": ("sidecar.scoring", "MeasureResult"),
    "trace": ("sidecar.tracing_decorator", "trace"),
    "evaluate_traces": ("sidecar.toolkit.evaluate", "evaluate_traces"),
}


def __getattr__(name: str) -> Any:
    target = _LAZY.get(name)
    if target is None:
        raise AttributeError(f"module 'sidecar' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(target[0]), target[1])
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])
