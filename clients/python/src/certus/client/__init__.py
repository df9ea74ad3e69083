"""Certus Evaluate client: the generated stubs (``certus.evaluate.v1``) and the light client.

Depends on grpcio and protobuf only; nothing here loads numpy, ONNX Runtime, spaCy or torch.
"""

from __future__ import annotations

__version__ = "0.1.0"
